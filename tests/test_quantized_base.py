"""A quantized frozen base (``model.quantize``): LoRA learns on an int8 base (torchao weight-only, the CPU
path), its file is checked on the original base (what clients apply it to), and a mode the machine cannot
run is refused before any model loads.

Real tiny models, fixed seeds, CPU. The bitsandbytes modes (nf4, LLM.int8) need CUDA: their test carries
the ``gpu`` marker and skips elsewhere; ``bench/quantize_memory.py`` measures memory.
"""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch
import torch.nn.functional as F

from trainer.config import Config, ModelConfig, validate
from trainer.errors import UserFacingError
from trainer.export import TrainingMetadata, export_adapter
from trainer.models.loading import load_base_model
from trainer.models.quantize import quantize_base
from trainer.network import adapter_layers, inject_lora

needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed")


@pytest.fixture(scope="module")
def base():
    return load_base_model(ModelConfig(base="builtin:tiny-sd"))


def fixed_batch_loss(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    config = model.unet.config
    latents = torch.randn(2, config.in_channels, 8, 8, generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = torch.tensor([150, 650])
    hidden = torch.randn(2, 8, config.cross_attention_dim, generator=gen)
    noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
    return F.mse_loss(model.unet(noisy, timesteps, encoder_hidden_states=hidden).sample, noise)


@needs_torchao
def test_lora_learns_on_an_int8_base_and_its_file_is_checked_on_the_original_base(base, tmp_path):
    from torchao.quantization import Int8Tensor

    cfg = Config()
    cfg.model.quantize, cfg.network.rank, cfg.network.alpha = "int8", 4, 4.0
    cfg.export.format, cfg.export.dtype, cfg.run.name = "kohya", "fp32", "q8"
    model = copy.deepcopy(base)
    assert quantize_base(model, "int8", train_text_encoder=False, compute_dtype=torch.float32) == ["unet", "text_encoder"]
    to_q = model.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert isinstance(to_q.weight, Int8Tensor), "the frozen UNet Linear weights are stored as int8"
    inject_lora(model, cfg.network)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    assert params and all(p.dtype == torch.float32 for p in params), "LoRA trains in fp32 on the int8 base"
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        before = fixed_batch_loss(model).item()
    for _ in range(8):
        optimizer.zero_grad()
        fixed_batch_loss(model).backward()
        optimizer.step()
    with torch.no_grad():
        after = fixed_batch_loss(model).item()
    assert after < 0.98 * before, f"LoRA on the int8 base did not learn: {before:.4f} -> {after:.4f}"
    assert all(isinstance(layer.get_base_layer().weight, Int8Tensor) for layer in adapter_layers(model.unet).values())

    [result] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=True)
    assert result.verified is True, result.message
    assert "checked on the original (unquantized) base" in result.message
    gap = float(result.message.split("int8 model's by ")[1].split(" ")[0])
    effect = float(result.message.split("adapter effect ")[1].rstrip(")"))
    assert 0 < gap < effect, "on the original base the adapter's output moves by less than what it learned"


def test_nf4_on_a_machine_without_cuda_is_refused_before_the_model_loads(make_config, monkeypatch):
    import trainer.models.loading as loading
    from trainer.train import train

    if torch.cuda.is_available():
        pytest.skip("this machine can run nf4")
    monkeypatch.setattr(loading, "load_base_model", lambda *a, **k: pytest.fail("the model loaded before the refusal"))
    cfg = make_config("nf4", model__quantize="nf4")
    with pytest.raises(UserFacingError, match=r"`model.quantize = \"nf4\"` needs"):
        train(cfg, show_progress=False)


def test_preflight_names_an_unavailable_quantize_mode(make_config):
    from trainer.preflight import preflight

    if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("this machine can run nf4")
    report = preflight(make_config("nf4", model__quantize="nf4"))
    assert any("`model.quantize = \"nf4\"` needs" in e for e in report.errors), report.errors


@pytest.mark.parametrize("overrides,message", [
    ({"model.quantize": "int8", "network.type": "loha"}, "works with `network.type` \"lora\" or \"locon\""),
    ({"model.quantize": "nf4", "network.use_dora": True}, "does not combine with `network.use_dora`"),
    ({"model.quantize": "int4"}, "model.quantize"),
])
def test_bad_quantize_settings_name_the_field(overrides, message):
    cfg = Config()
    for key, value in overrides.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    assert any(message in p for p in validate(cfg)), validate(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None,
                    reason="bitsandbytes modes need CUDA and bitsandbytes")
@pytest.mark.parametrize("mode", ["nf4", "int8"])
def test_bitsandbytes_base_trains_lora_on_cuda(base, mode):
    import bitsandbytes as bnb

    cfg = Config()
    cfg.model.quantize, cfg.network.rank = mode, 4
    model = copy.deepcopy(base)
    model.unet.to("cuda")
    quantize_base(model, mode, train_text_encoder=False, compute_dtype=torch.float32)
    to_q = model.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    assert isinstance(to_q, bnb.nn.Linear4bit if mode == "nf4" else bnb.nn.Linear8bitLt)
    inject_lora(model, cfg.network)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    loss = fixed_batch_loss_cuda(model)
    loss.backward()
    assert all(p.grad is not None for p in params)


def fixed_batch_loss_cuda(model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    config = model.unet.config
    latents = torch.randn(2, config.in_channels, 8, 8, generator=gen).cuda()
    noise = torch.randn(latents.shape, generator=gen).cuda()
    timesteps = torch.tensor([150, 650]).cuda()
    hidden = torch.randn(2, 8, config.cross_attention_dim, generator=gen).cuda()
    return F.mse_loss(model.unet(latents + noise, timesteps, encoder_hidden_states=hidden).sample, noise)


@needs_torchao
def test_quantized_linear_backward_keeps_int8_and_gives_torchaos_input_gradient():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from trainer.models.quantize import QuantizedLinear, _save_quantized_for_backward

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).requires_grad_(False)
    quantize_(plain, Int8WeightOnlyConfig())
    x = torch.randn(5, 16, requires_grad=True)
    plain(x).square().sum().backward()
    expected, x.grad = x.grad.clone(), None
    frugal = copy.deepcopy(plain)
    _save_quantized_for_backward(frugal)
    assert isinstance(frugal[0], QuantizedLinear) and frugal[0].weight is not plain[0].weight
    frugal(x).square().sum().backward()
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-6, msg="the input gradient is torchao's own")


def test_backend_choice_per_machine(monkeypatch):
    """int8 is bitsandbytes LLM.int8 only with CUDA and bitsandbytes, torchao weight-only otherwise; nf4 needs both."""
    from trainer.models import quantize_rules

    for installed in ({"torchao"}, {"torchao", "bitsandbytes"}):
        monkeypatch.setattr(quantize_rules, "_installed", lambda name, have=installed: name in have)
        has_bnb = "bitsandbytes" in installed
        assert quantize_rules.backend("int8", cuda=True) == ("bnb-int8" if has_bnb else "torchao-int8")
        assert quantize_rules.backend("int8", cuda=False) == "torchao-int8"
        assert quantize_rules.backend("nf4", cuda=True) == ("bnb-nf4" if has_bnb else "unavailable")
        assert (quantize_rules.machine_problem("nf4", cuda=True) is None) == has_bnb
        assert "CUDA GPU" in quantize_rules.machine_problem("nf4", cuda=False)
        assert quantize_rules.machine_problem("int8", cuda=False) is None
