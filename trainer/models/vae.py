"""A separate VAE (``model.vae``) in place of the base model's own, e.g. the fp16-fix SDXL VAE.

Accepts a diffusers VAE folder (``config.json`` + weights, or a model folder with ``vae/``) or one
``.safetensors`` file in either the original (``encoder.down.0...``, optionally ``first_stage_model.``-prefixed)
or the diffusers layout. A single file has no config, so the family's shipped VAE config supplies it (SDXL's
carries SDXL's latent scaling factor 0.13025, SD 1.x/2.x's 0.18215).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).parent / "configs"


def load_vae(source: str, family: str, dtype: Any = None) -> Any:
    """Load the VAE named by ``model.vae`` for a base model of ``family``."""
    import torch
    from diffusers import AutoencoderKL

    from trainer.models.loading import ModelLoadError, refuse_pickled_weights

    path = Path(source).expanduser()
    dtype = dtype or torch.float32
    try:
        if path.is_dir():
            sub = "vae" if (path / "vae" / "config.json").is_file() else None
            if not (path / (sub or "") / "config.json").is_file():
                raise ModelLoadError(f"`model.vae` folder {path} has no config.json: point it at a diffusers VAE folder")
            refuse_pickled_weights(path, (sub or "",), "model.vae")
            return AutoencoderKL.from_pretrained(path, subfolder=sub, torch_dtype=dtype, local_files_only=True,
                                                 use_safetensors=True)
        if not path.is_file():
            raise ModelLoadError(f"`model.vae` not found: {path}")
        from trainer.models.single_file import read_checkpoint

        state = read_checkpoint(path, setting="model.vae").tensors
        config = CONFIGS / ("sdxl" if family == "sdxl" else "sd1")
        vae = AutoencoderKL.from_single_file(state, config=str(config), subfolder="vae", local_files_only=True, torch_dtype=dtype)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not load the VAE in `model.vae` ({path}): {type(err).__name__}: {err}") from None
    missing = [n for n, p in vae.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(
            f"`model.vae` file {path} is not a Stable Diffusion VAE: {len(missing)} weights are missing "
            f"(first: {missing[0]})"
        )
    return vae
