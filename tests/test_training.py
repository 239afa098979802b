"""The training loop end to end on the builtin model: learning, exact resume, stopping, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import trainer.train as train_module
from trainer.checkpoint import EMA_FILE, LORA_FILE, latest_checkpoint
from trainer.errors import UserFacingError
from trainer.events import read_events
from trainer.train import TrainingDiverged, train


def events_of(run_dir, kind):
    return [e for e in read_events(run_dir) if e["type"] == kind]


def lora_weights(run_dir):
    return load_file(latest_checkpoint(run_dir) / LORA_FILE)


def test_only_lora_parameters_change_and_loss_falls(make_config):
    cfg = make_config(
        "learn", training__max_steps=40, training__batch_size=4, optimizer__learning_rate=1e-2,
        network__unet_targets="kohya", network__train_text_encoder=True, checkpoint__every_n_steps=40,
    )
    result = train(cfg, show_progress=False)
    assert result.status == "completed" and result.step == 40
    losses = [e["loss"] for e in events_of(cfg.run_dir, "step")]
    assert len(losses) == 40
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first * 0.97, f"loss should fall: first 10 steps {first:.4f}, last 10 {last:.4f}"
    state = lora_weights(cfg.run_dir)
    assert state and all(".lora_" in k for k in state), "checkpoints hold LoRA weights only"
    assert any(k.startswith("text_encoder.") for k in state) and any(k.startswith("unet.") for k in state)
    b_weights = [v for k, v in state.items() if "lora_B" in k]
    assert all(v.abs().sum() > 0 for v in b_weights), "every LoRA B matrix moved away from its zero init"


def test_stop_then_resume_equals_uninterrupted_run(make_config, monkeypatch):
    common = dict(
        training__max_steps=10, training__batch_size=3, training__gradient_accumulation_steps=2,
        optimizer__learning_rate=1e-3, optimizer__scheduler="cosine", network__dropout=0.1,
        training__noise_offset=0.05, checkpoint__every_n_steps=3, dataset__caption_dropout=0.2,
        dataset__shuffle_captions=True,
        # EMA and validation ride along: both are saved with checkpoints and must not disturb the RNG streams.
        training__ema_decay=0.9, validation__fraction=0.25, validation__every_n_steps=2,
    )
    full = make_config("full", **common)
    train(full, show_progress=False)

    part = make_config("part", **common)
    original = train_module.report_step

    def stop_at_step_4(s, *args):
        original(s, *args)
        if s.progress.step == 4:
            (s.run_dir / "STOP").touch()

    monkeypatch.setattr(train_module, "report_step", stop_at_step_4)
    stopped = train(part, show_progress=False)
    assert stopped.status == "stopped" and stopped.step == 4
    assert events_of(part.run_dir, "finished")[-1]["status"] == "stopped"
    assert (part.run_dir / f"{part.run.name}.safetensors").is_file(), "a stopped run still exports its adapter"
    monkeypatch.setattr(train_module, "report_step", original)

    resumed = train(part, resume=True, show_progress=False)
    assert resumed.status == "completed" and resumed.step == 10
    assert events_of(part.run_dir, "started")[-1]["resumed_from_step"] == 4
    a, b = lora_weights(full.run_dir), lora_weights(part.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} differs after resume")
    losses_full = [e["loss"] for e in events_of(full.run_dir, "step")]
    losses_part = [e["loss"] for e in events_of(part.run_dir, "step")]
    assert losses_full == losses_part
    ema_full, ema_part = (load_file(latest_checkpoint(r) / EMA_FILE) for r in (full.run_dir, part.run_dir))
    for key in ema_full:
        torch.testing.assert_close(ema_full[key], ema_part[key], rtol=0, atol=0, msg=f"EMA {key} differs after resume")
    assert all(ema_full[k].abs().sum() > 0 for k in ema_full if "lora_B" in k), "the average followed training"
    assert any(not torch.equal(ema_full[k], a[k]) for k in a), "the average is not the last weights"
    val_full = {e["step"]: e["loss"] for e in events_of(full.run_dir, "validation")}
    val_part = {e["step"]: e["loss"] for e in events_of(part.run_dir, "validation")}
    assert set(val_full) == {2, 3, 4, 6, 8, 9, 10} and set(val_part) == set(val_full)
    assert val_part == val_full, "the resumed run's validation curve continues the uninterrupted one"


def test_existing_run_folder_is_never_overwritten(make_config):
    cfg = make_config("once", training__max_steps=1)
    train(cfg, show_progress=False)
    before = (cfg.run_dir / "events.jsonl").read_bytes()
    with pytest.raises(UserFacingError, match="already holds a run; pass --resume"):
        train(cfg, show_progress=False)
    assert (cfg.run_dir / "events.jsonl").read_bytes() == before


def test_nan_loss_stops_with_advice(make_config, monkeypatch):
    cfg = make_config("nan", training__max_steps=5)
    real = train_module.compute_loss
    monkeypatch.setattr(train_module, "compute_loss", lambda s, b: real(s, b) * float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1.*learning_rate"):
        train(cfg, show_progress=False)
    finished = events_of(cfg.run_dir, "finished")[-1]
    assert finished["status"] == "failed" and "learning_rate" in finished["error"]


def test_v_prediction_model_trains(make_config):
    cfg = make_config("vpred", model__base="builtin:tiny-sd-v", training__max_steps=3, training__min_snr_gamma=5.0)
    result = train(cfg, show_progress=False)
    assert result.status == "completed"
    assert events_of(cfg.run_dir, "started")[0]["prediction_type"] == "v_prediction"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training__mixed_precision": "fp16"}, "needs a CUDA GPU"),
        ({"optimizer__name": "adamw8bit"}, "adamw8bit.*needs a CUDA GPU"),
        ({"dataset__path": "/nonexistent/images"}, "/nonexistent/images"),
        ({"model__base": "/nonexistent/model"}, "not found"),
        ({"network__rank": 0}, "`network.rank` must be a positive integer, got 0"),
    ],
)
def test_bad_inputs_fail_with_named_messages(make_config, overrides, message):
    cfg = make_config("bad", **overrides)
    with pytest.raises(Exception, match=message) as info:
        train(cfg, show_progress=False)
    assert isinstance(info.value, (UserFacingError, ValueError))


def test_cli_reports_errors_without_traceback(tmp_path, make_config):
    from trainer.config import dumps_config

    cfg = make_config("cli", dataset__path=str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    path = tmp_path / "c.toml"
    path.write_text(dumps_config(cfg))
    out = subprocess.run([sys.executable, "-m", "trainer", "train", str(path), "--no-progress"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "error:" in out.stderr and "empty" in out.stderr
    assert not cfg.run_dir.exists(), "the pre-flight check refuses before any run folder is made"

    from trainer.data import DatasetError

    with pytest.raises(DatasetError):  # the library call has no pre-flight: the run records its failure
        train(cfg, show_progress=False)
    finished = [json.loads(line) for line in (cfg.run_dir / "events.jsonl").read_text().splitlines()][-1]
    assert finished["type"] == "finished" and finished["status"] == "failed"


def test_rank_above_layer_width_is_a_warning_event(make_config):
    cfg = make_config("wide", network__rank=64, training__max_steps=1)
    train(cfg, show_progress=False)
    warnings = [e["message"] for e in read_events(cfg.run_dir) if e["type"] == "warning"]
    assert any("effective rank 32" in w for w in warnings), warnings
