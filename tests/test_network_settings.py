"""Adapter types beyond learning and loading: their settings name the field when wrong, their presets are
valid configs, the files carry LyCORIS metadata, and the training loop, pre-flight check, diffusers format
and disk estimate follow the type. Models and helpers from ``test_networks``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from test_networks import MODELS, adapted, export, load_bases, network_cfg, unet_loss

from trainer.config import Config
from trainer.errors import UserFacingError
from trainer.export import TrainingMetadata, export_adapter, load_adapter_weights
from trainer.export.delta_check import trained_delta
from trainer.export.keys import adapted_components
from trainer.network import ADAPTER_NAME, adapter_layers, inject_lora
from trainer.networks import kind


@pytest.fixture(scope="module")
def bases():
    return load_bases()


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
