"""Train ``builtin:shapes-sd`` from nothing: the recipe behind the weights that ship in ``trainer/models/shapes_sd``.

``python -m trainer.shapes.base_training --work DIR [--out trainer/models/shapes_sd]``

Four stages, each resumable (kill it at any point; the same command continues where it stopped):

1. a VAE (3 blocks: 64 px images <-> 16x16x4 latents) learns to reconstruct rendered scenes;
2. the training scenes (``world.training_combinations()``, 24 jittered renders of each) are encoded once;
3. the UNet and the text encoder learn denoising together from scratch (v-prediction on a zero-terminal-SNR
   schedule, 10% empty captions so classifier-free guidance works), with an EMA of the weights that is what
   ships. Why not epsilon: at the last timesteps an epsilon model must predict the noise to within 1/200 to
   place a background colour (x0 error = eps error / SNR), and a small model on a CPU budget never gets
   there: its samples had backgrounds of the wrong colour. With v-prediction and a terminal SNR of zero the
   first step predicts the picture's layout from the caption alone (SD 2.x's parameterisation, the fix of
   "Common Diffusion Noise Schedules and Sample Steps are Flawed");
4. the VAE decoder alone is fine-tuned as a general codec of flat shapes (the encoder, so every latent of
   stages 2-3, stays as it is; this stage may run at the same time as stage 3: ``--stage decoder``).

Everything is seeded per step (``seed + step``), so a resumed run makes the same batches, noise and
timesteps as an uninterrupted one. A bespoke loop rather than ``trainer.train``: that engine trains adapters
on a frozen base; this trains every weight of a base from scratch, VAE first.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from trainer.atomic import write_with
from trainer.shapes import world
from trainer.shapes.architecture import make_text_encoder, make_unet, make_vae, noise_schedule
from trainer.shapes.shipped_folder import write_shipped_folder
from trainer.shapes.tokenizer import write_shapes_tokenizer

if TYPE_CHECKING:
    from PIL import Image



@dataclass
class Recipe:
    seed: int = 0
    threads: int = 1  # one thread: on a shared 2-core machine two threads that wait on each other run 6x slower
    vae_steps: int = 700
    vae_batch: int = 12
    vae_lr: float = 1e-3
    decoder_steps: int = 2000
    decoder_lr: float = 5e-4
    renders_per_combination: int = 24
    steps: int = 3200
    batch: int = 32
    lr: float = 6e-4
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    checkpoint_every: int = 250


def load_tokenizer(work: Path):
    from transformers import CLIPTokenizer

    folder = work / "tokenizer"
    if not (folder / "vocab.json").exists():
        write_shapes_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def to_tensor(images) -> torch.Tensor:
    """PIL images -> (N, 3, H, W) in [-1, 1], as diffusers' VAE expects."""
    import numpy as np

    array = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def save_state(path: Path, state: dict) -> None:
    write_with(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict | None:
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


# ---- stage 1: the VAE ------------------------------------------------------------------------------------


def train_vae(work: Path, recipe: Recipe, progress) -> None:
    done = work / "vae_done.pt"
    if done.exists():
        return
    torch.manual_seed(recipe.seed)  # torch's default seed differs in every process: initial weights need one
    vae = make_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr, weight_decay=0.0)
    path, start = work / "vae_state.pt", 0
    state = load_state(path)
    if state:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    combinations = world.all_combinations(world.BASE_SHAPES)  # the VAE may see every combination: it learns pixels
    bar = progress(total=recipe.vae_steps, initial=start, desc="1/3 VAE")
    for step in range(start, recipe.vae_steps):
        rng = random.Random(recipe.seed * 1_000_003 + step)
        scenes = [world.jittered(rng.choice(combinations), rng) for _ in range(recipe.vae_batch)]
        pixels = to_tensor([world.render(s) for s in scenes])
        torch.manual_seed(recipe.seed + step)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, pixels) + 1e-6 * posterior.kl().mean()
        vae_step(loss, vae, optimizer, bar, path, step, recipe.vae_steps, recipe.checkpoint_every)
    bar.close()
    save_state(done, {"model": vae.state_dict()})


def vae_step(loss, vae, optimizer, bar, path: Path, step: int, total: int, every: int) -> None:
    """One optimizer step of a VAE stage, and its resumable state every ``every`` steps and at the end."""
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    bar.update(1)
    bar.set_postfix(loss=f"{loss.item():.4f}")
    if (step + 1) % every == 0 or step + 1 == total:
        save_state(path, {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1})


