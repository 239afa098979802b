"""Single-file checkpoints (SD 1.x, SD 2.x, SDXL) loaded fully offline.

diffusers' ``from_single_file`` converts original-layout ("LDM") weights, but when it is not given a config it
fetches one from the hub (``fetch_diffusers_config``) and the CLIP tokenizers always come from the hub. Here
every config is a small JSON file shipped in ``configs/<family>/`` (copies of the diffusers model repos'
architecture configs), the tokenizers are derived from the shipped CLIP vocabulary (``clip_tokenizer.py``),
and every call passes ``local_files_only=True``: no code path can reach the network.

Detection (sd-scripts and ComfyUI look at the same evidence):
- family: diffusers' ``infer_diffusers_model_type`` on the keys (``v1``, ``v2``, ``xl_base``);
- prediction type: a ``v_pred`` marker key (ComfyUI/NoobAI convention; ``ztsnr`` adds zero terminal SNR), an
  A1111-style ``<name>.yaml`` beside the file with ``parameterization: "v"``, a ``.ckpt``'s ``global_step``
  (875000 is SD 2.x-base, the rule of diffusers' original converter), and for SD 2.x ComfyUI's heuristic
  (v-models have ``output_blocks.11.1...norm1.bias`` with std > 0.09). ``model.prediction_type`` overrides it.
"""

from __future__ import annotations

import os
import pickle
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.config import ModelConfig
from trainer.models.checkpoint_keys import UNET_PREFIX, VAE_PREFIX, check_text_encoders, family_of, has_vae
from trainer.models.checkpoint_keys import reject_non_checkpoints as _reject_non_checkpoints
from trainer.models.loading import BaseModel, ModelLoadError, assemble_base_model

CONFIGS = Path(__file__).parent / "configs"
SD2_V_PROBE = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_STD = 0.09  # ComfyUI supported_models.SD20.model_type


@dataclass
class Checkpoint:
    """A checkpoint's tensors plus the non-tensor entries a ``.ckpt`` may carry (``global_step``)."""

    path: Path
    tensors: dict[str, torch.Tensor]
    global_step: int | None = None


@dataclass
class CheckpointInfo:
    """What a checkpoint is, and why we think so (``prediction_reason`` ends up in ``BaseModel.extra``)."""

    family: str
    model_type: str
    prediction_type: str
    prediction_reason: str
    zero_terminal_snr: bool = False
    has_vae: bool = True


def read_checkpoint(path: Path, setting: str = "model.base") -> Checkpoint:
    """Read a .safetensors, or a .ckpt/.pt/.pth/.bin with ``torch.load(weights_only=True)``: never run pickled code."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        tensors, step = _read_safetensors(path, setting), None
    else:
        tensors, step = _read_pickle(path, setting)
    if not tensors:
        raise ModelLoadError(f"`{setting}` file {path} holds no weights")
    return Checkpoint(path, tensors, step)


def _read_safetensors(path: Path, setting: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
    header_len = int.from_bytes(head, "little") if len(head) == 8 else None
    if header_len is None or 8 + header_len > size:
        raise ModelLoadError(
            f"`{setting}` file {path} is truncated or not a safetensors file ({size} bytes, shorter than its own "
            "header says): download it again"
        )
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        hint = "truncated (download it again)" if "incomplete" in str(err).lower() else "not a valid safetensors file"
        raise ModelLoadError(f"`{setting}` file {path} is {hint}: {err}") from None


def _read_pickle(path: Path, setting: str) -> tuple[dict[str, torch.Tensor], int | None]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"`{setting}` file {path} was refused: it contains pickled Python objects that could run code when "
            f"loaded ({first[:200]}). lora-studio only loads .ckpt files with torch.load(weights_only=True). "
            "Use a .safetensors version of this model, or convert it with a tool you trust."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise ModelLoadError(
            f"`{setting}` file {path} could not be read; it is probably truncated (download it again): "
            f"{type(err).__name__}: {str(err)[:200]}"
        ) from None
    step = obj.get("global_step") if isinstance(obj, dict) else None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"`{setting}` file {path} holds a {type(obj).__name__}, not a state dict of weights")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return tensors, step if isinstance(step, int) else None


def detect_checkpoint(ckpt: Checkpoint) -> CheckpointInfo:
    """Family, prediction type and zero-SNR marker of an original-layout checkpoint, from its keys."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    state, path = ckpt.tensors, ckpt.path
    # The key rules live in checkpoint_keys (torch-free) so the pre-flight check applies them to a header.
    _reject_non_checkpoints(state, path)
    model_type = infer_diffusers_model_type(state)
    family = family_of(model_type, path)
    check_text_encoders(state, family, path)
    prediction, reason, ztsnr = _detect_prediction(ckpt, family)
    return CheckpointInfo(family, model_type, prediction, reason, zero_terminal_snr=ztsnr, has_vae=has_vae(state))


