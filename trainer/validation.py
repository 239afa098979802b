"""Validation loss: held-out images scored at fixed timesteps with fixed noise, so every number compares.

The training loss is dominated by the random timestep and noise of each step and looks flat whether or not the
adapter learns. Here every evaluation uses the same draws: ``validation.timesteps`` timesteps at the centres of
equal slices of the trained range (``timesteps.grid_timesteps``) and, per image, noise from a private generator
seeded with ``validation.seed`` — the same numbers at every checkpoint, in every run with that seed, and
before and after a resume. Held-out images are VAE-encoded once, with the posterior mean (no sampling).

The score is the plain mean squared error against the prediction target (ε or v) averaged over images and
timesteps, whatever ``training.loss_type`` and weighting are, so runs with different loss settings compare too.
It is computed with the weights that are exported (the EMA average when on) and never touches the training
RNG streams, modes or gradients (sd-scripts and ai-toolkit hold out a split the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.conditioning import TextEmbeddings, encode_text, unet_conditioning
from trainer.data.holdout import held_out_split
from trainer.diffusion_math import training_target
from trainer.errors import UserFacingError
from trainer.timesteps import TimestepRange, grid_timesteps


@dataclass
class ValidationResult:
    step: int
    loss: float
    timesteps: list[int]
    per_timestep: list[float]  # mean over images, one per timestep
    images: int

    def event_fields(self) -> dict[str, Any]:
        """The fields of a ``validation`` event (see trainer/events.py); a non-finite loss becomes None (JSON has no nan)."""

        def number(value: float) -> float | None:
            return round(value, 6) if math.isfinite(value) else None

        return {
            "step": self.step, "loss": number(self.loss), "timesteps": self.timesteps,
            "per_timestep": [number(v) for v in self.per_timestep], "images": self.images,
        }


def validation_split(cfg: Any, dataset: Any) -> tuple[Any, Any | None]:
    """The training dataset without its held-out images, and a dataset of the validation images (or None)."""
    from trainer.data.dataset import TrainDataset

    val = cfg.validation
    if val.fraction:
        kept, held = held_out_split(dataset.records, val.fraction, val.seed)
        train = TrainDataset(kept, dataset.cfg, dataset.seed, dataset.warnings, dataset.limits)
        return train, TrainDataset(held, dataset.cfg, dataset.seed, [], dataset.limits)
    if val.path.strip():
        return dataset, _folder_dataset(cfg)
    return dataset, None


def _folder_dataset(cfg: Any) -> Any:
    from trainer.data.buckets import assign_buckets
    from trainer.data.dataset import TrainDataset
    from trainer.data.scan import scan_folder

    ds = cfg.dataset
    scan = scan_folder(Path(cfg.validation.path), repeats=1, trigger=ds.trigger_word, class_word=ds.class_word)
    if scan.missing:
        raise UserFacingError(f"`validation.path` folder not found: {cfg.validation.path}")
    if scan.problems or not scan.records:
        reason = "; ".join(scan.problems[:3]) or "no usable images"
        raise UserFacingError(f"`validation.path` ({cfg.validation.path}): {reason}")
    limits = assign_buckets(scan.records, ds.resolution, ds.bucketing, ds.bucket_min, ds.bucket_max, ds.bucket_step,
                            ds.bucket_no_upscale)
    return TrainDataset(scan.records, ds, cfg.training.seed, [], limits)


@dataclass
class _Item:
    latents: torch.Tensor  # (1, C, h, w), CPU
    noise: torch.Tensor  # (K, C, h, w), CPU: this image's fixed noise, one per grid timestep
    caption: str
    sizes: dict[str, torch.Tensor]  # SDXL micro-conditioning, (K, 2) each


class Validator:
    """Scores the live model on the validation images; ``evaluate`` is deterministic for given weights."""

    def __init__(self, model: Any, dataset: Any, timestep_range: TimestepRange, count: int, seed: int):
        self.timesteps = grid_timesteps(count, timestep_range)  # (K,)
        self.items = [self._item(model, dataset, i, seed) for i in range(len(dataset.records))]
        self.last: ValidationResult | None = None

    def _item(self, model: Any, dataset: Any, i: int, seed: int) -> _Item:
        from trainer.data.buckets import crop_box

        vae = model.vae
        pixels = dataset.load_pixels(i).unsqueeze(0)  # (1, 3, H, W), centre crop
        with torch.no_grad():
            mean = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean.float().cpu()
        latents = (mean - model.latent_shift) * model.latent_scale  # (1, C, h, w)
        k = len(self.timesteps)
        generator = torch.Generator("cpu").manual_seed(seed * 100_003 + i)  # private: training RNG untouched
        noise = torch.randn((k, *latents.shape[1:]), generator=generator)  # (K, C, h, w)
        r = dataset.records[i]
        box = crop_box(r.width, r.height, r.bucket, None) if r.width else None
        bw, bh = r.bucket
        sizes = {
            "original_size": torch.tensor([[r.height, r.width]] * k),
            "crop_top_left": torch.tensor([[box.top, box.left] if box else [0, 0]] * k),
            "target_size": torch.tensor([[bh, bw]] * k),
        }
        return _Item(latents, noise, dataset.static_caption(i), sizes)

    def evaluate(self, model: Any, step: int, dtype: torch.dtype, autocast: Any) -> ValidationResult:
        """Mean squared error at the fixed timesteps and noise (cached per step: weights change only by steps).

        ``autocast`` makes the forward's autocast context (``accelerator.autocast``), as training runs it.
        """
        if self.last is not None and self.last.step == step:
            return self.last
        from accelerate.utils import extract_model_from_parallel

        from trainer.sampling import preserved_modes, preserved_rng_state

        unet = extract_model_from_parallel(model.unet, keep_torch_compile=False)
        device = next(unet.parameters()).device
        modules = [unet, *model.text_encoders]
        per_t = torch.zeros(len(self.timesteps))
        with preserved_rng_state(), preserved_modes(modules), torch.no_grad():
            for module in modules:
                module.eval()  # LoRA dropout off
            for item in self.items:
                per_t += self._score(model, unet, item, device, dtype, autocast).cpu()
        per_t /= len(self.items)
        self.last = ValidationResult(step, float(per_t.mean()), self.timesteps.tolist(), per_t.tolist(), len(self.items))
        return self.last

    def _score(self, model: Any, unet: Any, item: _Item, device: torch.device, dtype: torch.dtype, autocast: Any) -> torch.Tensor:
        k = len(self.timesteps)
        t = self.timesteps.to(device)
        latents = item.latents.to(device).expand(k, -1, -1, -1)  # (K, C, h, w)
        noise = item.noise.to(device)
        noisy = model.noise_scheduler.add_noise(latents, noise, t)
        with autocast():  # as the training forward runs: fp16/bf16 base weights beside fp32 LoRA weights
            text = encode_text(model, [item.caption], device)
            pooled = text.pooled.expand(k, -1) if text.pooled is not None else None
            text = TextEmbeddings(text.hidden_states.expand(k, -1, -1), pooled)
            cond = unet_conditioning(model, text, item.sizes, dtype)
            prediction = unet(noisy.to(dtype), t, **cond).sample
        target = training_target(model.noise_scheduler, latents, noise, t, model.prediction_type)
        return ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))  # (K,)


def run_validation(s: Any) -> ValidationResult | None:
    """Validate the session's model now (rank 0; once per step) and report it: event, log, trackers."""
    if s.validator is None:
        return None
    last = s.validator.last
    if last is not None and last.step == s.progress.step:
        return last
    from trainer import tracking
    from trainer.ema import inference_weights, lora_parameters

    with inference_weights(lora_parameters(s.trained), s.optimizer, s.ema):
        result = s.validator.evaluate(s.model, s.progress.step, s.weight_dtype, s.accelerator.autocast)
    s.events.emit("validation", **result.event_fields())
    s.log.info("validation loss %.6f at step %d", result.loss, result.step)
    scalars = {"validation/loss": result.loss}
    scalars.update({f"validation/loss_t{t}": v for t, v in zip(result.timesteps, result.per_timestep, strict=True)})
    tracking.log_scalars(s.accelerator, scalars, result.step)
    return result
