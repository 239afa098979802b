"""The diffusers folder of ``builtin:shapes-sd`` as it ships: trained parts in, fp16 safetensors out.

Kept apart from the recipe (``base_training``): what ships is the trained weights plus two decisions
about how others will use them, the latent scaling and a deterministic encoder (``pin_posterior_to_mean``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.shapes.architecture import noise_schedule

POSTERIOR_LOGVAR = -30.0  # diffusers' floor for the posterior's log-variance (std e^-15, about 3e-7)


def pin_posterior_to_mean(vae) -> None:
    """Make the encoder's posterior a point mass at its mean: log-variance ``POSTERIOR_LOGVAR`` everywhere.

    The UNet was trained on posterior means (``base_training.encode_dataset``), while LoRA trainers
    (sd-scripts, diffusers' examples, lora-studio) encode training images by *sampling* the posterior. This
    VAE's KL term left the posterior wide (std 0.58 against a spread of 1.25 in the means), so sampled latents
    carried noise the base had never seen, and the first run's adapters learned to draw that noise (textured
    backgrounds) rather than the new shape. Zeroing the log-variance rows of ``quant_conv`` and setting their
    bias leaves the means, and so the decoder and everything the base learned, unchanged.
    """
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:].zero_()
        vae.quant_conv.bias[channels:].fill_(POSTERIOR_LOGVAR)


def write_shipped_folder(out: Path, vae, unet, text_encoder, tokenizer, *, scaling_factor: float) -> None:
    """Write the pipeline folder atomically (fp16 safetensors; the builtin loader upcasts)."""
    from diffusers import StableDiffusionPipeline

    from trainer.atomic import atomic_dir

    vae.register_to_config(scaling_factor=scaling_factor)
    pin_posterior_to_mean(vae)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=noise_schedule(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(torch.float16)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
