"""``python -m trainer sample``: base/adapted image pairs from an adapter file, and clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from trainer.cli import main
from trainer.commands.sample import SampleOptions, sample_adapter
from trainer.config import Config
from trainer.errors import UserFacingError
from trainer.models.loading import ModelLoadError, load_base_model
from trainer.network import inject_lora


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """The same trained-looking adapter (B != 0, UNet and text encoder) in diffusers and kohya format."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    from trainer.export import kohya_state_dict

    folder = tmp_path_factory.mktemp("adapters")
    model = load_base_model(Config().model)
    inject_lora(model, Config().network, train_text_encoder=True)
    torch.manual_seed(3)
    for module in model.component_modules().values():
        for name, param in module.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT: "no config file, assuming the vocabulary was not modified"
        layers = {
            name: get_peft_model_state_dict(module) for name, module in model.component_modules().items()
        }
        kohya_tensors = kohya_state_dict(model, dtype=torch.float32)
    StableDiffusionPipeline.save_lora_weights(
        folder / "diffusers", unet_lora_layers=layers["unet"], text_encoder_lora_layers=layers["text_encoder"]
    )
    kohya = folder / "kohya.safetensors"
    save_file(kohya_tensors, kohya, metadata={"ss_sd_model_name": "builtin:tiny-sd"})
    return {"diffusers": folder / "diffusers" / "pytorch_lora_weights.safetensors", "kohya": kohya}


def options(adapter: Path, out: Path, **overrides) -> SampleOptions:
    values = {
        "prompts": ["zxq red circle"],
        "steps": 2,
        "width": 32,
        "height": 32,
        "out": out,
        "device": "cpu",
    }
    return SampleOptions(adapter=adapter, **{**values, **overrides})


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_compare_json_gives_base_and_adapted(adapters, tmp_path, capsys):
    argv = ["sample", str(adapters["diffusers"]), "--prompt", "zxq", "--prompt", "zxq blue", "--seed", "5"]
    argv += ["--steps", "2", "--width", "32", "--height", "24", "--compare", "--json", "--out", str(tmp_path)]
    argv += ["--device", "cpu"]
    assert main(argv) == 0
    images = json.loads(capsys.readouterr().out)["images"]
    assert [(i["prompt"], i["seed"], i["kind"]) for i in images] == [
        ("zxq", 5, "base"),
        ("zxq", 5, "adapted"),
        ("zxq blue", 6, "base"),
        ("zxq blue", 6, "adapted"),
    ]
    for image in images:
        assert Path(image["path"]).parent == tmp_path and Image.open(image["path"]).size == (32, 24)
    base, adapted = pixels(images[0]["path"]), pixels(images[1]["path"])
    assert np.abs(base - adapted).mean() > 1, "the adapter should visibly change the image"


def test_strength_zero_equals_base(adapters, tmp_path):
    images = sample_adapter(options(adapters["diffusers"], tmp_path, strength=0.0, compare=True))
    base, adapted = (pixels(i.path) for i in images)
    np.testing.assert_array_equal(adapted, base, err_msg="strength 0 must reproduce the base model exactly")
    half = sample_adapter(options(adapters["diffusers"], tmp_path, strength=0.5))[0]
    assert half.path != images[1].path, "a different strength must not overwrite the other image"


def test_kohya_file_matches_diffusers_file(adapters, tmp_path):
    from_diffusers = sample_adapter(options(adapters["diffusers"], tmp_path / "d"))[0]
    from_kohya = sample_adapter(options(adapters["kohya"], tmp_path / "k"))[0]
    # Same weights in two key layouts, both fp32: only summation-order noise may differ (< 1 grey level).
    assert np.abs(pixels(from_diffusers.path) - pixels(from_kohya.path)).max() <= 1


