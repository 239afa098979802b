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
from trainer.network import ADAPTER_NAME, adapter_layers, inject_lora
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


@pytest.fixture(scope="module")
def bases():
    return {name: load_base_model(ModelConfig(base=base)) for name, base in MODELS.items()}


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


# ---------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("overrides,message", [
    ({"type": "loha", "use_dora": True}, "`network.use_dora` works with `network.type` \"lora\" or \"locon\""),
    ({"type": "lokr", "rslora": True}, "`network.rslora` works with"),
    ({"type": "lora", "conv_rank": 4}, "set `network.type = \"locon\"`"),
    ({"type": "lokr", "lokr_factor": 0}, "`network.lokr_factor` must be -1"),
    ({"type": "loha", "dropout": 0.1}, "`network.dropout` applies to lora/locon"),
    ({"block_dims": "4,x"}, "`network.block_dims` must be a comma-separated list of integers"),
    ({"block_alphas": "1,-2"}, "`network.block_alphas` values must be positive"),
    ({"down_lr_weight": "wavy"}, "`network.down_lr_weight` must be a comma-separated list of weights"),
    ({"type": "bogus"}, "`network.type` must be one of \"lora\", \"locon\", \"loha\", \"lokr\""),
])
def test_bad_network_settings_name_the_field(overrides, message):
    from trainer.config import validate

    cfg = Config()
    for key, value in overrides.items():
        setattr(cfg.network, key, value)
    problems = validate(cfg)
    assert any(message in p for p in problems), problems


def test_diffusers_format_is_refused_or_skipped_for_types_diffusers_cannot_load(tmp_path):
    """``diffusers`` alone is refused; ``both`` writes the kohya/LyCORIS file only and the pre-flight says so."""
    from trainer.config import validate
    from trainer.export import export_paths
    from trainer.networks.settings import export_warnings

    cfg = Config()
    cfg.network.type, cfg.export.format = "lokr", "diffusers"
    assert any("`export.format = \"diffusers\"`" in p and "use `export.format = \"kohya\"`" in p for p in validate(cfg))
    cfg.export.format = "both"
    assert validate(cfg) == []
    assert list(export_paths(cfg, tmp_path)) == ["kohya"]
    assert "only the kohya/LyCORIS file is written" in export_warnings(cfg)[0]
    cfg.network.type = "locon"  # diffusers loads LoCon: both files
    assert list(export_paths(cfg, tmp_path)) == ["kohya", "diffusers"] and export_warnings(cfg) == []


def test_set_dotted_accepts_the_new_settings():
    from trainer.config import set_dotted

    cfg = Config()
    set_dotted(cfg, "network.use_dora", True)
    set_dotted(cfg, "network.type", "locon")
    assert cfg.network.use_dora is True and cfg.network.type == "locon"


