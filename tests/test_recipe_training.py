"""Recipe options inside real runs on the builtin model: clip skip, epoch intervals, TensorBoard, the loss falls."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from trainer.events import read_events
from trainer.train import train


def _header(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_clip_skip_uses_the_penultimate_layer_through_the_final_norm():
    from trainer.conditioning import encode_text, set_clip_skip, tokenize
    from trainer.config import ModelConfig
    from trainer.models.loading import load_base_model

    model = load_base_model(ModelConfig(base="builtin:tiny-sd"))
    plain = encode_text(model, ["sks dog"], torch.device("cpu")).hidden_states
    set_clip_skip(model, 2)
    skipped = encode_text(model, ["sks dog"], torch.device("cpu")).hidden_states
    ids = tokenize(model.tokenizer, ["sks dog"])
    with torch.no_grad():
        hidden = model.text_encoder(ids, output_hidden_states=True).hidden_states
    te = getattr(model.text_encoder, "text_model", model.text_encoder)
    torch.testing.assert_close(skipped, te.final_layer_norm(hidden[-2]))
    assert not torch.allclose(plain, skipped), "clip skip changes the conditioning"


def test_clip_skip_is_refused_for_sdxl():
    from trainer.conditioning import set_clip_skip
    from trainer.errors import UserFacingError

    model = type("M", (), {"family": "sdxl", "extra": {}})()
    with pytest.raises(UserFacingError, match="`training.clip_skip`.*SDXL"):
        set_clip_skip(model, 2)


def test_epoch_intervals_save_and_sample_at_epoch_ends(make_config):
    # 8 images, batch 4: 2 steps an epoch, 3 epochs = 6 steps.
    cfg = make_config(
        "epochs", training__max_steps=0, training__epochs=3, training__batch_size=4, checkpoint__every_n_epochs=2,
        sampling__every_n_epochs=1, sampling__steps=1,
    )
    train(cfg, show_progress=False)
    events = read_events(cfg.run_dir)
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [4, 6], "after epoch 2, and the final one"
    assert sorted({e["step"] for e in events if e["type"] == "sample"}) == [2, 4], "after epochs 1 and 2"


def test_tensorboard_event_file_holds_losses_validation_and_a_preview(make_config):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(
        "tb", training__max_steps=3, tracking__tensorboard=True, validation__fraction=0.25, sampling__at_end=True,
        sampling__steps=1,
    )
    train(cfg, show_progress=False)
    logs = cfg.run_dir / "logs" / cfg.run.name
    files = sorted(logs.glob("events.out.tfevents.*"))
    assert files, f"no event file under {logs}"
    acc = EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "validation/loss"} <= set(tags["scalars"]), tags["scalars"]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    steps = [e["loss"] for e in read_events(cfg.run_dir) if e["type"] == "step"]
    # TensorBoard keeps float32, the events 6 decimals: equal to within both roundings.
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(steps, abs=1e-5)
    validation = [e for e in read_events(cfg.run_dir) if e["type"] == "validation"]
    assert [e.step for e in acc.Scalars("validation/loss")] == [3]
    assert acc.Scalars("validation/loss")[0].value == pytest.approx(validation[-1]["loss"], abs=1e-5)
    assert "preview/0" in tags["images"]
    (hparams,) = logs.glob("*/hparams.yml")  # accelerate stores the config beside TensorBoard's hparams
    assert "training.seed: 42" in hparams.read_text() and "tracking.tensorboard: true" in hparams.read_text()
    assert acc.Images("preview/0")[0].width == cfg.dataset.resolution


@pytest.mark.slow
def test_recipe_options_together_still_learn_and_are_recorded(make_config, tmp_path):
    import shutil
    from pathlib import Path

    # Validation on the training images themselves: fixed timesteps and noise measure the fit without the
    # per-step noise that hides it in the training loss (robust losses and reweighting make that noisier still).
    val = tmp_path / "val"
    shutil.copytree(Path(__file__).resolve().parents[1] / "sample_data", val, ignore=shutil.ignore_patterns("*.py"))
    cfg = make_config(
        "recipe", training__max_steps=40, training__batch_size=4, optimizer__learning_rate=1e-2,
        validation__path=str(val), validation__every_n_steps=20, validation__timesteps=2,
        training__timestep_sampling="logit_normal", training__multires_noise_iterations=6,
        training__ip_noise_gamma=0.1, training__debiased_estimation=True, training__loss_type="huber",
        training__clip_skip=2, training__ema_decay=0.9, optimizer__warmup_ratio=0.1,
        optimizer__scheduler="constant_with_warmup", sampling__at_end=True, sampling__steps=1,
    )
    result = train(cfg, show_progress=False)
    losses = [e["loss"] for e in read_events(cfg.run_dir) if e["type"] == "validation"]
    # Fixed timesteps and noise make any fall real; measured 1.042 -> 1.012 (-2.9%) on 2 CPU cores.
    assert len(losses) == 2 and losses[-1] < losses[0] * 0.99, f"validation loss should fall: {losses}"
    header = _header(result.adapter_paths[0])
    assert header["ss_clip_skip"] == "2" and header["ss_loss_type"] == "huber" and header["ss_debiased_estimation"] == "True"
    assert header["ss_ip_noise_gamma"] == "0.1" and header["ss_multires_noise_iterations"] == "6"
    assert header["ss_lr_warmup_steps"] == "4" and header["ss_ema_decay"] == "0.9"


def test_tracking_off_by_default_and_a_missing_package_names_the_field(monkeypatch, tmp_path):
    import importlib.util

    from trainer import tracking
    from trainer.config import Config
    from trainer.errors import UserFacingError

    cfg = Config()
    assert tracking.accelerator_kwargs(cfg, tmp_path) == {}, "no tracker unless asked for"
    cfg.tracking.wandb = True
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserFacingError, match=r"`tracking.wandb = true` needs the wandb package: pip install wandb"):
        tracking.accelerator_kwargs(cfg, tmp_path)
    assert tracking.hyperparameters(Config())["sampling.prompts"] == "{trigger}", "lists become text for hparams"


def test_sample_command_uses_the_clip_skip_the_adapter_records(make_config, tmp_path):
    import numpy as np
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from trainer.commands.sample import SampleOptions, adapter_clip_skip, sample_adapter

    assert adapter_clip_skip({"ss_clip_skip": "None"}, "sd1") == 1 and adapter_clip_skip({"ss_clip_skip": "2"}, "sdxl") == 1
    cfg = make_config("skip", training__max_steps=1, training__clip_skip=2)
    adapter = train(cfg, show_progress=False).adapter_paths[0]
    header = _header(adapter)
    assert header["ss_clip_skip"] == "2"
    one = tmp_path / "one.safetensors"
    save_file(load_file(adapter), str(one), metadata={**header, "ss_clip_skip": "1"})

    def render(path):
        options = SampleOptions(adapter=path, prompts=["sks"], base="builtin:tiny-sd", steps=2, width=32, height=32,
                                out=tmp_path / path.stem, device="cpu")
        return np.asarray(Image.open(sample_adapter(options)[0].path))

    assert not np.array_equal(render(adapter), render(one)), "the recorded clip skip changes the conditioning"
