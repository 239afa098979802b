"""Latent and text-embedding caches: encode once what never changes between epochs.

Latents are cacheable when an image's pixels never change (no random crop, no flip); text outputs
when the text encoder is frozen and captions are static (no shuffle, no dropout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer.atomic import write_with
from trainer.conditioning import TextEmbeddings, encode_text


def encode_latents(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """VAE-encode (B, 3, H, W) pixels in [-1, 1] to scaled latents (B, C, H/f, W/f)."""
    vae = model.vae
    pixels = pixels.to(vae.device, vae.dtype)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample()
    return ((latents - model.latent_shift) * model.latent_scale).float()


class LatentCache:
    """Latents per dataset record, in memory or as safetensors files keyed by image file and settings."""

    def __init__(
        self, model: Any, dataset: Any, mode: str, cache_dir: Path, seed: int, progress: Callable | None = None,
        check_stop: Callable[[], None] | None = None,
    ):
        """``check_stop`` is called before each image and may raise to stop (a user's Stop during caching)."""
        self.mode = mode
        self.latents: dict[int, torch.Tensor] = {}
        indices = range(len(dataset.records))
        for i in progress(indices, desc="caching latents") if progress else indices:
            if check_stop is not None:
                check_stop()
            self.latents[i] = self._load_or_encode(model, dataset, i, cache_dir, seed)

    def _load_or_encode(self, model: Any, dataset: Any, i: int, cache_dir: Path, seed: int) -> torch.Tensor:
        generator = torch.Generator(device="cpu").manual_seed(seed + i)
        if self.mode != "disk":
            return self._encode(model, dataset, i, generator)
        path = cache_dir / f"{self._key(model, dataset, i, seed)}.safetensors"
        if path.is_file():
            try:
                return load_file(path)["latents"]
            except Exception:  # a damaged cache file is re-made, never trusted
                path.unlink(missing_ok=True)
        latents = self._encode(model, dataset, i, generator)
        write_with(path, lambda tmp: save_file({"latents": latents.contiguous()}, tmp))
        return latents

    @staticmethod
    def _encode(model: Any, dataset: Any, i: int, generator: torch.Generator) -> torch.Tensor:
        # The generator lives on the CPU: sample the posterior there so the draw never depends on device.
        pixels = dataset.load_pixels(i).unsqueeze(0)
        vae = model.vae
        with torch.no_grad():
            dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32)
            latents = dist.mean.float() + dist.std.float() * noise.to(dist.mean.device)
        return ((latents - model.latent_shift) * model.latent_scale)[0].cpu()

    @staticmethod
    def _key(model: Any, dataset: Any, i: int, seed: int) -> str:
        record = dataset.records[i]
        stat = Path(record.path).stat()
        pixels_key = getattr(dataset, "pixels_key", lambda j: "")(i)
        raw = f"{Path(record.path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{pixels_key}|{model.name_or_path}|{seed}"
        return hashlib.sha1(raw.encode()).hexdigest()

    def batch(self, record_indices: list[int], device: torch.device) -> torch.Tensor:
        return torch.stack([self.latents[i] for i in record_indices]).to(device)


class TextCache:
    """Text-encoder outputs per distinct caption (CPU), computed once before training."""

    def __init__(self, model: Any, captions: list[str], device: torch.device, chunk: int = 16):
        self.by_caption: dict[str, TextEmbeddings] = {}
        unique = list(dict.fromkeys(captions))
        with torch.no_grad():
            for start in range(0, len(unique), chunk):
                part = unique[start : start + chunk]
                emb = encode_text(model, part, device).to(torch.device("cpu"))
                for j, caption in enumerate(part):
                    self.by_caption[caption] = emb.select(j)

    def batch(self, captions: list[str], device: torch.device) -> TextEmbeddings:
        return TextEmbeddings.cat([self.by_caption[c] for c in captions]).to(device)
