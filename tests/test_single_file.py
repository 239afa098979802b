"""Single-file checkpoints: detection from keys, and clear errors for files that are not what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from trainer.config import Config, ModelConfig, validate
from trainer.models.loading import ModelLoadError, load_base_model
from trainer.models.single_file import SD2_V_PROBE, Checkpoint, detect_checkpoint, read_checkpoint

U = "model.diffusion_model."


def _sd1() -> dict[str, torch.Tensor]:
    # Just the keys (and the shapes) detection looks at; loading is covered by the slow round trip.
    return {U + "input_blocks.0.0.weight": torch.zeros(8, 4, 1, 1), U + "output_blocks.11.0.skip_connection.weight": torch.zeros(1),
            "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1), "first_stage_model.x": torch.zeros(1)}


def _sd2(bias_std: float = 0.0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {U + "input_blocks.0.0.weight": torch.zeros(8, 4, 1, 1), U + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight":
            torch.zeros(8, 1024), "cond_stage_model.model.ln_final.weight": torch.zeros(1), "first_stage_model.x": torch.zeros(1),
            SD2_V_PROBE: torch.randn(320) * bias_std}


def _sdxl() -> dict[str, torch.Tensor]:
    return {U + "input_blocks.0.0.weight": torch.zeros(8, 4, 1, 1), "conditioner.embedders.0.transformer.text_model.x": torch.zeros(1),
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(1), "first_stage_model.x": torch.zeros(1)}


def _detect(state, path="m.safetensors", step=None):
    return detect_checkpoint(Checkpoint(Path(path), state, step))


def test_family_and_prediction_type_from_keys(tmp_path):
    assert (_detect(_sd1()).family, _detect(_sd1()).prediction_type) == ("sd1", "epsilon")
    assert (_detect(_sdxl()).family, _detect(_sdxl()).prediction_type) == ("sdxl", "epsilon")
    v = _detect(_sd2(bias_std=0.2))
    assert (v.family, v.prediction_type) == ("sd2", "v_prediction"), v.prediction_reason
    assert _detect(_sd2(bias_std=0.01)).prediction_type == "epsilon", "SD 2.x-base has small norm1 biases"
    assert _detect(_sd2(bias_std=0.2), step=875000).prediction_type == "epsilon", "global_step 875000 is SD 2.x-base"
    marked = _detect({**_sdxl(), "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])})
    assert (marked.prediction_type, marked.zero_terminal_snr) == ("v_prediction", True)
    (tmp_path / "m.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert _detect(_sd1(), path=tmp_path / "m.safetensors").prediction_type == "v_prediction", "A1111 yaml beside the file"


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(1)}, "LoRA adapter"),
        ({"conv_in.weight": torch.zeros(1), "down_blocks.0.x": torch.zeros(1)}, "diffusers-layout component"),
        ({"foo.bar": torch.zeros(1)}, "no known Stable Diffusion architecture"),
        ({**_sd1(), U + "input_blocks.0.0.weight": torch.zeros(8, 9, 1, 1)}, "'inpainting'"),
        ({k: v for k, v in _sdxl().items() if "embedders.1" not in k}, "no text-encoder weights"),
    ],
)
def test_unknown_architectures_are_named(state, message):
    with pytest.raises(ModelLoadError, match=message):
        _detect(state)


def test_checkpoint_without_vae_needs_model_vae(tmp_path):
    path = tmp_path / "novae.safetensors"
    save_file({k: v for k, v in _sd1().items() if not k.startswith("first_stage")}, path)
    with pytest.raises(ModelLoadError, match="model.vae"):
        load_base_model(ModelConfig(base=str(path)))


def test_truncated_and_garbage_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.arange(1000, dtype=torch.float32)}, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_checkpoint(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match="truncated or not a safetensors file"):
        load_base_model(ModelConfig(base=str(junk)))


class Payload:
    """Stands for arbitrary pickled code: weights_only loading must refuse it."""


def test_ckpt_pickles_are_refused_and_plain_ones_load(tmp_path):
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _sd1(), "payload": Payload()}, evil)
    with pytest.raises(ModelLoadError, match="refused.*weights_only=True"):
        read_checkpoint(evil)
    plain = tmp_path / "plain.ckpt"
    torch.save({"global_step": 875000, "state_dict": _sd2(bias_std=0.2)}, plain)
    ckpt = read_checkpoint(plain)
    assert ckpt.global_step == 875000 and SD2_V_PROBE in ckpt.tensors
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(plain.read_bytes()[:-200])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_checkpoint(cut)


def test_shipped_clip_tokenizer_matches_openai_ids():
    from trainer.models.clip_tokenizer import load_clip_tokenizer

    tok = load_clip_tokenizer("clip_l")
    assert len(tok) == 49408
    # The ids every CLIP-L user knows; they prove vocab.json and merges.txt equal the hub files' order.
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert load_clip_tokenizer("open_clip").pad_token_id == 0, "OpenCLIP tokenizers pad with `!` (id 0)"


def test_model_field_validation(tmp_path):
    cfg = Config()
    cfg.model.vae = str(tmp_path / "missing.safetensors")
    cfg.model.tokenizer = str(tmp_path)
    cfg.model.zero_terminal_snr = True
    cfg.model.prediction_type = "epsilon"
    problems = "\n".join(validate(cfg))
    for expected in ("`model.vae` file not found", "`model.tokenizer` must be a folder", "`model.zero_terminal_snr` needs v-prediction"):
        assert expected in problems, problems
