"""Adapter types (``network.type``, DoRA, rsLoRA, LoCon, LoHa, LoKr): they learn, their files mean what was
trained, a damaged file fails the self-check naming the module, and ``init_from`` / ``sample`` read them.

Real tiny models (the builtins), fixed seeds, CPU. Adapters are moved away from their identity init
(style rule: "where LoRA must have an effect, start B ≠ 0"), otherwise every file comparison would
pass on zeros.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from trainer.config import Config, ModelConfig
from trainer.errors import UserFacingError
from trainer.export import TrainingMetadata, export_adapter, load_adapter_weights, verify_adapter
from trainer.export.delta_check import trained_delta
from trainer.export.file_modules import read_kohya_file, resolve_file_modules
from trainer.export.keys import adapted_components, canonical_path
from trainer.export.loader import AdapterMismatchError
from trainer.models.loading import load_base_model
from trainer.network import adapter_layers, inject_lora
from trainer.networks import is_adapter_param, kind

# (network.type, extra [network] settings): every type and flag the issue names.
VARIANTS = {
    "lora": ("lora", {}),
    "locon": ("locon", {"conv_rank": 2, "conv_alpha": 1.0}),
    "dora": ("lora", {"use_dora": True}),
    "locon-dora": ("locon", {"use_dora": True}),
    "rslora": ("lora", {"rslora": True}),
    "loha": ("loha", {}),
    "lokr": ("lokr", {}),
    "lokr-conv": ("lokr", {"conv_rank": 4, "lokr_factor": 4}),
    "loha-conv": ("loha", {"conv_rank": 2}),
}
MODELS = {"sd": "builtin:tiny-sd", "sdxl": "builtin:tiny-sdxl"}


def load_bases() -> dict:
    """The builtin tiny SD and SDXL models (each test module loads them once, as its ``bases`` fixture)."""
    return {name: load_base_model(ModelConfig(base=base)) for name, base in MODELS.items()}


@pytest.fixture(scope="module")
def bases():
    return load_bases()


def network_cfg(variant: str, base: str, rank: int = 4, te: bool = True) -> Config:
    net_type, extra = VARIANTS[variant]
    cfg = Config()
    cfg.model.base = base
    cfg.network.type, cfg.network.rank, cfg.network.alpha = net_type, rank, 2.0
    cfg.network.train_text_encoder = te
    for key, value in extra.items():
        setattr(cfg.network, key, value)
    cfg.run.name = variant
    return cfg


def adapted(base_model, cfg: Config, seed: int = 0, scale: float = 0.05):
    """A copy of the base with the adapter injected and every adapter tensor moved off its init."""
    model = copy.deepcopy(base_model)
    inject_lora(model, cfg.network)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.component_modules().values():
            for name, param in module.named_parameters():
                if is_adapter_param(name):
                    param.add_(scale * torch.randn_like(param))
    return model


def unet_loss(model, prediction_only: bool = False) -> torch.Tensor:
    """The epsilon objective on one fixed batch (fixed latents, noise, timesteps, conditioning); with
    ``prediction_only`` the UNet's prediction itself."""
    gen = torch.Generator().manual_seed(0)
    config = model.unet.config
    latents = torch.randn(2, config.in_channels, 8, 8, generator=gen)
    noise = torch.randn(latents.shape, generator=gen)
    timesteps = torch.tensor([150, 650])
    cross = config.cross_attention_dim
    kwargs = {}
    if config.addition_embed_type == "text_time":
        text_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(2, text_dim, generator=gen),
            "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2),
        }
    hidden = torch.randn(2, 8, cross, generator=gen)
    noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = model.unet(noisy, timesteps, encoder_hidden_states=hidden, **kwargs).sample
    return prediction if prediction_only else F.mse_loss(prediction.float(), noise)