def test_file_records_lycoris_metadata(bases, tmp_path):
    import json

    from safetensors import safe_open

    cfg = network_cfg("lokr-conv", MODELS["sd"], te=False)
    result = export(adapted(bases["sd"], cfg), cfg, tmp_path, verify=False)
    with safe_open(str(result.path), framework="pt") as handle:
        meta = handle.metadata()
    args = json.loads(meta["ss_network_args"])
    assert meta["ss_network_module"] == "lycoris.kohya"
    assert args["algo"] == "lokr" and args["conv_dim"] == "4" and args["factor"] == "4", args
    dora = network_cfg("dora", MODELS["sd"], te=False)
    result = export(adapted(bases["sd"], dora), dora, tmp_path / "d", verify=False)
    with safe_open(str(result.path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["dora_wd"] == "True"


def test_layer_kind_matches_peft_layer_for_each_type(bases):
    for variant in ("lora", "loha", "lokr"):
        model = adapted(bases["sd"], network_cfg(variant, MODELS["sd"], te=False))
        layer = model.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q
        assert kind(variant).owns_layer(layer) and ADAPTER_NAME in layer.scaling


# ---------------------------------------------------------------------------------------------
# Presets and the training loop


@pytest.mark.parametrize("preset", ["style-locon", "style-loha", "character-lokr"])
def test_type_presets_are_valid_configs(preset):
    from trainer.config import preset_config, validate

    cfg = preset_config(preset)
    assert validate(cfg) == [], validate(cfg)
    assert cfg.network.type in preset


def test_full_matrix_lokr_trains_at_scale_one_as_lycoris_does(bases, tmp_path):
    """LyCORIS's recipe (rank 10000, alpha 1, factor 8) keeps both factors whole and trains at scale 1;
    PEFT alone would scale by alpha / rank = 1e-4."""
    from trainer.config import preset_config

    cfg = preset_config("character-lokr")
    model = copy.deepcopy(bases["sd"])
    inject_lora(model, cfg.network)
    layers = adapter_layers(model.unet)
    assert layers and all(ADAPTER_NAME in layer.lokr_w1 and ADAPTER_NAME in layer.lokr_w2 for layer in layers.values())
    assert {layer.scaling[ADAPTER_NAME] for layer in layers.values()} == {1.0}


@pytest.mark.slow  # ~3 s alone, 8 s on a busy 2-core machine
def test_train_loop_with_loha_checkpoints_resumes_and_exports_a_checked_file(make_config):
    """The real loop (``train``) with a non-LoRA kind: its parameters are trained, checkpointed and
    resumed (``--resume`` ends where an uninterrupted run ends), and the export passes the self-check."""
    from trainer.checkpoint import LORA_FILE, latest_checkpoint
    from trainer.events import read_events
    from trainer.train import train

    overrides = dict(network__type="loha", network__rank=4, network__alpha=4.0, training__max_steps=6,
                     optimizer__learning_rate=1e-2, checkpoint__every_n_steps=3, export__verify=True)
    full = make_config("full", **overrides)
    assert train(full, show_progress=False).status == "completed"
    part = make_config("part", **overrides)
    part.training.max_steps = 3
    train(part, show_progress=False)
    part.training.max_steps = 6
    assert train(part, resume=True, show_progress=False).status == "completed"
    state = load_file(str(latest_checkpoint(full.run_dir) / LORA_FILE))
    assert state and all(".hada_" in k for k in state), "checkpoints hold the LoHa factors"
    resumed = load_file(str(latest_checkpoint(part.run_dir) / LORA_FILE))
    for key, value in state.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0, msg=f"{key}: resumed run != uninterrupted")
    [export] = [e for e in read_events(full.run_dir) if e["type"] == "export"]
    assert export["verified"] is True and "(loha)" in export["message"], export["message"]


@pytest.mark.parametrize("family", ["sd"])  # SDXL's diffusers/PEFT names are the same code path (no sgm layout)
def test_diffusers_format_carries_locon_and_block_ranks(bases, tmp_path, family):
    """LoCon with its own conv rank and block-wise ranks in the diffusers/PEFT file: per-layer ranks and
    alphas travel as PEFT's rank/alpha patterns, diffusers loads the file exactly, and init_from reads it."""
    cfg = network_cfg("locon", MODELS[family])
    blocks = 13 if family == "sd" else 17
    cfg.network.block_dims = ",".join(str(2 + i % 3) for i in range(blocks))
    model = adapted(bases[family], cfg)
    cfg.export.format, cfg.export.dtype = "both", "fp32"
    results = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=True)
    assert [r.format for r in results] == ["kohya", "diffusers"]
    for result in results:
        assert result.verified is True, f"{result.format}: {result.message}"
    fresh = copy.deepcopy(bases[family])
    inject_lora(fresh, cfg.network)
    load_adapter_weights(fresh, results[1].path)
    for (c, m), (_, f) in zip(adapted_components(model).items(), adapted_components(fresh).items(), strict=True):
        for (name, layer), (_, other) in zip(adapter_layers(m).items(), adapter_layers(f).items(), strict=True):
            torch.testing.assert_close(trained_delta(other), trained_delta(layer), msg=f"{c}.{name} after init_from")


@pytest.mark.parametrize("variant", ["locon", "loha-conv", "lokr-conv", "dora"])
def test_preflight_accepts_each_type_we_write_and_names_a_type_mismatch(bases, tmp_path, variant):
    """The torch-free pre-flight check (safetensors header only) agrees with the loader on every type."""
    from trainer.adapter_probe import check_init_from
    from trainer.models.probe import probe_base_model

    cfg = network_cfg(variant, MODELS["sdxl"])
    result = export(adapted(bases["sdxl"], cfg), cfg, tmp_path, verify=False)
    probe = probe_base_model(cfg.model)
    assert check_init_from(str(result.path), cfg.network, probe).errors == []
    other = network_cfg("lokr" if "lokr" not in variant else "loha", MODELS["sdxl"]).network
    errors = check_init_from(str(result.path), other, probe).errors
    assert any("set `network.type` to the file's type" in e for e in errors), errors
    if variant == "dora":
        plain = network_cfg("lora", MODELS["sdxl"]).network
        assert any("set `network.use_dora = true`" in e for e in check_init_from(str(result.path), plain, probe).errors)


