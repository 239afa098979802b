"""The pre-flight check of ``network.init_from``: an adapter file to start from must fit the network settings
and the base model, judged from its header (kohya key names and shapes) and checked against real exports."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
from preflight_files import _errors_about, _file, _sd1, _zeros

from trainer.config import UNET_TARGET_PRESETS, Config
from trainer.preflight import preflight

# ---------------------------------------------------------------------------------------------
# network.init_from


def _kohya(modules: dict[str, tuple[int, int]], rank: int = 16) -> dict[str, np.ndarray]:
    """A kohya file: module name -> (in, out) of the adapted layer."""
    out = {}
    for name, (fan_in, fan_out) in modules.items():
        out[f"{name}.lora_down.weight"] = _zeros(rank, fan_in)
        out[f"{name}.lora_up.weight"] = _zeros(fan_out, rank)
        out[f"{name}.alpha"] = np.array(float(rank), dtype=np.float32)
    return out


def _tiny_sd_attention(cross: int = 32) -> dict[str, tuple[int, int]]:
    """One transformer block of tiny-sd's second level (64 channels; its text features are 32 wide)."""
    block = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_"
    layers = {f"{block}attn1_{t}": (64, 64) for t in ("to_q", "to_k", "to_v", "to_out_0")}
    layers |= {f"{block}attn2_to_q": (64, 64), f"{block}attn2_to_out_0": (64, 64)}
    layers |= {f"{block}attn2_to_k": (cross, 64), f"{block}attn2_to_v": (cross, 64)}
    return layers