def fit(model, steps: int = 8, lr: float = 1e-2) -> tuple[float, float]:
    params = [p for p in model.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    with torch.no_grad():
        before = unet_loss(model).item()
    for _ in range(steps):
        optimizer.zero_grad()
        unet_loss(model).backward()
        optimizer.step()
    with torch.no_grad():
        after = unet_loss(model).item()
    return before, after


def export(model, cfg: Config, out_dir, dtype: str = "fp16", verify: bool = True):
    cfg.export.format, cfg.export.dtype = "kohya", dtype
    [result] = export_adapter(model, cfg, out_dir, metadata=TrainingMetadata(steps=6), verify=verify)
    return result


# ---------------------------------------------------------------------------------------------
# Every type learns and its file is what was trained


LEARN_CASES = [(v, f) for v in VARIANTS for f in MODELS if f == "sd" or v not in ("locon-dora", "loha-conv")]


@pytest.mark.parametrize("variant,family", LEARN_CASES)
def test_type_learns_and_its_exported_file_passes_the_self_check(bases, tmp_path, variant, family):
    cfg = network_cfg(variant, MODELS[family])
    model = adapted(bases[family], cfg)
    before, after = fit(model)
    # Measured after 8 steps (fixed batch, seed 0, CPU): LoHa 0.975/0.959 of the start (sd/sdxl), LoKr 0.966/0.943,
    # LoRA/DoRA/rsLoRA 0.86-0.92, the conv types 0.40-0.68; an adapter that does not train stays at 1.000.
    assert after < before * 0.985, f"{variant} on {family}: loss on a fixed batch must fall ({before:.4f} -> {after:.4f})"
    result = export(model, cfg, tmp_path)
    assert result.verified is True, f"{variant} on {family}: {result.message}"
    assert "ΔW from the file equals the trained delta" in result.message, result.message


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_file_delta_equals_peft_merged_delta_in_fp32(bases, tmp_path, variant):
    """Per module, ΔW decoded from the fp32 file's keys alone equals PEFT's merged weight minus the base."""
    cfg = network_cfg(variant, MODELS["sd"])
    model = adapted(bases["sd"], cfg)
    result = export(model, cfg, tmp_path, dtype="fp32", verify=False)
    file = read_kohya_file(result.path)
    resolved, unknown = resolve_file_modules(file, model)
    assert not unknown, unknown[:3]
    layers = {(c, canonical_path(c, m, n)): layer for c, m in adapted_components(model).items()
              for n, layer in adapter_layers(m).items()}
    assert set(resolved) == set(layers), "the file has one module per adapted layer"
    for key, module in resolved.items():
        layer = layers[key]
        base = layer.get_base_layer().weight.detach().float()
        got = kind(module.kind).delta(module.parts, module.alpha, base)
        want = trained_delta(layer)
        assert want.abs().max() > 1e-4, f"{key}: the test adapter must not be zero"
        # fp32 factors, fp32 products: only summation order separates the two (ranks ≤ 16, |ΔW| ~ 1e-2).
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6, msg=f"{variant} {key}: file ΔW != trained ΔW")


# ---------------------------------------------------------------------------------------------
# Damaged files fail the self-check, naming the module


def corrupt_and_check(model, path, tmp_path, edit, name):
    tensors = load_file(str(path))
    edit(tensors)
    bad = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(bad))
    return verify_adapter(bad, model)


def first_module(tensors: dict, suffix: str) -> str:
    return sorted(k.rsplit(".", 1)[0] if suffix == "alpha" else k.removesuffix("." + suffix)
                  for k in tensors if k.endswith("." + suffix) and k.startswith("lora_unet_"))[0]


CORRUPTIONS = {
    # (variant, description): edit of the tensors dict, given the module name
    ("loha", "wrong alpha"): ("hada_w1_a", lambda t, m: t.__setitem__(f"{m}.alpha", t[f"{m}.alpha"] * 3)),
    ("loha", "swapped factors"): ("hada_w1_a", lambda t, m: _swap(t, f"{m}.hada_w1_a", f"{m}.hada_w2_a")),
    ("loha", "missing key"): ("hada_w1_a", lambda t, m: t.pop(f"{m}.hada_w2_b")),
    ("lokr", "wrong alpha"): ("lokr_w1", lambda t, m: t.__setitem__(f"{m}.lokr_w1", t[f"{m}.lokr_w1"] * 3)),
    ("lokr", "swapped factors"): ("lokr_w1", lambda t, m: _swap(t, f"{m}.lokr_w1", f"{m}.lokr_w2")),
    ("lokr", "missing key"): ("lokr_w1", lambda t, m: t.pop(f"{m}.lokr_w2")),
    ("dora", "wrong alpha"): ("dora_scale", lambda t, m: t.__setitem__(f"{m}.alpha", t[f"{m}.alpha"] * 3)),
    ("dora", "transposed dora_scale"): ("dora_scale", lambda t, m: t.__setitem__(
        f"{m}.dora_scale", t[f"{m}.dora_scale"].flip(0))),
    ("dora", "missing key"): ("dora_scale", lambda t, m: t.pop(f"{m}.lora_up.weight")),
    ("locon", "swapped factors"): ("lora_down.weight", lambda t, m: _swap_conv_up_down(t, m)),
}


def _swap(tensors, a, b):
    assert tensors[a].shape == tensors[b].shape, f"{a}/{b}: pick a module whose factors have one shape"
    tensors[a], tensors[b] = tensors[b], tensors[a]


def _swap_conv_up_down(tensors, module):
    """Reverse the rank order of down only: same shapes, a different (wrong) product."""
    tensors[f"{module}.lora_down.weight"] = tensors[f"{module}.lora_down.weight"].flip(0)


