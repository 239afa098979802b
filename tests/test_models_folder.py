"""Local diffusers folders that cannot be used: a broken model_index.json, pickled (.bin) weights."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from trainer.config import Config, ModelConfig, dumps_config
from trainer.models.builtin import builtin_model_path
from trainer.models.loading import ModelLoadError, load_base_model
from trainer.models.vae import load_vae


@pytest.fixture(scope="module")
def pickled_model(tmp_path_factory):
    """builtin:tiny-sd re-saved the pre-safetensors way: every weights file a pickle."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    src = builtin_model_path("builtin:tiny-sd")
    dst = tmp_path_factory.mktemp("pickled") / "tiny-sd-bin"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
    for sub, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        cls.from_pretrained(src, subfolder=sub).save_pretrained(dst / sub, safe_serialization=False)
    # transformers 5 writes safetensors whatever safe_serialization says; torch.save is what
    # save_pretrained(safe_serialization=False) used to write.
    torch.save(load_file(src / "text_encoder" / "model.safetensors"), dst / "text_encoder" / "pytorch_model.bin")
    assert not list(dst.rglob("*.safetensors")) and len(list(dst.rglob("*.bin"))) == 3
    return dst


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything calls torch.load (the only way .bin weights are read)."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[0] if args else kwargs)
        raise AssertionError(f"torch.load was called on {calls[-1]}: a pickle was loaded")

    monkeypatch.setattr(torch, "load", refuse)
    return calls


def test_pickled_folder_is_refused_before_any_pickle_is_loaded(pickled_model, no_unpickling):
    with pytest.raises(ModelLoadError) as info:
        load_base_model(ModelConfig(base=str(pickled_model)))
    message = str(info.value)
    assert f"`model.base` {pickled_model}" in message
    assert str(pickled_model / "unet" / "diffusion_pytorch_model.bin") in message
    assert str(pickled_model / "text_encoder" / "pytorch_model.bin") in message
    assert "only loads safetensors weights" in message and "safe_serialization=True" in message
    assert "weights_only" not in message
    assert no_unpickling == []


def test_one_pickled_component_is_enough_to_refuse(pickled_model, tmp_path, no_unpickling):
    # unet, text encoder as safetensors (the builtin's own); only the VAE left as a pickle.
    mixed = tmp_path / "mixed"
    shutil.copytree(builtin_model_path("builtin:tiny-sd"), mixed)
    shutil.rmtree(mixed / "vae")
    shutil.copytree(pickled_model / "vae", mixed / "vae")
    with pytest.raises(ModelLoadError, match="only loads safetensors") as info:
        load_base_model(ModelConfig(base=str(mixed)))
    assert str(mixed / "vae" / "diffusion_pytorch_model.bin") in str(info.value)
    assert str(mixed / "unet") not in str(info.value), "only the pickled component is named"


def test_pickled_vae_folder_is_refused(pickled_model, no_unpickling):
    with pytest.raises(ModelLoadError, match=r"`model\.vae` .*only loads safetensors"):
        load_vae(str(pickled_model / "vae"), "sd1")
    assert no_unpickling == []


def test_cli_names_the_folder_and_never_suggests_weights_only_false(pickled_model, tmp_path):
    cfg = Config()
    cfg.model.base = str(pickled_model)
    cfg.run.output_dir = str(tmp_path / "runs")
    cfg.training.device = "cpu"
    path = tmp_path / "c.toml"
    path.write_text(dumps_config(cfg))
    out = subprocess.run([sys.executable, "-m", "trainer", "train", str(path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    assert "error: `model.base` " + str(pickled_model) in out.stderr
    assert "only loads safetensors weights from model folders" in out.stderr
    assert "Traceback" not in out.stderr and "weights_only" not in out.stderr + out.stdout


@pytest.mark.parametrize("text", ['{"_class_name": "StableDiffusionPipeline",', "", "[1, 2]"])
def test_malformed_model_index_names_the_file(tmp_path, text):
    folder = tmp_path / "model"
    shutil.copytree(builtin_model_path("builtin:tiny-sd"), folder)
    (folder / "model_index.json").write_text(text)
    with pytest.raises(ModelLoadError) as info:
        load_base_model(ModelConfig(base=str(folder)))
    message = str(info.value)
    assert f"`model.base`: {folder / 'model_index.json'}" in message
    assert ("not valid JSON" in message) if text != "[1, 2]" else ("must hold a JSON object" in message)