@pytest.mark.parametrize(
    ("modules", "settings", "message"),
    [
        (_tiny_sd_attention(), {}, None),
        (_tiny_sd_attention(), {"network__rank": 8}, "set `network.rank = 16`"),
        (_tiny_sd_attention(cross=768), {}, "cross-attention layers take 768-wide"),
        ({**_tiny_sd_attention(), "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (32, 32)},
         {"network__train_text_encoder": True}, "second text encoder's layers (SDXL)"),
        ({**_tiny_sd_attention(), "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (32, 32)}, {},
         "layers this network does not adapt"),
        ({**_tiny_sd_attention(), "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768)},
         {"network__train_text_encoder": True}, "its text_encoder layers are 768 wide"),
        ({**_tiny_sd_attention(), "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2": (256, 64)}, {},
         "layers this network does not adapt"),
        (_tiny_sd_attention(), {"network__unet_targets": "kohya"}, "covers only part of the unet's adapted layers"),
    ],
)
def test_init_from_fits_the_network_and_the_base(make_config, tmp_path, tiny_sd, modules, settings, message):
    path = _file(tmp_path, _kohya(modules), "adapter.safetensors")
    report = preflight(make_config(network__init_from=str(path), **settings))
    errors = _errors_about(report, "`network.init_from`")
    if message is None:
        assert report.ok, report.errors
    else:
        assert any(message in e for e in errors) and all(str(path) in e for e in errors), report.errors


def test_init_from_file_problems(make_config, tmp_path):
    def errors_for(path):
        return _errors_about(preflight(make_config(network__init_from=str(path))), "`network.init_from`")

    assert "file not found" in errors_for(tmp_path / "none.safetensors")[0]
    (tmp_path / "a.pt").write_bytes(b"x")
    assert ".safetensors files only" in errors_for(tmp_path / "a.pt")[0]
    assert "no LoRA weights found" in errors_for(_file(tmp_path, {"weight": _zeros(2)}, "b.safetensors"))[0]
    # LoHa and LoRA modules are read, but these lack their other factors: each module is named with what it lacks.
    partial = _file(tmp_path, {"lora_unet_x.hada_w1_a": _zeros(2), "lora_unet_y.lora_down.weight": _zeros(2, 2)}, "c.safetensors")
    error = errors_for(partial)[0]
    assert "lora_unet_x (loha: missing hada_w1_b, hada_w2_a, hada_w2_b)" in error, error
    assert "lora_unet_y (lora: missing lora_up.weight)" in error, error
    flat = _file(tmp_path, {"lora_unet_x.lora_down.weight": _zeros(2), "lora_unet_x.lora_up.weight": _zeros(2)}, "d.safetensors")
    assert "not (rank, in, ...)" in errors_for(flat)[0]


def test_init_from_metadata_names_the_family(make_config, tmp_path):
    base = _file(tmp_path, _sd1())
    attn1 = {k: v for k, v in _tiny_sd_attention().items() if "attn1" in k}  # no width the base can be compared with
    path = _file(tmp_path, _kohya(attn1), "adapter.safetensors", metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    cfg = make_config(model__base=str(base), dataset__resolution=512, network__init_from=str(path),
                      network__unet_targets="custom", network__unet_target_modules=["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0"])
    errors = _errors_about(preflight(cfg), "`network.init_from`")
    assert len(errors) == 1 and "trained on SDXL" in errors[0] and "SD 1.x" in errors[0], errors


# Real adapters and real injections on the builtin models: what the header rules must agree with.

Injected = namedtuple("Injected", "model network")


@pytest.fixture(scope="module")
def injected():
    """tiny-sd and tiny-sdxl with LoRA on the kohya targets and on both text encoders' attention + MLP."""
    from trainer.config import ModelConfig, NetworkConfig
    from trainer.models.loading import load_base_model
    from trainer.network import inject_lora

    out = {}
    for base in ("builtin:tiny-sd", "builtin:tiny-sdxl"):
        net = NetworkConfig(rank=4, unet_targets="kohya", train_text_encoder=True, text_encoder_mlp=True)
        model = load_base_model(ModelConfig(base=base))
        out[base] = Injected(model, inject_lora(model, net))
    return out


@pytest.mark.parametrize("base", ["builtin:tiny-sd", "builtin:tiny-sdxl"])
def test_lora_size_estimate_counts_what_peft_injects(injected, base):
    from trainer.disk_estimate import lora_weights
    from trainer.models.probe import probe_base_model

    cfg = Config()
    cfg.model.base = base
    cfg.network.rank, cfg.network.unet_targets = 4, "kohya"
    cfg.network.train_text_encoder = cfg.network.text_encoder_mlp = True
    probe = probe_base_model(cfg.model)
    configs = {c: probe.config(c) for c in ("unet", "text_encoder", "text_encoder_2") if probe.config(c)}
    assert lora_weights(cfg, configs) == injected[base].network.num_trainable


@pytest.mark.parametrize(("made_on", "used_on", "fits"), [
    ("builtin:tiny-sd", "builtin:tiny-sd", True),
    ("builtin:tiny-sdxl", "builtin:tiny-sdxl", True),  # SDXL: kohya names in the sgm UNet layout
    ("builtin:tiny-sd", "builtin:tiny-sdxl", False),
    ("builtin:tiny-sdxl", "builtin:tiny-sd", False),
])
def test_real_exported_adapter(injected, make_config, tmp_path, made_on, used_on, fits):
    from safetensors.torch import save_file as save_torch

    from trainer.export import kohya_state_dict

    path = tmp_path / "real.safetensors"
    save_torch(kohya_state_dict(injected[made_on].model), str(path))
    cfg = make_config(model__base=used_on, network__init_from=str(path), network__rank=4, network__unet_targets="kohya",
                      network__train_text_encoder=True, network__text_encoder_mlp=True)
    report = preflight(cfg)
    assert report.ok == fits, report.errors
    if not fits:
        assert _errors_about(report, "was made for a different base model"), report.errors


# SDXL kohya files name the whole UNet in sd-scripts' sgm/LDM layout (``down_blocks.1.resnets.0.conv1`` is
# ``lora_unet_input_blocks_4_0_in_layers_2``): the probe must read those names as the loader does.

RESNET = ["conv1", "conv2", "conv_shortcut", "time_emb_proj"]
SDXL_UNET_TARGETS = {
    **{name: (name, []) for name in UNET_TARGET_PRESETS},
    "custom-resnets": ("custom", RESNET),
    "custom-attention-and-resnets": ("custom", [*UNET_TARGET_PRESETS["attention"], *RESNET]),
    # every Linear/Conv2d LoRA can wrap in an SDXL UNet; ``conv`` is the down/upsamplers' conv
    "custom-every-layer": ("custom", [*UNET_TARGET_PRESETS["kohya"], *RESNET, "conv", "conv_in", "conv_out",
                                      "time_embedding.linear_1", "time_embedding.linear_2",
                                      "add_embedding.linear_1", "add_embedding.linear_2"]),
}
Exported = namedtuple("Exported", "path model")


@pytest.fixture(scope="module")
def sdxl_export(tmp_path_factory):
    """targets (a SDXL_UNET_TARGETS key) -> a kohya file exported from tiny-sdxl with LoRA (rank 4) on those
    UNet layers and both text encoders' attention, as a run writes it."""
    from test_export import export
    from test_export_sdxl_layout import sdxl_adapter

    from trainer.config import ModelConfig
    from trainer.models.loading import load_base_model

    base, files = load_base_model(ModelConfig(base="builtin:tiny-sdxl")), {}

    def get(targets: str) -> Exported:
        if targets not in files:
            model, cfg = sdxl_adapter(base, *SDXL_UNET_TARGETS[targets])
            [result] = export(model, cfg, tmp_path_factory.mktemp(targets), dtype="fp16")
            files[targets] = Exported(result.path, model)
        return files[targets]

    return get


def _sdxl_init_from(make_config, path, targets):
    preset, modules = SDXL_UNET_TARGETS[targets]
    return make_config(model__base="builtin:tiny-sdxl", network__init_from=str(path), network__rank=4,
                       network__unet_targets=preset, network__unet_target_modules=list(modules),
                       network__train_text_encoder=True)


def _unet_modules(path) -> set[str]:
    from trainer.safetensors_header import read_header

    return {k.split(".", 1)[0] for k in read_header(path, "test").tensors if k.startswith("lora_unet_")}


@pytest.mark.parametrize("targets", list(SDXL_UNET_TARGETS), ids=list(SDXL_UNET_TARGETS))
def test_exported_sdxl_adapter_fits_its_own_unet_targets(sdxl_export, make_config, targets):
    path = sdxl_export(targets).path
    assert all(m.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                             "lora_unet_time_embed_", "lora_unet_label_emb_", "lora_unet_out_"))
               for m in _unet_modules(path)), "the file is meant to be in the sgm layout"
    report = preflight(_sdxl_init_from(make_config, path, targets))
    assert not _errors_about(report, "`network.init_from`") and report.ok, report.errors


def test_sdxl_adapter_in_the_old_diffusers_layout_still_fits(sdxl_export, make_config, tmp_path):
    """Files written before one layout per file spelled SDXL ResNet layers the diffusers way."""
    from safetensors.torch import load_file
    from safetensors.torch import save_file as save_torch

    from trainer.export.keys import KohyaNaming

    exported = sdxl_export("custom-attention-and-resnets")
    naming = KohyaNaming.for_model(exported.model)
    old = {naming.name("unet", n): f"lora_unet_{n.replace('.', '_')}"
           for n, m in exported.model.unet.named_modules() if hasattr(m, "lora_A") and any(r in n for r in RESNET)}
    tensors = {old.get(k.split(".", 1)[0], k.split(".", 1)[0]) + "." + k.split(".", 1)[1]: v
               for k, v in load_file(str(exported.path)).items()}
    save_torch(tensors, str(tmp_path / "old.safetensors"))
    assert any("_resnets_" in m for m in _unet_modules(tmp_path / "old.safetensors"))
    report = preflight(_sdxl_init_from(make_config, tmp_path / "old.safetensors", "custom-attention-and-resnets"))
    assert report.ok, report.errors


@pytest.mark.parametrize(("made_with", "used_with", "message"), [
    ("custom-attention-and-resnets", "attention", "layers this network does not adapt"),
    ("custom-resnets", "attention", "layers this network does not adapt"),
    ("attention", "custom-attention-and-resnets", "no conv1, conv2, conv_shortcut, time_emb_proj layers"),
])
def test_sdxl_adapter_with_other_unet_targets_is_refused(sdxl_export, make_config, made_with, used_with, message):
    path = sdxl_export(made_with).path
    errors = _errors_about(preflight(_sdxl_init_from(make_config, path, used_with)), "`network.init_from`")
    assert len(errors) == 1 and message in errors[0] and str(path) in errors[0], errors
