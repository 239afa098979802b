"""``merge``: adapters baked into the base equal base + adapters loaded through diffusers, as a diffusers
folder and as a single original-layout file, with the bad inputs each refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_export import export, lora_model

from trainer.cli import main
from trainer.config import ModelConfig
from trainer.errors import UserFacingError
from trainer.models.loading import load_base_model
from trainer.tools.common import WeightedAdapter
from trainer.tools.merge import merge_into_base

BASE = "builtin:tiny-sd"


@pytest.fixture(scope="module")
def base():
    return load_base_model(ModelConfig(base=BASE))


@pytest.fixture(scope="module")
def adapters(base, tmp_path_factory):
    """Two kohya adapters with B ~ N(0, 0.1) (B = 0 would make every equality trivial), one of rank 4 on the
    attention layers and text encoder, one of rank 2 on the UNet only with another alpha."""
    out = tmp_path_factory.mktemp("adapters")
    model, cfg = lora_model(base, rank=4, alpha=2.0, seed=0)
    cfg.run.name = "one"
    one = export(model, cfg, out)[0].path
    model, cfg = lora_model(base, rank=2, alpha=1.0, te=False, seed=1)
    cfg.run.name = "two"
    two = export(model, cfg, out)[0].path
    return one, two


def _kohya_delta(path: Path, name: str) -> torch.Tensor:
    """ΔW of one module from the file by hand: alpha / rank · up @ down."""
    with safe_open(str(path), framework="pt") as f:
        down, up = f.get_tensor(f"{name}.lora_down.weight").float(), f.get_tensor(f"{name}.lora_up.weight").float()
        alpha = f.get_tensor(f"{name}.alpha").item()
    return alpha / down.shape[0] * (up.flatten(1) @ down.flatten(1))


def test_merge_to_diffusers_folder_equals_base_plus_weighted_adapters(base, adapters, tmp_path):
    one, two = adapters
    out = tmp_path / "merged"
    result = merge_into_base(BASE, [WeightedAdapter(one, 0.7), WeightedAdapter(two, -0.4)], out, "diffusers", "fp32")
    assert result.verified, result.message
    # The tool's check compares with diffusers' load_lora_weights + set_adapters; here one layer by hand too.
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    path = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    name = "lora_unet_" + path.replace(".", "_")
    want = base.unet.get_submodule(path).weight + 0.7 * _kohya_delta(one, name) - 0.4 * _kohya_delta(two, name)
    torch.testing.assert_close(pipe.unet.get_submodule(path).weight, want, rtol=0, atol=1e-6,
                               msg="merged weight is not W + 0.7 ΔW1 - 0.4 ΔW2")
    untouched = "conv_in"
    assert torch.equal(pipe.unet.get_submodule(untouched).weight, base.unet.get_submodule(untouched).weight), \
        "a layer no adapter changes must be saved exactly"


def test_merge_to_single_file_loads_in_our_loader_and_from_single_file(base, adapters, tmp_path):
    one, _ = adapters
    out = tmp_path / "merged.safetensors"
    result = merge_into_base(BASE, [WeightedAdapter(one, 1.0)], out, "single-file", "fp16")
    assert result.verified and "from_single_file" in result.message, result.message
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
        assert f.get_tensor(keys[0]).dtype == torch.float16, "saved dtype is not fp16"
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in keys), "not the original (LDM) layout"
    assert any(k.startswith("cond_stage_model.transformer.") for k in keys), "SD 1.x text encoder missing"
    assert any(k.startswith("first_stage_model.") for k in keys), "VAE missing"


def test_a_wrong_merge_fails_the_check(base, adapters, tmp_path, monkeypatch):
    """Break the merge (weight ignored) and the check must say so: it compares with diffusers, not with itself."""
    import trainer.tools.merge as merge

    real = merge.merged_weight

    def ignores_weight(plan, component, canonical):
        plan.layers[(component, canonical)] = [(a, 1.0) for a, _ in plan.layers[(component, canonical)]]
        return real(plan, component, canonical)

    monkeypatch.setattr(merge, "merged_weight", ignores_weight)
    with pytest.raises(UserFacingError, match="check failed.*differs from PEFT.s fused weight"):
        merge_into_base(BASE, [WeightedAdapter(adapters[0], 0.5)], tmp_path / "bad", "diffusers", "fp32")


def test_cli_merge_writes_events_and_never_overwrites(adapters, tmp_path, capsys):
    out, events = tmp_path / "m", tmp_path / "events.jsonl"
    assert main(["merge", BASE, f"{adapters[0]}:0.8", "--out", str(out), "--dtype", "fp32", "--events", str(events)]) == 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert {e["event"] for e in lines[:-1]} == {"progress"}, "everything before the end is progress"
    assert all({"done", "total", "what"} <= set(e) for e in lines[:-1])
    assert lines[-1]["event"] == "finished" and lines[-1]["ok"] is True and lines[-1]["output"] == str(out)
    # Output exists: refused without --overwrite, with a finished ok:false line for the UI.
    assert main(["merge", BASE, str(adapters[0]), "--out", str(out), "--events", str(events)]) == 2
    assert "already exists" in capsys.readouterr().err
    last = json.loads(events.read_text().splitlines()[-1])
    assert last["event"] == "finished" and last["ok"] is False and "--overwrite" in last["message"]


def test_bad_inputs_are_refused_by_name(base, adapters, tmp_path):
    not_adapter = tmp_path / "weights.safetensors"
    save_file({"foo.weight": torch.zeros(2, 2)}, str(not_adapter))
    with pytest.raises(UserFacingError, match=r"weights\.safetensors.*no LoRA weights"):
        merge_into_base(BASE, [WeightedAdapter(not_adapter)], tmp_path / "o1", "diffusers", "fp32")
    garbage = tmp_path / "broken.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserFacingError, match=r"broken\.safetensors.*not a readable"):
        merge_into_base(BASE, [WeightedAdapter(garbage)], tmp_path / "o2", "diffusers", "fp32")
    with pytest.raises(UserFacingError, match="not found"):
        merge_into_base(BASE, [WeightedAdapter(tmp_path / "missing.safetensors")], tmp_path / "o3", "diffusers", "fp32")
    with pytest.raises(UserFacingError, match="must be a .safetensors file"):
        merge_into_base(BASE, [WeightedAdapter(adapters[0])], tmp_path / "o4.ckpt", "single-file", "fp32")
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir()), "a refused merge must write nothing"


def test_sdxl_adapter_on_sd1_base_is_refused(tmp_path):
    sdxl = load_base_model(ModelConfig(base="builtin:tiny-sdxl"))
    model, cfg = lora_model(sdxl, rank=2)
    cfg.run.name = "xl"
    path = export(model, cfg, tmp_path)[0].path
    with pytest.raises(UserFacingError, match="adapter for SDXL but base model 'builtin:tiny-sd' is SD 1.x"):
        merge_into_base(BASE, [WeightedAdapter(path)], tmp_path / "o", "diffusers", "fp32")


def test_merge_into_sdxl_folder(tmp_path):
    """The two-text-encoder path: SDXL merge checked against diffusers' SDXL pipeline."""
    sdxl = load_base_model(ModelConfig(base="builtin:tiny-sdxl"))
    model, cfg = lora_model(sdxl, rank=2)
    cfg.run.name = "xl"
    path = export(model, cfg, tmp_path)[0].path
    result = merge_into_base("builtin:tiny-sdxl", [WeightedAdapter(path, 0.6)], tmp_path / "xl", "diffusers", "fp16")
    assert result.verified, result.message


