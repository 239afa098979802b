"""Training has the effect it is for: samples with the trigger word move toward the training data.

A short run on sample_data/ (red disks on blue) with the builtin tiny model, then the exported adapter
goes through the ``sample`` command's loading path (``load_adapter`` into a diffusers pipeline, adapter
disabled for the base images, enabled for the adapted ones, same seeds), as the UI's try-it panel does.

Where the distance is measured: the builtin VAE has random weights, so its decoder paints nearly the
same image whatever latent it gets, and pixels cannot show what the UNet learnt. The UNet's own space,
the scaled VAE latents the trainer fits, can: samples are taken with ``output_type="latent"`` and
compared with the training images' latents. Only the LoRA-adapted attention layers (16x16 and mid
block) can change the UNet in a short run, so what moves is the coarse content. The measure is the
latent "mean colour": the per-channel mean of the generated set against that of the training set.
Averaging over the set matters: the tiny UNet does not learn to denoise in 60 steps, so each sample
keeps noise whose channel means scatter by about 0.3 around the set's; one sample's mean colour is
as much seed as model, the mean over several seeds is the model's. Per-sample distances are printed
and most seeds must move closer too.

A random-weight VAE encodes any natural image to nearly the same latent statistics, so this shows that
samples move toward the training latents, not that they turn into red disks rather than another
subject; that needs a real VAE. Measured controls (same seeds): an untrained adapter gives a ratio of
1.0, the trained one at strength -1 about 1.4, adapters with random B of the trained one's scale
0.9 to 1.2; the trained adapter 0.4 to 0.5 over three training seeds.
"""

from __future__ import annotations

import pytest
import torch

from trainer.commands.sample import load_adapter, open_adapter
from trainer.data import build_train_dataset
from trainer.models.loading import load_base_model
from trainer.sampling import build_pipeline, latent_generator
from trainer.train import train

NUM_SEEDS = 8
SAMPLING_STEPS = 10
# The adapted set's distance must be at most this fraction of the base set's (>= 20% closer).
MAX_RATIO = 0.8


def channel_means(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C): each latent's per-channel mean, the latent analogue of mean colour."""
    return latents.float().mean(dim=(2, 3))


def rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).mean(-1).sqrt()


def training_latents(model, cfg) -> torch.Tensor:
    """The training images exactly as the trainer preprocesses them, VAE-encoded (posterior mean)."""
    dataset = build_train_dataset(cfg.dataset, seed=cfg.training.seed)
    pixels = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
    with torch.no_grad():
        mean = model.vae.encode(pixels).latent_dist.mean
    return (mean - model.latent_shift) * model.latent_scale


def sample_latents(pipe, cfg, prompt: str) -> torch.Tensor:
    """NUM_SEEDS samples of ``prompt``, seeds ``sampling.seed + i``, with the preview sampler and CFG."""
    generators = [latent_generator(cfg.sampling.seed + i) for i in range(NUM_SEEDS)]
    with torch.no_grad():
        return pipe(
            prompt,
            num_images_per_prompt=NUM_SEEDS,
            num_inference_steps=SAMPLING_STEPS,
            guidance_scale=cfg.sampling.guidance_scale,
            width=cfg.dataset.resolution,
            height=cfg.dataset.resolution,
            generator=generators,
            output_type="latent",
        ).images


@pytest.mark.slow
def test_trigger_word_samples_move_toward_training_data(make_config):
    cfg = make_config(
        "effect", training__max_steps=60, training__batch_size=4, optimizer__learning_rate=3e-2,
        network__unet_targets="kohya",
    )
    result = train(cfg, show_progress=False)
    assert result.status == "completed" and result.adapter_paths

    model = load_base_model(cfg.model)
    data = channel_means(training_latents(model, cfg))
    pipe = build_pipeline(model, cfg.sampling.sampler)
    load_adapter(pipe, open_adapter(result.adapter_paths[0]), cfg.model.base, strength=1.0)
    prompt = cfg.dataset.trigger_word
    pipe.disable_lora()
    base = channel_means(sample_latents(pipe, cfg, prompt))
    pipe.enable_lora()
    adapted = channel_means(sample_latents(pipe, cfg, prompt))

    base_set, adapted_set = rms(base.mean(0), data.mean(0)).item(), rms(adapted.mean(0), data.mean(0)).item()
    ratio = adapted_set / base_set
    # Per sample: distance to the nearest training image's mean colour.
    base_each = rms(base[:, None], data[None]).min(dim=1).values
    adapted_each = rms(adapted[:, None], data[None]).min(dim=1).values
    closer = int((adapted_each < base_each).sum())
    print(
        f"\nlatent mean colour vs the training set's, prompt {prompt!r}, {NUM_SEEDS} seeds from "
        f"{cfg.sampling.seed}, {cfg.sampling.sampler} {SAMPLING_STEPS} steps:\n"
        f"  training set   {[round(v, 3) for v in data.mean(0).tolist()]}\n"
        f"  base set       {[round(v, 3) for v in base.mean(0).tolist()]}  distance {base_set:.4f}\n"
        f"  adapted set    {[round(v, 3) for v in adapted.mean(0).tolist()]}  distance {adapted_set:.4f}\n"
        f"  ratio          {ratio:.3f} (must be <= {MAX_RATIO})\n"
        f"  per sample, to the nearest training image: base {[round(v, 3) for v in base_each.tolist()]}\n"
        f"                                          adapted {[round(v, 3) for v in adapted_each.tolist()]}\n"
        f"  samples closer: {closer}/{NUM_SEEDS}"
    )
    assert ratio <= MAX_RATIO, (
        f"adapted samples should be >= {1 - MAX_RATIO:.0%} closer to the training data than the base "
        f"model's: base {base_set:.4f}, adapted {adapted_set:.4f} (ratio {ratio:.3f})"
    )
    assert closer >= NUM_SEEDS * 3 // 4, f"only {closer} of {NUM_SEEDS} samples moved closer to the training data"