def _detect_prediction(ckpt: Checkpoint, family: str) -> tuple[str, str, bool]:
    state = ckpt.tensors
    ztsnr = "ztsnr" in state
    if "v_pred" in state:
        return "v_prediction", "checkpoint key `v_pred`", ztsnr
    yaml_file = ckpt.path.with_suffix(".yaml")
    if yaml_file.is_file():
        text = yaml_file.read_text(encoding="utf-8", errors="replace")
        v = re.search(r"^\s*parameterization:\s*['\"]?v['\"]?\s*$", text, re.MULTILINE)
        return ("v_prediction" if v else "epsilon"), f"{yaml_file.name} parameterization", ztsnr
    if family != "sd2":
        return "epsilon", f"{family} default", ztsnr
    if ckpt.global_step is not None:
        v = ckpt.global_step != 875000
        return ("v_prediction" if v else "epsilon"), f"global_step {ckpt.global_step}", ztsnr
    probe = state.get(SD2_V_PROBE)
    if probe is not None:
        std = float(probe.float().std(unbiased=False))
        v = std > SD2_V_STD
        return ("v_prediction" if v else "epsilon"), f"{SD2_V_PROBE.split('.', 2)[2]} std {std:.3f} vs {SD2_V_STD}", ztsnr
    return "epsilon", "sd2 default (no evidence of v-prediction)", ztsnr


@contextmanager
def _offline():
    """Belt and braces: every call below is local_files_only, and the hub is told it is offline too."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({k: "1" for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_single_file(path: Path, cfg: ModelConfig, dtype: Any = None, config_dir: Path | None = None) -> BaseModel:
    """Load a single-file checkpoint into a ``BaseModel``, offline.

    ``config_dir``: a diffusers-style folder of component configs to build the architecture from instead
    of the shipped full-size ones (``merge --format single-file`` checks a merge of a tiny builtin this way).
    """
    ckpt = read_checkpoint(Path(path))
    info = detect_checkpoint(ckpt)
    if not info.has_vae and not cfg.vae:
        raise ModelLoadError(
            f"`model.base` file {path} has no VAE weights ({VAE_PREFIX}*): set `model.vae` to a VAE file or folder"
        )
    with _offline():
        parts = _load_components(ckpt.tensors, info, cfg, dtype or torch.float32, config_dir)
    del ckpt
    extra = {
        "single_file": str(path),
        "model_type": info.model_type,
        "prediction_type_source": info.prediction_reason,
        "zero_terminal_snr_source": "checkpoint key `ztsnr`" if info.zero_terminal_snr else "",
    }
    return assemble_base_model(
        info.family, *parts, cfg, source="file", name_or_path=cfg.base, dtype=dtype,
        extra=extra, zero_terminal_snr=info.zero_terminal_snr,
    )


def _load_components(
    state: dict[str, torch.Tensor], info: CheckpointInfo, cfg: ModelConfig, dtype: Any, config_dir: Path | None = None
) -> tuple:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from trainer.models.clip_tokenizer import load_clip_tokenizer

    config = str(config_dir or CONFIGS / info.family)
    local: dict[str, Any] = {"config": config, "local_files_only": True, "torch_dtype": dtype}
    unet_kwargs: dict[str, Any] = {}
    if info.family == "sd2":
        # 768-px v-models: 96x96 latents, attention upcast as in stabilityai/stable-diffusion-2-1.
        v = info.prediction_type == "v_prediction"
        unet_kwargs = {"sample_size": 96 if v else 64, "upcast_attention": v}
    try:
        unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **local, **unet_kwargs)
        _check_complete(unet, "UNet", info)
        vae = None  # without one, `model.vae` is required and assemble_base_model loads it
        if info.has_vae:
            vae = AutoencoderKL.from_single_file(state, subfolder="vae", **local)
            _check_complete(vae, "VAE", info)
        encoders = [(CLIPTextModel, "text_encoder")]
        if info.family == "sdxl":
            encoders.append((CLIPTextModelWithProjection, "text_encoder_2"))
        text_encoders = []
        for cls, sub in encoders:
            te = create_diffusers_clip_model_from_ldm(cls, state, subfolder=sub, **local)
            _check_complete(te, sub, info)
            text_encoders.append(te)
    except ModelLoadError:
        raise
    except (ValueError, KeyError, RuntimeError, OSError) as err:
        raise ModelLoadError(
            f"`model.base` {cfg.base}: the weights do not fit the {info.family} architecture "
            f"({type(err).__name__}: {str(err)[:300]}); the file may be damaged or a variant lora-studio does not know"
        ) from None
    kinds = {"sd1": ["clip_l"], "sd2": ["open_clip"], "sdxl": ["clip_l", "open_clip"]}[info.family]
    tokenizers = [load_clip_tokenizer(kind, cfg.tokenizer) for kind in kinds]
    scheduler = DDPMScheduler.from_pretrained(config, subfolder="scheduler", local_files_only=True)
    scheduler.register_to_config(prediction_type=info.prediction_type)
    return unet, vae, text_encoders, tokenizers, scheduler


def _check_complete(module: torch.nn.Module, name: str, info: CheckpointInfo) -> None:
    """``from_single_file`` leaves weights it did not find on the meta device instead of failing."""
    missing = [n for n, p in module.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(
            f"`model.base` is missing {len(missing)} {name} weights for a {info.family} model (first: {missing[0]}): "
            "the file is incomplete or a variant lora-studio does not know"
        )

