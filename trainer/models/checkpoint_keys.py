"""What a single-file checkpoint is, from its tensor names and shapes alone. No torch.

``single_file.py`` applies these rules to the loaded tensors and the pre-flight check to the safetensors
header, so both say the same thing about a file. The model type comes from diffusers'
``infer_diffusers_model_type`` when loading; ``infer_model_type`` here is the part of that rule that
concerns Stable Diffusion UNet checkpoints (same marker keys, same order, same shape tests; a test holds
the two to agreement), so the UI process can use it without importing diffusers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from trainer.models.loading import ModelLoadError

FAMILIES = {"v1": "sd1", "v2": "sd2", "xl_base": "sdxl"}
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES = {
    "sd1": ["cond_stage_model.transformer."],
    "sd2": ["cond_stage_model.model."],
    "sdxl": ["conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."],
}
# diffusers.loaders.single_file_utils.CHECKPOINT_KEY_NAMES, the Stable Diffusion entries.
MARKERS = {
    "v2": UNET_PREFIX + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
    "xl_base": "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias",
    "xl_refiner": "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias",
    "upscale": UNET_PREFIX + "input_blocks.10.0.skip_connection.bias",
    "playground-v2-5": "edm_mean",
    "conv_in": UNET_PREFIX + "input_blocks.0.0.weight",  # diffusers calls it "inpainting": 9 input channels there
}
CONTROLNET_MARKERS = ("control_model.time_embed.0.weight", "controlnet_cond_embedding.conv_in.weight")


def infer_model_type(shapes: Mapping[str, Sequence[int]]) -> str:
    """diffusers' model type for an SD-family checkpoint (``v1``, ``v2``, ``xl_base``, ``inpainting``, ...).

    ``unknown`` where diffusers would go on to test other architectures (SD3, Flux, ...): none of them
    has an SD UNet input convolution.
    """
    conv_in, v2 = shapes.get(MARKERS["conv_in"]), shapes.get(MARKERS["v2"])
    channels = conv_in[1] if conv_in is not None and len(conv_in) > 1 else None
    is_v2 = v2 is not None and len(v2) > 0 and v2[-1] == 1024
    if channels == 9:
        return "inpainting_v2" if is_v2 else "xl_inpaint" if MARKERS["xl_base"] in shapes else "inpainting"
    if is_v2:
        return "v2"
    for model_type in ("playground-v2-5", "xl_base", "xl_refiner", "upscale"):
        if MARKERS[model_type] in shapes:
            return model_type
    if any(key in shapes for key in CONTROLNET_MARKERS):
        return "controlnet"
    if channels == 8:
        return "instruct-pix2pix"
    return "v1" if conv_in is not None else "unknown"


def reject_non_checkpoints(keys: Iterable[str], path: Path) -> None:
    """Refuse files that are no whole original-layout SD model: a LoRA, a single component, anything else."""
    keys = list(keys)
    if any(k.startswith(("lora_unet_", "lora_te")) or ".lora_down." in k or ".lora_A." in k for k in keys):
        raise ModelLoadError(f"`model.base` file {path} is a LoRA adapter, not a base model: set it as `network.init_from`")
    if any(k.startswith(UNET_PREFIX) for k in keys):
        return
    if any(k.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.")) for k in keys):
        what = "a diffusers-layout component (one UNet or VAE), not a whole model"
    else:
        what = f"no known Stable Diffusion architecture (first keys: {', '.join(sorted(keys)[:3])})"
    raise ModelLoadError(
        f"`model.base` file {path} is {what}. Use a single-file SD 1.x / 2.x / SDXL checkpoint, or a diffusers "
        "model folder (the one with model_index.json)."
    )


def family_of(model_type: str, path: Path) -> str:
    """``sd1`` / ``sd2`` / ``sdxl`` for a trainable model type; anything else is refused by name."""
    family = FAMILIES.get(model_type)
    if family is None:
        raise ModelLoadError(
            f"`model.base` file {path} is a {model_type!r} checkpoint; lora-studio trains SD 1.x, SD 2.x and "
            "SDXL base checkpoints (not inpainting, refiner, upscaler or other architectures)"
        )
    return family


def check_text_encoders(keys: Iterable[str], family: str, path: Path) -> None:
    keys = list(keys)
    for prefix in TEXT_PREFIXES[family]:
        if not any(k.startswith(prefix) for k in keys):
            raise ModelLoadError(
                f"`model.base` file {path} looks like {family} but has no text-encoder weights ({prefix}*): "
                "use a full checkpoint that contains the UNet, the VAE and the text encoder(s)"
            )


def has_vae(keys: Iterable[str]) -> bool:
    return any(k.startswith(VAE_PREFIX) for k in keys)
