"""The memory and time estimate before launch (trainer/estimate.py), GPU detection without torch
(trainer/gpus.py), and the out-of-memory stop that names the settings to change."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import trainer.train as train_module
from trainer.config import Config, ModelConfig
from trainer.estimate import component_params, estimate_resources, out_of_memory_message, unet_units
from trainer.events import read_events
from trainer.gpus import Gpu, visible_gpus
from trainer.models.probe import probe_base_model
from trainer.preflight import preflight
from trainer.train import OutOfMemory, train


@pytest.fixture(autouse=True, scope="module")
def _built_tiny_model():
    """The estimate reads a builtin's configs only once it was built (the pre-flight never builds one)."""
    from trainer.models.loading import load_base_model

    load_base_model(ModelConfig(base="builtin:tiny-sd"))


def _tiny():
    probe = probe_base_model(ModelConfig(base="builtin:tiny-sd"))
    configs = {c: probe.config(c) for c in ("unet", "vae", "text_encoder")}
    return probe, configs


def test_parameter_counts_come_from_the_weight_files():
    from trainer.models.loading import load_base_model

    probe, _ = _tiny()
    counted = component_params(probe.config_dir, probe.family)
    model = load_base_model(ModelConfig(base="builtin:tiny-sd"))
    for name, module in (("unet", model.unet), ("vae", model.vae), ("text_encoder", model.text_encoder)):
        assert counted[name] == sum(p.numel() for p in module.parameters()), f"{name}: header count vs loaded model"


def test_unet_units_by_hand():
    # Two levels, widths 32 and 64, attention on the first only, 2 layers a block, 100 latent pixels:
    # activations 32·(1+1) + 64·1/4 = 80; compute 32²·(2+10) + 64²·2/4 + 2·1·32·100 = 12288 + 2048 + 6400.
    config = {"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "layers_per_block": 2}
    assert unet_units(config, 100) == (80.0, 20736.0)


def test_the_terms_move_with_the_settings():
    probe, configs = _tiny()
    params = component_params(probe.config_dir, probe.family)
    cfg = Config()
    base = estimate_resources(cfg, configs, params, "cpu")
    cfg.training.batch_size = 4
    four = estimate_resources(cfg, configs, params, "cpu")
    assert four.parts_mb["activations"] == pytest.approx(4 * base.parts_mb["activations"])
    assert four.seconds_per_step > base.seconds_per_step and four.parts_mb["weights"] == base.parts_mb["weights"]
    cfg.training.gradient_checkpointing = True
    ckpt = estimate_resources(cfg, configs, params, "cpu")
    assert ckpt.parts_mb["activations"] < four.parts_mb["activations"] and ckpt.seconds_per_step > four.seconds_per_step
    cfg.training.mixed_precision = "bf16"
    assert estimate_resources(cfg, configs, params, "cuda").parts_mb["weights"] == pytest.approx(base.parts_mb["weights"] / 2)
    assert "peak CPU memory about" in base.describe() and "s per step" in base.describe()


def test_dry_run_prints_the_estimate(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "train", str(config), "--dry-run", "--set", f'run.output_dir="{tmp_path}"',
         "--set", 'training.device="cpu"'],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "estimate: peak CPU memory about" in out.stdout


def test_a_gpu_too_small_for_the_estimate_is_a_warning_naming_the_settings(make_config, monkeypatch):
    monkeypatch.setattr("trainer.gpus.visible_gpus", lambda: [Gpu(0, "Tiny GPU", 8)])
    cfg = make_config("fits", training__device="auto", training__batch_size=2)
    report = preflight(cfg)
    assert report.ok and report.resources is not None and report.resources.device == "cuda"
    warning = next(w for w in report.warnings if "may not fit in GPU memory" in w)
    assert "training.gradient_checkpointing = true" in warning and "training.batch_size` (now 2)" in warning


def test_gpus_from_nvidia_smi_narrowed_by_cuda_visible_devices():
    listing = "0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n2, NVIDIA A10, 23028\n"
    gpus = visible_gpus(lambda: listing, environ={})
    assert [g.index for g in gpus] == [0, 1, 2] and gpus[2].label() == "GPU 2: NVIDIA A10 (22 GB)"
    assert [g.index for g in visible_gpus(lambda: listing, environ={"CUDA_VISIBLE_DEVICES": "2,0"})] == [2, 0]
    assert visible_gpus(lambda: listing, environ={"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus(lambda: "", environ={}) == [], "no nvidia-smi: no GPUs"


def test_the_estimate_and_gpu_modules_import_no_torch():
    code = "import sys, trainer.estimate, trainer.gpus, trainer.distributed; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_out_of_memory_stops_with_the_settings_to_change(make_config, monkeypatch):
    def oom(s, batch):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "compute_loss", oom)
    cfg = make_config("oom", training__batch_size=2)
    with pytest.raises(OutOfMemory) as caught:
        train(cfg, show_progress=False)
    message = str(caught.value)
    assert message.startswith("out of CPU memory at step 0 (batch 2, 64 px, gradient checkpointing off")
    assert "training.gradient_checkpointing = true" in message and "training.batch_size` (now 2)" in message
    finished = [e for e in read_events(cfg.run_dir) if e["type"] == "finished"][-1]
    assert finished["status"] == "failed" and finished["reason"] == "out_of_memory" and finished["error"] == message
    assert "adamw8bit" not in out_of_memory_message(cfg, 0, "cpu"), "no GPU-only advice on the CPU"
    assert "adamw8bit" in out_of_memory_message(cfg, 0, "cuda:0")