def load_trained_vae(work: Path, decoder: bool = False):
    """The stage-1 VAE; with ``decoder``, the fine-tuned decoder of stage 4 (same encoder).

    An export before stage 4 is done (``--export-now``, to look at a model mid-training) takes the latest
    decoder there is and says so.
    """
    vae = make_vae()
    names = ["decoder_done.pt", "decoder_state.pt", "vae_done.pt"] if decoder else ["vae_done.pt"]
    found = next(name for name in names if (work / name).exists())
    if found != names[0]:
        print(f"note: stage 4 is not finished; using the VAE of {found}")
    vae.load_state_dict(load_state(work / found)["model"])
    return vae.eval().requires_grad_(False)


# ---- stage 4 (independent of 2-3): the VAE decoder, fine-tuned as a general codec of flat shapes --------


def codec_scene(rng: random.Random) -> Image.Image:
    """A random picture of flat shapes: one to three polygons (3-10 corners, any radii) or ellipses.

    The decoder is a pixel codec, like SD's VAE that has seen every kind of image; it should reproduce any
    flat shape the UNet asks for, including ones the UNet has never been shown (a cross). Random polygons
    teach edges and corners in general, not any shape of the world.
    """
    from PIL import Image, ImageDraw

    scale = 4
    size = world.IMAGE_SIZE * scale
    colour = lambda: tuple(rng.randrange(256) for _ in range(3))  # noqa: E731
    image = Image.new("RGB", (size, size), colour())
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        radius = rng.uniform(4, 24) * scale
        if rng.random() < 0.25:
            draw.ellipse((cx - radius, cy - radius * rng.uniform(0.5, 1.5), cx + radius, cy + radius), fill=colour())
            continue
        corners = rng.randint(3, 10)
        phase = rng.uniform(0, 2 * math.pi)
        points = []
        for i in range(corners):
            r = radius * rng.uniform(0.35, 1.0)
            a = phase + 2 * math.pi * i / corners
            points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
        draw.polygon(points, fill=colour())
    return image.resize((world.IMAGE_SIZE, world.IMAGE_SIZE), Image.LANCZOS)


def finetune_decoder(work: Path, recipe: Recipe, progress) -> None:
    """Train only the decoder (the encoder, hence every latent the UNet learnt, stays as it is).

    Half of each batch is world scenes, half ``codec_scene`` pictures; learning rate decays linearly to 0.
    What Stability did for SD's ft-MSE VAE: a better decoder without retraining what depends on the encoder.
    """
    done = work / "decoder_done.pt"
    if done.exists():
        return
    vae = load_trained_vae(work)
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.decoder_lr, weight_decay=0.0)
    path, start = work / "decoder_state.pt", 0
    state = load_state(path)
    if state:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    combinations = world.all_combinations(world.BASE_SHAPES)
    bar = progress(total=recipe.decoder_steps, initial=start, desc="4/4 VAE decoder")
    for step in range(start, recipe.decoder_steps):
        rng = random.Random(recipe.seed * 1_000_003 + 500_000 + step)
        half = recipe.vae_batch // 2
        images = [world.render(world.jittered(rng.choice(combinations), rng)) for _ in range(half)]
        images += [codec_scene(rng) for _ in range(recipe.vae_batch - half)]
        pixels = to_tensor(images)
        for group in optimizer.param_groups:
            group["lr"] = recipe.decoder_lr * (1 - step / recipe.decoder_steps)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean
        loss = F.mse_loss(vae.decode(latents).sample, pixels)
        vae_step(loss, vae, optimizer, bar, path, step, recipe.decoder_steps, recipe.checkpoint_every)
    bar.close()
    save_state(done, {"model": vae.state_dict()})


# ---- stage 2: the encoded training set --------------------------------------------------------------------


def encode_dataset(work: Path, recipe: Recipe, tokenizer, progress) -> dict:
    path = work / "latents.pt"
    state = load_state(path)
    if state:
        return state
    vae = load_trained_vae(work)
    rng = random.Random(recipe.seed)
    scenes = [world.jittered(c, rng) for c in world.training_combinations() for _ in range(recipe.renders_per_combination)]
    latents = []
    bar = progress(total=len(scenes), desc="2/3 encode")
    with torch.no_grad():
        for i in range(0, len(scenes), 64):
            chunk = scenes[i : i + 64]
            latents.append(vae.encode(to_tensor([world.render(s) for s in chunk])).latent_dist.mean)
            bar.update(len(chunk))
    bar.close()
    latents = torch.cat(latents)
    scaling = 1.0 / latents.std().item()
    ids = tokenizer([s.caption() for s in scenes], padding="max_length", max_length=77, return_tensors="pt").input_ids
    state = {"latents": latents, "ids": ids, "scaling_factor": torch.tensor(scaling)}
    save_state(path, state)
    return state


