"""``info`` describes what is in a file; ``convert`` rewrites it in another format with ΔW per layer unchanged
(kohya ↔ diffusers, and PEFT folders that PeftModel loads), and refuses what would lose meaning."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import save_file
from test_export import export, lora_model

from trainer.cli import main
from trainer.config import Config, ModelConfig
from trainer.errors import UserFacingError
from trainer.export.formats import read_adapter_file, resolve_modules
from trainer.models.loading import load_base_model
from trainer.network import inject_lora
from trainer.tools.convert import convert
from trainer.tools.info import adapter_info
from trainer.tools.lora_files import module_delta

BASE = "builtin:tiny-sd"


@pytest.fixture(scope="module")
def base():
    return load_base_model(ModelConfig(base=BASE))


@pytest.fixture(scope="module")
def lora(base, tmp_path_factory):
    model, cfg = lora_model(base, rank=4, alpha=2.0)
    cfg.run.name = "subject"
    return export(model, cfg, tmp_path_factory.mktemp("info"))[0].path


def _deltas(path, base):
    modules, unknown = resolve_modules(read_adapter_file(path), base)
    assert not unknown, unknown[:3]
    return {(m.component, m.path): module_delta(m) for m in modules}


def test_info_describes_our_export(lora):
    info = adapter_info(lora)
    assert info.format == "kohya" and info.types == ["lora"]
    assert info.components == {"text_encoder": 20, "unet": 48}
    assert info.ranks == {"4/2": 68}, "every module rank 4, alpha 2"
    assert info.dtypes == ["F32"] and info.base_model.startswith("SD 1.x")
    assert info.training["steps"] == "7"
    assert any("ComfyUI" in c for c in info.clients) and any("diffusers" in c for c in info.clients)


def test_info_json_and_lycoris_type(base, tmp_path, capsys):
    model, cfg = copy.deepcopy(base), Config()
    cfg.network.type, cfg.network.rank = "loha", 2
    inject_lora(model, cfg.network)
    cfg.run.name = "loha"
    path = export(model, cfg, tmp_path)[0].path
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["types"] == ["loha"] and all(m["rank"] == 2 for m in info["modules"])
    assert not any(c.startswith("diffusers") for c in info["clients"]), "diffusers has no LoHa reader for SD"
    with pytest.raises(UserFacingError, match="is a loha adapter: convert handles plain LoRA"):
        convert(path, tmp_path / "d.safetensors", "diffusers", base=BASE)


def test_info_refuses_a_non_adapter_file(tmp_path, capsys):
    path = tmp_path / "model.safetensors"
    save_file({"conv_in.weight": torch.zeros(1)}, str(path))
    assert main(["info", str(path)]) == 2
    assert "no LoRA weights found" in capsys.readouterr().err


def test_convert_kohya_diffusers_kohya_keeps_every_delta(base, lora, tmp_path):
    want = _deltas(lora, base)
    diffusers_file = tmp_path / "d.safetensors"
    convert(lora, diffusers_file, "diffusers")  # no --base: the builtin the file records (ss_sd_model_name)
    assert read_adapter_file(diffusers_file).format == "diffusers"
    back = tmp_path / "k.safetensors"
    convert(diffusers_file, back, "kohya", base=BASE)
    for step in (diffusers_file, back):
        got = _deltas(step, base)
        assert set(got) == set(want)
        for key, delta in want.items():
            torch.testing.assert_close(got[key], delta, rtol=0, atol=1e-7, msg=f"{step.name}: {'.'.join(key)} changed")


def test_convert_to_peft_loads_in_peft(base, lora, tmp_path):
    """The PEFT folder goes through PeftModel.from_pretrained; its merged weights equal W + ΔW of the input."""
    from peft import PeftModel

    out = tmp_path / "peft"
    convert(lora, out, "peft", base=BASE, dtype="fp32")
    # A deep copy: PEFT merges into the base weights in place.
    unet = PeftModel.from_pretrained(copy.deepcopy(base.unet), out / "unet").merge_and_unload()
    want = _deltas(lora, base)
    for (component, path), delta in want.items():
        if component != "unet":
            continue
        merged = unet.get_submodule(path).weight
        torch.testing.assert_close(merged - base.unet.get_submodule(path).weight, delta, rtol=0, atol=1e-6,
                                   msg=f"PEFT's merge of {path} is not W + ΔW")


def test_convert_refuses_same_format_and_existing_output(lora, tmp_path):
    with pytest.raises(UserFacingError, match="already is a kohya file"):
        convert(lora, tmp_path / "x.safetensors", "kohya", base=BASE)
    with pytest.raises(UserFacingError, match="already exists"):
        convert(lora, lora, "diffusers", base=BASE)
