"""Adapter export/import: kohya keys and math, metadata and hashes, loading back, and the self-check."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from trainer.config import Config
from trainer.errors import UserFacingError
from trainer.export import (
    AdapterFileError,
    AdapterMismatchError,
    TrainingMetadata,
    convert_adapter,
    diffusers_state_dict,
    export_adapter,
    kohya_state_dict,
    load_adapter_weights,
)
from trainer.export.metadata import base_model_version, modelspec_architecture
from trainer.models.loading import load_base_model
from trainer.network import inject_lora


@pytest.fixture(scope="module")
def base():
    return load_base_model(Config().model)


def lora_model(
    base, *, rank=4, alpha=2.0, te=True, b_std=0.1, seed=0, unet_targets="attention", mlp=False,
    network_type="lora", zero_factor="lora_B",
):
    """A copy of ``base`` with an injected adapter whose zero-initialised factor (``zero_factor``: LoRA's B,
    LoHa's ``hada_w2_b``) is drawn from N(0, b_std): PEFT's zero init would make every comparison pass trivially."""
    model = copy.deepcopy(base)
    cfg = Config()
    cfg.network.type, cfg.network.rank, cfg.network.alpha = network_type, rank, alpha
    cfg.network.train_text_encoder, cfg.network.text_encoder_mlp = te, mlp
    cfg.network.unet_targets = unet_targets
    inject_lora(model, cfg.network)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.component_modules().values():
            for name, param in module.named_parameters():
                if zero_factor in name:
                    param.normal_(0, b_std) if b_std else param.zero_()
    return model, cfg


def lora_params(model):
    return {
        f"{comp}.{name}": p.detach().clone()
        for comp, module in model.component_modules().items()
        for name, p in module.named_parameters()
        if "lora_" in name
    }


def export(model, cfg, out_dir, fmt="kohya", dtype="fp32", verify=False):
    cfg.export.format, cfg.export.dtype = fmt, dtype
    return export_adapter(model, cfg, out_dir, metadata=TrainingMetadata(steps=7), verify=verify)


# ---------------------------------------------------------------------------------------------
# Kohya keys and math


def test_kohya_keys_are_sd_scripts_names_with_scalar_alpha(base):
    model, _ = lora_model(base)
    sd = kohya_state_dict(model, alpha=2.0, dtype=torch.float16)
    for key in (
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_up_blocks_0_attentions_2_transformer_blocks_0_attn2_to_out_0.lora_up.weight",
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.alpha",
        # transformers 5 names this layer encoder.layers.0...; sd-scripts' name keeps text_model.
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_4_self_attn_out_proj.lora_up.weight",
    ):
        assert key in sd, f"missing sd-scripts key {key}"
    modules = {k.split(".", 1)[0] for k in sd}
    unet_layers = [n for n, _ in model.unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    te_layers = [n for n, _ in model.text_encoder.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj", "out_proj"))]
    expected = {"lora_unet_" + n.replace(".", "_") for n in unet_layers}
    expected |= {"lora_te_text_model_" + n.replace(".", "_") for n in te_layers}
    assert modules == expected, f"module names differ: {sorted(modules ^ expected)[:4]}"
    assert len(sd) == 3 * len(modules), "every module needs exactly lora_down, lora_up and alpha"
    for name in modules:
        alpha = sd[f"{name}.alpha"]
        assert alpha.dim() == 0 and alpha.item() == 2.0, f"{name}.alpha must be a 0-dim tensor equal to network.alpha"
        assert sd[f"{name}.lora_down.weight"].shape[0] == 4 and sd[f"{name}.lora_up.weight"].shape[1] == 4


def test_kohya_preset_and_text_encoder_mlp_keys(base):
    model, _ = lora_model(base, unet_targets="kohya", mlp=True)
    modules = {k.split(".", 1)[0] for k in kohya_state_dict(model, alpha=2.0, dtype=torch.float32)}
    for name in (
        "lora_unet_down_blocks_1_attentions_0_proj_in",
        "lora_unet_down_blocks_1_attentions_0_proj_out",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj",
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_ff_net_2",
        "lora_te_text_model_encoder_layers_0_mlp_fc1",
        "lora_te_text_model_encoder_layers_0_mlp_fc2",
    ):
        assert name in modules, f"missing kohya module {name}"


def test_kohya_delta_is_alpha_over_rank_up_down(base):
    model, _ = lora_model(base, rank=4, alpha=2.0)
    sd = kohya_state_dict(model, alpha=2.0, dtype=torch.float32)
    layer = model.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2.to_v
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v"
    up, down, alpha = sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"], sd[f"{name}.alpha"].item()
    delta = alpha / down.shape[0] * up @ down
    torch.testing.assert_close(delta, layer.get_delta_weight("default"), msg="kohya delta != PEFT's delta weight")
    assert delta.abs().max() > 0, "the test adapter must not be zero"


def test_kohya_written_alpha_other_than_trained_keeps_the_delta(base):
    model, _ = lora_model(base, rank=4, alpha=2.0)
    sd = kohya_state_dict(model, alpha=8.0, dtype=torch.float32)
    name = "lora_te_text_model_encoder_layers_1_self_attn_v_proj"
    layer = model.text_encoder.encoder.layers[1].self_attn.v_proj
    delta = sd[f"{name}.alpha"].item() / 4 * sd[f"{name}.lora_up.weight"] @ sd[f"{name}.lora_down.weight"]
    torch.testing.assert_close(delta, layer.get_delta_weight("default"))


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_save_dtype(base, tmp_path, dtype, torch_dtype):
    model, cfg = lora_model(base, te=False)
    [result] = export(model, cfg, tmp_path, dtype=dtype)
    tensors = load_file(str(result.path))
    weights = [v for k, v in tensors.items() if k.endswith(".weight")]
    assert weights and all(v.dtype == torch_dtype for v in weights), f"weights must be saved as {dtype}"
    assert not any(k.startswith("lora_te") for k in tensors), "an untrained text encoder must not be exported"


def test_diffusers_keys_are_peft_keys_with_component_prefix(base):
    model, _ = lora_model(base)
    sd = diffusers_state_dict(model)
    assert "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight" in sd
    assert "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight" in sd
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in sd)


# ---------------------------------------------------------------------------------------------
# Files and metadata


def test_export_both_formats_atomically_with_results(base, tmp_path):
    model, cfg = lora_model(base)
    cfg.run.name = "mine"
    results = export(model, cfg, tmp_path, fmt="both")
    assert [(r.path.name, r.format) for r in results] == [
        ("mine.safetensors", "kohya"),
        ("mine_diffusers.safetensors", "diffusers"),
    ]
    assert results[0].keys == len(load_file(str(results[0].path))) == 3 * (48 + 20)
    assert all(r.verified is None for r in results), "verify=False must not claim a check"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.safetensors", "mine_diffusers.safetensors"], (
        "no temporary files may be left behind"
    )


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_metadata_as_sd_scripts_writes_it(base, tmp_path):
    model, cfg = lora_model(base, rank=4, alpha=2.0)
    cfg.run.name = "meta"
    meta = TrainingMetadata(
        steps=12, epoch=3, max_train_steps=12, num_train_images=20, training_started_at=1_700_000_000.0,
        training_finished_at=1_700_000_100.0, tag_frequency={"img": {"sks": 5, "dog": 2}},
        dataset_dirs={"img": {"n_repeats": 4, "img_count": 5}},
    )
    cfg.export.dtype = "fp16"
    [result] = export_adapter(model, cfg, tmp_path, metadata=meta, verify=False)
    md = header(result.path)
    expected = {
        "ss_network_dim": "4", "ss_network_alpha": "2.0", "ss_network_module": "networks.lora",
        "ss_base_model_version": "sd_v1", "ss_v2": "False", "ss_output_name": "meta", "ss_steps": "12",
        "ss_epoch": "3", "ss_max_train_steps": "12", "ss_resolution": "(64, 64)", "ss_num_train_images": "20",
        "ss_training_started_at": "1700000000.0", "ss_training_finished_at": "1700000100.0",
        "ss_learning_rate": "0.0001", "ss_unet_lr": "0.0001", "ss_text_encoder_lr": "5e-05", "ss_seed": "42",
        "ss_mixed_precision": "no",
        "modelspec.sai_model_spec": "1.0.0", "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers", "modelspec.title": "meta", "modelspec.resolution": "64x64",
        "modelspec.prediction_type": "epsilon",
    }
    assert {k: md.get(k) for k in expected} == expected
    assert json.loads(md["ss_tag_frequency"]) == {"img": {"sks": 5, "dog": 2}}
    assert json.loads(md["ss_dataset_dirs"]) == {"img": {"n_repeats": 4, "img_count": 5}}
    assert json.loads(md["ss_network_args"])["train_text_encoder"] == "True"
    assert md["modelspec.date"].startswith("2023-11-1"), md["modelspec.date"]


def test_sshs_hashes_match_sd_scripts_definition(base, tmp_path):
    model, cfg = lora_model(base)
    [result] = export(model, cfg, tmp_path, dtype="fp16")
    md, raw = header(result.path), result.path.read_bytes()
    # addnet_hash_safetensors: sha256 of everything after the 8-byte length and the JSON header.
    header_len = int.from_bytes(raw[:8], "little")
    assert md["sshs_model_hash"] == hashlib.sha256(raw[8 + header_len :]).hexdigest()
    # addnet_hash_legacy over the tensors saved with only the ss_* metadata.
    ss_only = {k: v for k, v in md.items() if k.startswith("ss_")}
    from safetensors.torch import save

    ss_bytes = io.BytesIO(save(load_file(str(result.path)), ss_only)).getvalue()
    assert md["sshs_legacy_hash"] == hashlib.sha256(ss_bytes[0x100000:0x110000]).hexdigest()[:8]


def test_architecture_names_for_other_families():
    assert modelspec_architecture("sd2", "v_prediction") == "stable-diffusion-v2-768-v/lora"
    assert modelspec_architecture("sd2", "epsilon") == "stable-diffusion-v2-512/lora"
    assert modelspec_architecture("sdxl", "epsilon") == "stable-diffusion-xl-v1-base/lora"
    assert [base_model_version(f, p) for f, p in [("sd1", "epsilon"), ("sd2", "epsilon"), ("sd2", "v_prediction"), ("sdxl", "epsilon")]] == [
        "sd_v1", "sd_v2", "sd_v2_v", "sdxl_base_v1-0"
    ]


def test_training_metadata_from_session(tmp_path):
    (tmp_path / "events.jsonl").write_text(json.dumps({"type": "started", "time": 1234.5}) + "\n")
    cfg = Config()
    cfg.dataset.trigger_word = "sks"
    rec = lambda name, caption, repeats=2: SimpleNamespace(  # noqa: E731
        path=tmp_path / "img" / name, caption=caption, repeats=repeats, trigger="", class_word="", is_regularization=False
    )
    session = SimpleNamespace(
        cfg=cfg, run_dir=tmp_path, progress=SimpleNamespace(step=9, epoch=2), total_steps=10,
        micro_batches_per_epoch=4, dataset=SimpleNamespace(records=[rec("a.png", "dog, red"), rec("b.png", "dog")]),
    )
    meta = TrainingMetadata.from_session(session)
    assert (meta.steps, meta.epoch, meta.num_train_images, meta.num_epochs) == (9, 2, 4, 3)
    assert meta.training_started_at == 1234.5, "start time comes from the run's started event"
    assert meta.tag_frequency == {"img": {"sks": 2, "dog": 2, "red": 1}}
    assert meta.dataset_dirs == {"img": {"n_repeats": 2, "img_count": 2}}


# ---------------------------------------------------------------------------------------------
# Loading back (network.init_from) and converting


@pytest.mark.parametrize("fmt", ["kohya", "diffusers"])
def test_load_adapter_weights_round_trip(base, tmp_path, fmt):
    trained, cfg = lora_model(base, seed=1)
    [result] = export(trained, cfg, tmp_path, fmt=fmt, dtype="fp32")
    fresh, _ = lora_model(base, b_std=0)
    loaded = load_adapter_weights(fresh, result.path)
    assert loaded.modules == 48 + 20 and loaded.format == fmt
    want, got = lora_params(trained), lora_params(fresh)
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=f"{key} differs after loading")


def test_load_rescales_for_a_different_alpha(base, tmp_path):
    trained, cfg = lora_model(base, alpha=8.0, te=False)
    [result] = export(trained, cfg, tmp_path)
    fresh, _ = lora_model(base, alpha=2.0, te=False, b_std=0)
    load_adapter_weights(fresh, result.path)
    want = trained.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_k.get_delta_weight("default")
    got = fresh.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_k.get_delta_weight("default")
    torch.testing.assert_close(got, want, msg="the update must survive a different network.alpha")


def test_load_keeps_untrained_component_at_init(base, tmp_path):
    trained, cfg = lora_model(base, te=False)
    [result] = export(trained, cfg, tmp_path)
    fresh, _ = lora_model(base, te=True, b_std=0)
    loaded = load_adapter_weights(fresh, result.path)
    assert loaded.left_at_init == ["text_encoder"]


def test_mismatched_rank_is_a_clear_error(base, tmp_path):
    trained, cfg = lora_model(base, rank=8)
    [result] = export(trained, cfg, tmp_path)
    fresh, _ = lora_model(base, rank=4, b_std=0)
    with pytest.raises(AdapterMismatchError, match=r"rank 8 but `network.rank` is 4") as err:
        load_adapter_weights(fresh, result.path)
    assert isinstance(err.value, UserFacingError) and str(result.path) in str(err.value)


def test_file_for_other_targets_is_a_clear_error(base, tmp_path):
    trained, cfg = lora_model(base, unet_targets="kohya", te=False)
    [result] = export(trained, cfg, tmp_path)
    fresh, _ = lora_model(base, unet_targets="attention", te=False, b_std=0)
    with pytest.raises(AdapterMismatchError, match="network.unet_targets"):
        load_adapter_weights(fresh, result.path)


def test_file_for_another_base_model_is_a_clear_error(base, tmp_path):
    bad = tmp_path / "other.safetensors"
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 320),
               "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.zeros(320, 4)}, str(bad))
    fresh, _ = lora_model(base, b_std=0)
    with pytest.raises(AdapterMismatchError, match="different base model"):
        load_adapter_weights(fresh, bad)


def test_unreadable_or_non_lora_file_names_the_file(base, tmp_path):
    fresh, _ = lora_model(base, b_std=0)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterFileError, match="junk.safetensors"):
        load_adapter_weights(fresh, junk)
    mixed = tmp_path / "mixed.safetensors"  # half LoRA, half LoHa, and no lora_up: no kind reads it
    save_file({"lora_unet_x.hada_w1_a": torch.zeros(2, 2), "lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(mixed))
    with pytest.raises(AdapterFileError, match=r"lora_unet_x \(lora\): missing lora_up.weight; unexpected hada_w1_a"):
        load_adapter_weights(fresh, mixed)


def test_convert_between_formats_round_trip(base, tmp_path):
    trained, cfg = lora_model(base)
    [kohya] = export(trained, cfg, tmp_path, fmt="kohya", dtype="fp16")
    plain = copy.deepcopy(base)  # no adapter injected: names resolve against the base layers
    convert_adapter(kohya.path, tmp_path / "d.safetensors", "diffusers", plain)
    convert_adapter(tmp_path / "d.safetensors", tmp_path / "k.safetensors", "kohya", plain)
    first, back = load_file(str(kohya.path)), load_file(str(tmp_path / "k.safetensors"))
    assert first.keys() == back.keys()
    for key in first:
        torch.testing.assert_close(back[key], first[key], rtol=0, atol=0)
    assert header(tmp_path / "k.safetensors")["ss_network_dim"] == "4", "conversion keeps the training metadata"