def test_loha_merge_equals_the_trained_peft_model(base, tmp_path):
    """LoHa has no diffusers reader, so the tool's reference adds ΔW as ComfyUI does; here the merged model is
    compared with PEFT's own LoHa forward instead (the model the file was exported from)."""
    from trainer.config import Config
    from trainer.export.probe import probe_inputs, probe_outputs

    model, cfg = lora_model(  # PEFT's LoHa starts with hada_w2_b at zero
        base, network_type="loha", rank=2, alpha=Config().network.alpha, b_std=0.5, zero_factor="hada_w2_b"
    )
    cfg.run.name = "loha"
    path = export(model, cfg, tmp_path)[0].path
    result = merge_into_base(BASE, [WeightedAdapter(path)], tmp_path / "merged", "diffusers", "fp32")
    assert result.verified and "added as ComfyUI does" in result.message, result.message
    merged = load_base_model(ModelConfig(base=str(tmp_path / "merged")))
    probe = probe_inputs(base)
    for module in model.component_modules().values():
        module.eval()
    trained, got, plain = probe_outputs(model.component_modules(), probe), probe_outputs(merged.component_modules(), probe), \
        probe_outputs(base.component_modules(), probe)
    for name in trained:
        effect = (trained[name] - plain[name]).abs().max().item()
        assert effect > 1e-3, f"{name}: the LoHa must change the output for this test to mean anything"
        torch.testing.assert_close(got[name], trained[name], rtol=0, atol=1e-4 * effect + 1e-6,
                                   msg=f"{name}: merged LoHa differs from PEFT's LoHa forward")


def test_single_file_of_a_v_prediction_base_keeps_v_prediction(tmp_path):
    """The single file carries the ``v_pred`` marker our loader and ComfyUI read, so the merged model is not
    silently sampled as epsilon-prediction."""
    from trainer.models.single_file import load_single_file
    from trainer.tools.merge_check import _config_dir

    v_base = load_base_model(ModelConfig(base="builtin:tiny-sd-v"))
    model, cfg = lora_model(v_base, rank=2)
    cfg.run.name, cfg.model.base = "v", "builtin:tiny-sd-v"
    path = export(model, cfg, tmp_path)[0].path
    out = tmp_path / "merged-v.safetensors"
    result = merge_into_base("builtin:tiny-sd-v", [WeightedAdapter(path)], out, "single-file", "fp32")
    assert result.verified, result.message
    loaded = load_single_file(out, ModelConfig(base=str(out)), config_dir=_config_dir(v_base, tmp_path / "cfg"))
    assert v_base.prediction_type == loaded.prediction_type == "v_prediction"


def test_merge_reads_diffusers_format_adapters(base, tmp_path):
    """PEFT-keyed files (diffusers' own format) merge too, checked against diffusers loading the same file."""
    model, cfg = lora_model(base, rank=3, alpha=1.5, seed=3)
    cfg.run.name = "peftkeys"
    path = export(model, cfg, tmp_path, fmt="diffusers")[0].path
    result = merge_into_base(BASE, [WeightedAdapter(path, 0.9)], tmp_path / "merged", "diffusers", "fp32")
    assert result.verified and result.layers == 68, result.message
