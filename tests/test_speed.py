"""The speed levers reach the model and the optimizer (trainer/speed.py, trainer/optim.py), and the step loop
reads the loss (a host-device sync on a GPU) only on the steps it logs."""

from __future__ import annotations

import pytest
import torch

import trainer.train as train_module
from trainer.config import Config, ModelConfig, OptimizerConfig, TrainingConfig, validate
from trainer.errors import UserFacingError
from trainer.events import read_events
from trainer.models.loading import load_base_model
from trainer.optim import build_optimizer
from trainer.speed import apply_speed_settings, sdpa_kernel_in_use, set_tf32, to_device
from trainer.train import train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return load_base_model(ModelConfig(base="builtin:tiny-sd"))


def _fresh_unet(model):
    import copy

    return copy.deepcopy(model.unet)


def test_defaults_report_the_attention_kernel_and_change_nothing_else(model):
    unet = _fresh_unet(model)
    plan = apply_speed_settings(unet, TrainingConfig(), CPU, torch.float32)
    assert plan.attention_processors == ["AttnProcessor2_0"], "diffusers' SDPA processor runs the attention"
    assert plan.attention_kernel in ("FLASH_ATTENTION", "MATH"), f"a CPU SDPA kernel, got {plan.attention_kernel!r}"
    assert (plan.compile, plan.channels_last, plan.tf32, plan.pin_memory) == ("off", False, False, False)
    assert getattr(unet, "_compiled_call_impl", None) is None


def test_channels_last_reaches_the_convolutions(model):
    unet = _fresh_unet(model)
    apply_speed_settings(unet, TrainingConfig(channels_last=True), CPU, torch.float32)
    convs = [m.weight for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


@pytest.mark.parametrize("mode", ["full", "regional"])
def test_compile_wraps_the_unet_or_its_blocks(model, mode):
    """The seam: compilation happens at the first call (minutes on a CPU); here only that it is set up."""
    unet = _fresh_unet(model)
    plan = apply_speed_settings(unet, TrainingConfig(compile=mode), CPU, torch.float32)
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert plan.compile == mode
    if mode == "full":
        assert unet._compiled_call_impl is not None, "the whole UNet's call is compiled"
    else:
        assert unet._compiled_call_impl is None and blocks
        assert all(b._compiled_call_impl is not None for b in blocks), "every transformer block is compiled"


def test_a_forced_attention_kernel_is_the_one_torch_picks(model):
    unet = _fresh_unet(model)
    plan = apply_speed_settings(unet, TrainingConfig(attention="math"), CPU, torch.float32)
    assert plan.attention_kernel == "MATH"
    q = torch.zeros(1, 2, 16, 8, requires_grad=True)
    with plan.attention_context():
        assert torch.nn.attention.SDPBackend(torch._fused_sdp_choice(q, q, q)).name == "MATH"
    assert sdpa_kernel_in_use(unet, CPU, torch.float32) != "ERROR"


def test_a_cuda_only_kernel_on_the_cpu_is_refused_by_name():
    cfg = Config()
    cfg.training.device, cfg.training.attention = "cpu", "efficient"
    assert any("`training.attention = \"efficient\"` is a CUDA kernel" in p for p in validate(cfg))
    unet_cfg = TrainingConfig(attention="efficient")
    with pytest.raises(UserFacingError, match="training.attention"):
        apply_speed_settings(_fresh_unet(load_base_model(ModelConfig(base="builtin:tiny-sd"))), unet_cfg, CPU, torch.float32)


def test_tf32_follows_the_gpu_generation():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        assert set_tf32(True, torch.device("cuda"), capability=(8, 0)) is True
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert set_tf32(True, torch.device("cuda"), capability=(7, 5)) is False, "no TF32 before Ampere"
        assert not torch.backends.cuda.matmul.allow_tf32
        assert set_tf32(False, torch.device("cuda"), capability=(9, 0)) is False
        assert set_tf32(True, CPU) is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_pinned_copies_only_to_a_gpu(monkeypatch):
    calls = []

    class Pinned:
        def to(self, device, non_blocking=False):
            calls.append((str(device), non_blocking))
            return "on the gpu"

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: Pinned())
    host = torch.ones(2)
    assert to_device(host, torch.device("cuda"), pin=True) == "on the gpu"
    assert calls == [("cuda", True)], "pinned, then copied without waiting"
    assert to_device(host, CPU, pin=True) is host and len(calls) == 1, "nothing to pin on the CPU"


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_fused_setting_reaches_the_optimizer(fused):
    params = [torch.nn.Parameter(torch.randn(4, 4))]
    opt = build_optimizer(OptimizerConfig(fused=fused), params, [], CPU)
    assert bool(opt.defaults["fused"]) is fused
    params[0].grad = torch.ones(4, 4)
    before = params[0].detach().clone()
    opt.step()
    assert not torch.equal(before, params[0]), "the fused step updates the weights"


def test_the_loss_is_read_only_on_logged_steps(make_config, monkeypatch):
    """`.item()` waits for the GPU to finish; between logged steps the loop queues work without waiting."""
    read_at = []
    real = train_module.mean_loss

    def recording(s, loss, over_processes):
        read_at.append(s.progress.step)
        return real(s, loss, over_processes)

    monkeypatch.setattr(train_module, "mean_loss", recording)
    # 8 images, batch 1: an epoch is 8 steps, so its end falls on a logged step too.
    cfg = make_config("quiet", training__max_steps=8, training__log_every=4)
    assert train(cfg, show_progress=False).status == "completed"
    assert read_at == [4, 8], f"the loss is read on logged steps only, got {read_at}"
    events = read_events(cfg.run_dir)
    assert [e["step"] for e in events if e["type"] == "step"] == [4, 8]
    started = next(e for e in events if e["type"] == "started")
    assert started["speed"]["attention_processors"] == ["AttnProcessor2_0"] and started["speed"]["attention_kernel"]