def test_output_tolerance_uses_each_components_own_compute_dtype():
    """A text encoder that computes in fp16 beside an fp32 UNet (what transformers 5 loads from an fp16
    folder) gets fp16's rounding in the output comparison; the UNet keeps fp32's. Found on a full-size
    SD 1.5: the merged LoHa file's text-encoder outputs differed by 0.0098 (fp16 noise) against an fp32 bound."""
    from trainer.export.verify import _compare_outputs

    base = {"unet": torch.ones(4), "text_encoder": torch.full((4,), 10.0)}
    trained = {"unet": base["unet"] + 0.1, "text_encoder": base["text_encoder"] + 0.05}
    loaded = {"unet": trained["unet"] + 1e-6, "text_encoder": trained["text_encoder"] + 0.005}
    dtypes = {"unet": torch.float32, "text_encoder": torch.float16}
    _, problems = _compare_outputs(base, trained, loaded, torch.float16, dtypes)
    assert problems == [], problems
    _, problems = _compare_outputs(base, trained, loaded, torch.float16, torch.float32)
    assert len(problems) == 1 and problems[0].startswith("text_encoder output differs"), problems
    loaded["unet"] = trained["unet"] + 0.01  # an fp32 UNet keeps its tight bound
    _, problems = _compare_outputs(base, trained, loaded, torch.float16, dtypes)
    assert len(problems) == 1 and problems[0].startswith("unet output differs"), problems


def test_dora_full_layout_writes_whole_deltas_every_client_applies_exactly(bases, tmp_path):
    """``export.dora_layout = "full"``: each DoRA layer as its whole ΔW (``.diff``), no ``dora_scale``; the
    self-check passes, ``sample``'s merge reproduces the trained UNet, and init_from / the pre-flight refuse
    to continue training from it, naming the setting."""
    from trainer.adapter_probe import check_init_from
    from trainer.export.merge import merge_adapter
    from trainer.models.probe import probe_base_model

    cfg = network_cfg("dora", MODELS["sd"])
    cfg.export.dora_layout = "full"
    model = adapted(bases["sd"], cfg)
    result = export(model, cfg, tmp_path)
    assert result.verified is True and "(full)" in result.message, result.message
    keys = load_file(str(result.path))
    assert keys and all(k.endswith(".diff") for k in keys), sorted(keys)[:3]
    plain = copy.deepcopy(bases["sd"])
    merge_adapter(plain, result.path).apply(1.0)
    with torch.no_grad():
        model.unet.eval()
        want, got = unet_loss(model, True), unet_loss(plain, True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2 * (want - unet_loss(bases["sd"], True)).abs().max().item())
    fresh = copy.deepcopy(bases["sd"])
    inject_lora(fresh, cfg.network)
    with pytest.raises(UserFacingError, match=r"holds a full ΔW.*`export.dora_layout = \"magnitude\"`"):
        load_adapter_weights(fresh, result.path)
    errors = check_init_from(str(result.path), cfg.network, probe_base_model(cfg.model)).errors
    assert any("`export.dora_layout = \"magnitude\"`" in e for e in errors), errors


def test_disk_estimate_follows_the_adapter_type():
    """The pre-flight's free-space estimate: LoHa stores two LoRA pairs; full-matrix LoKr (rank 10000) is
    bounded by its Kronecker factors, not by rank × (in + out) (which made an SD 1.5 run 'need' 246 GB)."""
    from trainer.config import preset_config
    from trainer.disk_estimate import lora_weights

    sd15 = {"unet": {"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "layers_per_block": 2,
                     "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                     "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}}
    lora = Config()
    lora.network.rank, lora.network.unet_targets = 16, "kohya"
    loha = copy.deepcopy(lora)
    loha.network.type = "loha"
    assert lora_weights(loha, sd15) == 2 * lora_weights(lora, sd15)
    lokr = preset_config("character-lokr")
    # 4.1 M: a full-size SD 1.5 file of these settings (plus text-encoder layers) held 4.7 M values, 9.4 MB in fp16
    assert 2e6 < lora_weights(lokr, sd15) < 1e7, lora_weights(lokr, sd15)