@pytest.mark.parametrize("variant,what", list(CORRUPTIONS))
def test_corrupted_file_fails_the_self_check_naming_the_module(bases, tmp_path, variant, what):
    cfg = network_cfg(variant, MODELS["sd"], te=False)
    model = adapted(bases["sd"], cfg)
    result = export(model, cfg, tmp_path, dtype="fp16", verify=False)
    suffix, edit = CORRUPTIONS[(variant, what)]
    tensors = load_file(str(result.path))
    candidates = sorted(k.removesuffix("." + suffix) for k in tensors if k.endswith("." + suffix))
    if variant == "lokr" and what == "swapped factors":  # a 64-wide layer: w1 and w2 both 8x8
        candidates = [m for m in candidates if tensors[f"{m}.lokr_w1"].shape == tensors.get(f"{m}.lokr_w2", torch.zeros(0)).shape]
    if variant == "locon":
        candidates = [m for m in candidates if "resnets" in m and m.endswith("conv1")]
    module = candidates[0]
    check = corrupt_and_check(model, result.path, tmp_path, lambda t: edit(t, module), what.replace(" ", "_"))
    assert check.verified is False, f"{variant} with {what} must fail the self-check"
    assert module in check.message, f"the message must name {module}: {check.message}"


# ---------------------------------------------------------------------------------------------
# init_from and sample read every type we write


@pytest.mark.parametrize("variant", ["loha", "lokr-conv", "dora", "locon"])
def test_init_from_loads_every_type_exactly(bases, tmp_path, variant):
    cfg = network_cfg(variant, MODELS["sd"])
    trained = adapted(bases["sd"], cfg)
    result = export(trained, cfg, tmp_path, dtype="fp32", verify=False)
    fresh = copy.deepcopy(bases["sd"])
    cfg.network.alpha = 8.0  # another alpha: the loader rescales to keep ΔW
    inject_lora(fresh, cfg.network)
    loaded = load_adapter_weights(fresh, result.path)
    assert loaded.modules == len(read_kohya_file(result.path).modules) and loaded.left_at_init == []
    want = {(c, n): trained_delta(layer) for c, m in adapted_components(trained).items() for n, layer in adapter_layers(m).items()}
    got = {(c, n): trained_delta(layer) for c, m in adapted_components(fresh).items() for n, layer in adapter_layers(m).items()}
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-6, msg=f"{variant} {key} after init_from")


def test_init_from_refuses_another_type_or_dora_naming_the_setting(bases, tmp_path):
    cfg = network_cfg("loha", MODELS["sd"], te=False)
    result = export(adapted(bases["sd"], cfg), cfg, tmp_path, verify=False)
    for variant, message in (("lora", r"loha module but the network is lora; set `network.type`"),
                             ("lokr", r"loha module but the network is lokr")):
        fresh = copy.deepcopy(bases["sd"])
        inject_lora(fresh, network_cfg(variant, MODELS["sd"], te=False).network)
        with pytest.raises(AdapterMismatchError, match=message):
            load_adapter_weights(fresh, result.path)
    dora_cfg = network_cfg("dora", MODELS["sd"], te=False)
    dora = export(adapted(bases["sd"], dora_cfg), dora_cfg, tmp_path / "d", verify=False)
    fresh = copy.deepcopy(bases["sd"])
    inject_lora(fresh, network_cfg("lora", MODELS["sd"], te=False).network)
    with pytest.raises(AdapterMismatchError, match=r"set `network.use_dora = true`"):
        load_adapter_weights(fresh, dora.path)


@pytest.mark.parametrize("variant", ["loha", "lokr", "dora"])
def test_sample_applies_types_diffusers_cannot_load(bases, tmp_path, variant):
    """``sample`` merges ΔW for LoHa/LoKr/DoRA: the adapted pipeline's UNet weights are base + ΔW of the
    file, and switching the adapter off restores the base weights bit for bit."""
    from trainer.export.merge import merge_adapter

    cfg = network_cfg(variant, MODELS["sd"], te=False)
    model = adapted(bases["sd"], cfg)
    result = export(model, cfg, tmp_path, dtype="fp32", verify=False)
    plain = copy.deepcopy(bases["sd"])
    before = {n: p.detach().clone() for n, p in plain.unet.named_parameters()}
    merged = merge_adapter(plain, result.path)
    assert merged.layers == len(read_kohya_file(result.path).modules)
    merged.apply(1.0)
    with torch.no_grad():
        adapted_out, base_out = unet_loss(plain, True), unet_loss(bases["sd"], True)
        model.unet.eval()
        trained_out = unet_loss(model, True)
    effect = (trained_out - base_out).abs().max()
    assert effect > 1e-3, "the test adapter must change the UNet's output"
    # Merged fp32 weights vs PEFT's separate adapter path: only the order of fp32 sums differs.
    torch.testing.assert_close(adapted_out, trained_out, rtol=0, atol=1e-3 * effect.item(),
                               msg=f"{variant}: UNet with the file merged != the trained UNet")
    merged.remove()
    for name, param in plain.unet.named_parameters():
        assert torch.equal(param, before[name]), f"{name} not restored after switching the adapter off"


def test_sample_refuses_a_file_for_another_base(bases, tmp_path):
    from trainer.export.merge import merge_adapter

    cfg = network_cfg("loha", MODELS["sdxl"], te=False)
    result = export(adapted(bases["sdxl"], cfg), cfg, tmp_path, verify=False)
    with pytest.raises(UserFacingError, match=r"match no layer of base model 'builtin:tiny-sd'.*--base"):
        merge_adapter(copy.deepcopy(bases["sd"]), result.path)