# ---- stage 3: UNet and text encoder ----------------------------------------------------------------------


def learning_rate(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, recipe.steps - recipe.warmup)
    return recipe.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_diffusion(work: Path, recipe: Recipe, tokenizer, data: dict, progress) -> dict:
    torch.manual_seed(recipe.seed)  # the initial weights: the same in a fresh run and in one that resumes
    unet, text_encoder = make_unet(), make_text_encoder(tokenizer)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.01)
    ema = [p.detach().clone() for p in params]
    path, start = work / "diffusion_state.pt", 0
    state = load_state(path)
    if state:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema = state["ema"]
        start = state["step"]
    scheduler = noise_schedule()
    latents = data["latents"] * data["scaling_factor"]
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
    unet.train()
    text_encoder.train()
    bar = progress(total=recipe.steps, initial=start, desc="3/3 UNet + text encoder")
    for step in range(start, recipe.steps):
        generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        index = torch.randint(0, len(latents), (recipe.batch,), generator=generator)
        x0, ids = latents[index], data["ids"][index].clone()
        drop = torch.rand(recipe.batch, generator=generator) < recipe.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(recipe, step)
        prediction = unet(noisy, t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, scheduler.get_velocity(x0, noise, t))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        decay = min(recipe.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for shadow, p in zip(ema, params, strict=True):
                shadow.lerp_(p.detach(), 1 - decay)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == recipe.steps:
            state = {
                "unet": unet.state_dict(),
                "text_encoder": text_encoder.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema,
                "step": step + 1,
            }
            save_state(path, state)
    bar.close()
    return load_state(path)


def ema_models(work: Path, tokenizer, state: dict):
    """The UNet and text encoder with the EMA weights of ``state`` (what ships)."""
    unet, text_encoder = make_unet(), make_text_encoder(tokenizer)
    params = [*unet.parameters(), *text_encoder.parameters()]
    with torch.no_grad():
        for p, shadow in zip(params, state["ema"], strict=True):
            p.copy_(shadow)
    return unet.eval(), text_encoder.eval()


def export_now(work: Path, out: Path, tokenizer, data: dict, state: dict) -> None:
    """The stage-4 VAE and the EMA UNet and text encoder of ``state``, written as the folder that ships."""
    unet, text_encoder = ema_models(work, tokenizer, state)
    write_shipped_folder(out, load_trained_vae(work, decoder=True), unet, text_encoder, tokenizer,
                         scaling_factor=float(data["scaling_factor"]))


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="python -m trainer.shapes.base_training", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for resumable state (any free folder)")
    parser.add_argument("--out", type=Path, default=None, help="write the finished diffusers folder here")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's UNet steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the recipe's 1)")
    parser.add_argument("--stage", choices=["all", "decoder"], default="all", help="decoder: only stage 4")
    parser.add_argument("--export-now", action="store_true", help="export the latest checkpoint without training on")
    args = parser.parse_args(argv)
    recipe = Recipe() if args.steps is None else Recipe(steps=args.steps)
    torch.set_num_threads(args.threads or recipe.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.work / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    started = time.time()
    tokenizer = load_tokenizer(args.work)
    state = load_state(args.work / "diffusion_state.pt")
    if args.stage == "decoder":
        train_vae(args.work, recipe, tqdm)
        finetune_decoder(args.work, recipe, tqdm)
        return 0
    if args.export_now and (state is None or not (args.work / "latents.pt").exists()):
        print(f"error: {args.work} holds no UNet checkpoint yet; run without --export-now first", file=sys.stderr)
        return 2
    if not args.export_now:
        train_vae(args.work, recipe, tqdm)
        data = encode_dataset(args.work, recipe, tokenizer, tqdm)
        state = train_diffusion(args.work, recipe, tokenizer, data, tqdm)
        finetune_decoder(args.work, recipe, tqdm)
    data = load_state(args.work / "latents.pt")
    with (args.work / "timings.jsonl").open("a") as log:
        log.write(json.dumps({"seconds": round(time.time() - started, 1), "step": state["step"]}) + "\n")
    if args.out:
        export_now(args.work, args.out, tokenizer, data, state)
        print(f"wrote {args.out} (step {state['step']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