def test_guidance_defaults_to_the_base_models_own(adapters, tmp_path):
    """Without ``--guidance`` an adapter for builtin:shapes-sd samples at the model's guidance (3), what Try it
    shows; any other base at SD's 7.5; a given ``--guidance`` wins. Pixels, not the option, are compared."""
    from trainer.config import ModelConfig

    shapes_adapter = tmp_path / "shapes.safetensors"
    model = load_base_model(ModelConfig(base="builtin:shapes-sd"))
    inject_lora(model, Config().network, train_text_encoder=False)
    torch.manual_seed(4)
    for name, param in model.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    from trainer.export import kohya_state_dict

    save_file(kohya_state_dict(model, dtype=torch.float32), shapes_adapter, metadata={"ss_sd_model_name": "builtin:shapes-sd"})

    def drawn(adapter, out, **overrides):
        return pixels(sample_adapter(options(adapter, tmp_path / out, width=64, height=64, **overrides))[0].path)

    default, at_3, at_7_5 = (drawn(shapes_adapter, out, guidance=g) for out, g in (("d", None), ("3", 3.0), ("7", 7.5)))
    np.testing.assert_array_equal(default, at_3)
    assert np.abs(default - at_7_5).mean() > 1
    tiny_default, tiny_7_5 = (drawn(adapters["kohya"], out, guidance=g) for out, g in (("td", None), ("t7", 7.5)))
    np.testing.assert_array_equal(tiny_default, tiny_7_5)


def test_base_from_run_folder_config(adapters, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.toml").write_text('[model]\nbase = "/nowhere/sd15"\n')
    adapter = run_dir / "run.safetensors"
    adapter.write_bytes(adapters["kohya"].read_bytes())
    with pytest.raises(ModelLoadError, match="/nowhere/sd15"):
        sample_adapter(options(adapter, tmp_path / "out"))


def write_variant(tmp_path: Path, source: Path, name: str, edit, metadata=None) -> Path:
    path = tmp_path / name
    save_file(edit(load_file(source)), path, metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("name", "edit", "metadata", "message"),
    [
        (
            "renamed.safetensors",
            lambda sd: {k.replace("down_blocks.1", "down_blocks.7"): v for k, v in sd.items()},
            None,
            r"does not fit base model 'builtin:tiny-sd'.*only 52 of its 68 LoRA layers",
        ),
        (
            "shapes.safetensors",
            lambda sd: {
                k: torch.zeros(v.shape[0], 2 * v.shape[1]) if "unet" in k and "lora_A" in k else v
                for k, v in sd.items()
            },
            None,
            r"does not fit base model 'builtin:tiny-sd'; pass --base",
        ),
        (
            "incomplete.safetensors",
            lambda sd: {k: v for k, v in sd.items() if not k.endswith("out_proj.lora_B.weight")},
            None,
            r"incomplete: 68 lora_down/lora_A but 63 lora_up/lora_B",
        ),
        ("notlora.safetensors", lambda sd: {"weight": torch.zeros(2)}, None, r"holds no LoRA weights"),
        (
            "elsewhere.safetensors",
            lambda sd: sd,
            {"ss_sd_model_name": "/nowhere/sd15"},
            r"trained on '/nowhere/sd15'.*--base",
        ),
    ],
)
def test_bad_adapter_files(adapters, tmp_path, name, edit, metadata, message):
    path = write_variant(tmp_path, adapters["diffusers"], name, edit, metadata)
    with pytest.raises(UserFacingError, match=message):
        sample_adapter(options(path, tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "nothing is written for a bad adapter"


def test_bad_paths_and_options(tmp_path):
    with pytest.raises(UserFacingError, match="adapter file not found"):
        sample_adapter(options(tmp_path / "missing.safetensors", tmp_path))
    (tmp_path / "a.ckpt").write_bytes(b"x")
    with pytest.raises(UserFacingError, match="not a .safetensors file"):
        sample_adapter(options(tmp_path / "a.ckpt", tmp_path))
    (tmp_path / "broken.safetensors").write_bytes(b"not a header at all")
    with pytest.raises(UserFacingError, match="not a valid safetensors file"):
        sample_adapter(options(tmp_path / "broken.safetensors", tmp_path))
    with pytest.raises(
        UserFacingError,
        match="--steps must be a positive integer, got 0.*--width must be a positive multiple of 8, got 30",
    ):
        sample_adapter(options(tmp_path / "broken.safetensors", tmp_path, width=30, steps=0))


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope.safetensors"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "adapter file not found" in err and "Traceback" not in err
