"""Engine steps/s and peak memory as ratios against a plain PyTorch loop doing the same math.

Both sides train the same LoRA (same targets, rank, optimizer, precision, batch, resolution) on the
same images, with latents and text embeddings encoded once beforehand; each runs in its own process so
peak memory is its own. The plain loop is the floor any trainer pays; the ratio is our overhead.

    python bench/train_speed.py                                  # builtin tiny model, CPU
    python bench/train_speed.py --model /tmp/sd15 --resolution 512 --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_config(args: argparse.Namespace, run_root: Path, data_dir: Path):
    from trainer.config import Config

    cfg = Config()
    cfg.run.output_dir, cfg.run.name = str(run_root), "bench"
    cfg.model.base = args.model
    cfg.dataset.path, cfg.dataset.resolution, cfg.dataset.trigger_word = str(data_dir), args.resolution, "sks"
    cfg.network.rank, cfg.network.alpha, cfg.network.unet_targets = args.rank, float(args.rank), args.targets
    # lora | locon | loha | lokr, or dora (LoRA with use_dora); LoCon/LoHa/LoKr conv layers at rank / 2.
    cfg.network.type = "lora" if args.network_type == "dora" else args.network_type
    cfg.network.use_dora = args.network_type == "dora"
    if args.network_type in ("locon", "loha", "lokr"):
        cfg.network.conv_rank, cfg.network.conv_alpha = max(1, args.rank // 2), float(max(1, args.rank // 2))
    cfg.optimizer.name = args.optimizer
    cfg.training.max_steps, cfg.training.batch_size = args.steps, args.batch_size
    cfg.training.mixed_precision, cfg.training.gradient_checkpointing = args.mixed_precision, args.gradient_checkpointing
    cfg.sampling.every_n_steps, cfg.sampling.at_end = 0, False
    cfg.checkpoint.every_n_steps = 0
    cfg.export.verify = False
    return cfg


def make_images(folder: Path, n: int, size: int) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        pixels = (torch.rand(size, size, 3, generator=gen) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img_{i:02d}.png")
        (folder / f"img_{i:02d}.txt").write_text("a photo of a random pattern", encoding="utf-8")
    return folder


def peak_memory_mb() -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child_engine(cfg_path: Path, warmup: int) -> dict:
    from trainer.config import load_config
    from trainer.events import read_events
    from trainer.train import train

    cfg = load_config(cfg_path)
    train(cfg, show_progress=False)
    steps = [e for e in read_events(cfg.run_dir) if e["type"] == "step"]
    timed = steps[warmup:]
    rate = (len(timed) - 1) / (timed[-1]["time"] - timed[0]["time"])
    return {"steps_per_s": rate, **peak_memory_mb()}


def child_plain(cfg_path: Path, warmup: int) -> dict:
    """The textbook loop: PEFT LoRA on the UNet, AdamW, MSE on epsilon; nothing else."""
    from peft import LoraConfig

    from trainer.config import UNET_TARGET_PRESETS, load_config
    from trainer.models.loading import load_base_model

    cfg = load_config(cfg_path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.training.mixed_precision, torch.float32)
    torch.manual_seed(0)
    model = load_base_model(cfg.model, dtype=dtype)
    unet, vae, te = model.unet.to(device), model.vae.to(device), model.text_encoder.to(device)
    unet.add_adapter(LoraConfig(r=cfg.network.rank, lora_alpha=cfg.network.alpha, target_modules=UNET_TARGET_PRESETS[cfg.network.unet_targets]))
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    if cfg.training.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.optimizer.name == "adamw8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, lr=cfg.optimizer.learning_rate)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.optimizer.learning_rate, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    res, bs = cfg.dataset.resolution, cfg.training.batch_size
    with torch.no_grad():
        pixels = torch.rand(bs, 3, res, res, device=device, dtype=dtype) * 2 - 1
        latents = vae.encode(pixels).latent_dist.sample().float() * model.latent_scale
        ids = model.tokenizer(["a photo"] * bs, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(device)
        text = te(ids)[0]
    sched = model.noise_scheduler
    unet.train()
    times = []
    for _ in range(cfg.training.max_steps):
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (bs,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            pred = unet(noisy.to(dtype), t, text).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        loss.item()  # the engine reads the loss every step too
        times.append(time.perf_counter())
    timed = times[warmup:]
    return {"steps_per_s": (len(timed) - 1) / (timed[-1] - timed[0]), **peak_memory_mb()}


def run_child(kind: str, cfg_path: Path, warmup: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--child-config", str(cfg_path), "--warmup", str(warmup)],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    if out.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-sd")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", default="attention", choices=["attention", "kohya"])
    parser.add_argument("--network-type", default="lora", choices=["lora", "locon", "loha", "lokr", "dora"],
                        help="adapter type (the plain-loop baseline is LoRA only: use --no-baseline with the others)")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit"])
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--child", choices=["engine", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--child-config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--no-baseline", action="store_true",
                        help="engine only (SDXL, or to save GPU time): no plain-loop ratio")
    args = parser.parse_args()
    if args.child:
        fn = child_engine if args.child == "engine" else child_plain
        print(json.dumps(fn(args.child_config, args.warmup)))
        return
    from trainer.config import dumps_config

    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "data", max(4, args.batch_size), args.resolution)
        cfg_path = Path(tmp) / "bench.toml"
        cfg_path.write_text(dumps_config(make_config(args, Path(tmp) / "runs", data)))
        plain = None if args.no_baseline else run_child("plain", cfg_path, args.warmup)
        engine = run_child("engine", cfg_path, args.warmup)
    result = {
        "model": args.model, "resolution": args.resolution, "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision, "optimizer": args.optimizer,
        "gradient_checkpointing": args.gradient_checkpointing, "network_type": args.network_type,
        "engine": engine, "plain": plain,
    }
    mem_key = "peak_vram_mb" if "peak_vram_mb" in engine else "peak_rss_mb"
    if plain:
        result["speed_ratio"] = engine["steps_per_s"] / plain["steps_per_s"]
        result["memory_ratio"] = engine[mem_key] / plain[mem_key]
    if args.json:
        print(json.dumps(result))
        return
    print(f"model {args.model} @ {args.resolution}px, batch {args.batch_size}, {args.mixed_precision}, {args.optimizer}, "
          f"{args.network_type}"
          f"{', grad-ckpt' if args.gradient_checkpointing else ''}")
    if plain:
        print(f"  plain loop : {plain['steps_per_s']:.2f} steps/s, peak {mem_key} {plain[mem_key]:.0f} MB")
    print(f"  engine     : {engine['steps_per_s']:.2f} steps/s, peak {mem_key} {engine[mem_key]:.0f} MB")
    if plain:
        print(f"  ratio      : speed x{result['speed_ratio']:.2f}, memory x{result['memory_ratio']:.2f} (engine / plain)")


if __name__ == "__main__":
    main()
