"""Throughput harness: images/s and peak memory of the engine, each speed lever on/off, the plain loop and the
diffusers example's step, on one model, in one run, as ratios. One JSON document out.

Every variant trains the same LoRA (attention targets, rank, AdamW, precision, resolution, batch) in a process
of its own, so peak memory (CPU RSS; VRAM on a GPU) is its own. The variants run in rounds, interleaved, and
each figure is the median over rounds: on a shared machine the load drifts, and a variant measured only at a
quiet moment would look faster than it is.

- ``plain``: the textbook loop (PEFT LoRA, AdamW, MSE on epsilon, latents and text encoded once beforehand):
  the floor any trainer pays.
- ``example``: the step of diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` as it runs there:
  VAE encode and text encoder on every step, ``accelerator.accumulate``, the loss gathered and read every step,
  non-fused AdamW. (Restated here: that script needs ``datasets`` and ``torchvision`` for its data loading,
  which the step does not use.)
- ``engine``: ``trainer.train`` with the defaults; ``engine+X`` / ``engine-X``: one lever switched.

    python bench/random_models.py sd15-small /tmp/sd15-small
    python bench/throughput.py --model /tmp/sd15-small --resolution 128 --batches 1,4 --out /tmp/throughput.json
    python bench/throughput.py --model /tmp/sd15 --resolution 512 --mixed-precision bf16 --batches 1,4,8,16 \
        --levers compile=regional,channels_last,attention=math   # on a GPU (see bench/gpu_throughput.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# Lever (named by the state it switches to) → (config key, value). The engine's defaults: fused AdamW, no
# channels-last, torch's choice of attention kernel, no compile, TF32 and pinned copies on a GPU.
LEVERS = {
    "fused=off": ("optimizer.fused", False),
    "channels_last=on": ("training.channels_last", True),
    "attention=math": ("training.attention", "math"),
    "compile=regional": ("training.compile", "regional"),
    "compile=full": ("training.compile", "full"),
    "log_every=1": ("training.log_every", 1),
    "pin_memory=off": ("training.pin_memory", False),
    "allow_tf32=off": ("training.allow_tf32", False),
}
GPU_ONLY = {"pin_memory=off", "allow_tf32=off"}  # skipped on the CPU, where they do nothing
ENGINE_LOG_EVERY = 10  # the engine's variants read the loss every 10 steps (the lever `log_every=1` reads every step)


def make_config(args: argparse.Namespace, run_root: Path, data: Path, batch: int, overrides: dict):
    from train_speed import make_config as base_config

    ns = argparse.Namespace(**{**vars(args), "batch_size": batch, "targets": "attention", "network_type": "lora",
                               "optimizer": "adamw", "gradient_checkpointing": args.gradient_checkpointing})
    cfg = base_config(ns, run_root, data)
    cfg.training.max_steps, cfg.training.log_every = args.steps, ENGINE_LOG_EVERY
    cfg.training.device = "cpu" if args.device == "cpu" else "auto"
    cfg.dataset.repeats = max(1, -(-args.steps * batch // 4))  # one long epoch: no epoch-boundary work in the timing
    if hasattr(cfg.sampling, "at_start"):
        cfg.sampling.at_start = False
    from trainer.config import set_dotted

    for key, value in overrides.items():
        set_dotted(cfg, key, value)
    return cfg


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rate(times: list[float], warmup: int, batch: int) -> float:
    timed = times[warmup:]
    step = statistics.median(b - a for a, b in zip(timed, timed[1:], strict=False))
    return batch / step


def child_engine(cfg_path: Path, warmup: int) -> dict:
    import trainer.train as T
    from trainer.config import load_config

    cfg = load_config(cfg_path)
    times: list[float] = []
    real = T.report_step

    def timed(s, *rest):  # called once per optimizer step, after the step
        times.append(time.perf_counter())
        return real(s, *rest)

    T.report_step = timed
    T.train(cfg, show_progress=False)
    return {"images_per_s": _rate(times, warmup, cfg.training.batch_size), "peak_mb": peak_memory_mb()}


def _load(cfg, device: torch.device, dtype: torch.dtype):
    from peft import LoraConfig

    from trainer.config import UNET_TARGET_PRESETS
    from trainer.models.loading import load_base_model

    torch.manual_seed(0)
    model = load_base_model(cfg.model, dtype=dtype)
    for module in (model.unet, model.vae, model.text_encoder):
        module.to(device).requires_grad_(False)
    model.unet.add_adapter(LoraConfig(r=cfg.network.rank, lora_alpha=cfg.network.alpha, init_lora_weights="gaussian",
                                      target_modules=UNET_TARGET_PRESETS["attention"]))
    params = [p for n, p in model.unet.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return model, params


def child_plain(cfg_path: Path, warmup: int, example: bool = False) -> dict:
    """``plain`` or (``example``) the diffusers example's step; see the module docstring."""
    from accelerate import Accelerator

    from trainer.config import load_config

    cfg = load_config(cfg_path)
    acc = Accelerator(mixed_precision=cfg.training.mixed_precision, cpu=cfg.training.device == "cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.training.mixed_precision, torch.float32)
    model, params = _load(cfg, acc.device, dtype)
    unet, vae, te = model.unet, model.vae, model.text_encoder
    if cfg.training.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(params, lr=cfg.optimizer.learning_rate, fused=None if example else True)
    unet, opt = acc.prepare(unet, opt)
    res, bs = cfg.dataset.resolution, cfg.training.batch_size
    pixels = torch.rand(bs, 3, res, res, device=acc.device, dtype=dtype) * 2 - 1
    ids = model.tokenizer(["a photo"] * bs, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(acc.device)
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.sample() * model.latent_scale
        text = te(ids)[0]
    sched = model.noise_scheduler
    unet.train()
    times = []
    for step in range(cfg.training.max_steps):
        with acc.accumulate(unet):
            if example:  # the example encodes every step (no latent or text cache)
                with torch.no_grad():
                    latents = vae.encode(pixels).latent_dist.sample() * model.latent_scale
                    text = te(ids)[0]
            noise = torch.randn_like(latents)
            t = torch.randint(0, sched.config.num_train_timesteps, (bs,), device=acc.device).long()
            noisy = sched.add_noise(latents, noise, t)
            pred = unet(noisy, t, text).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float(), reduction="mean")
            if example or (step + 1) % ENGINE_LOG_EVERY == 0:
                acc.gather(loss.repeat(bs)).mean().item()  # the example reads the loss every step
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
        times.append(time.perf_counter())
    return {"images_per_s": _rate(times, warmup, bs), "peak_mb": peak_memory_mb(), **_flops(unet, noisy, t, text)}


def _flops(unet, noisy, t, text) -> dict:
    """Model FLOPs of one forward + backward, counted by torch's FLOP counter (for the fraction of peak)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        unet(noisy, t, text).sample.float().pow(2).mean().backward()
    unet.zero_grad(set_to_none=True)
    return {"flops_per_step": counter.get_total_flops()}


def run_child(kind: str, cfg_path: Path, warmup: int, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--child-config", str(cfg_path), "--warmup", str(warmup)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if out.returncode != 0:
        return {"error": out.stderr[-1500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def variants(levers: list[str], device: str) -> dict[str, dict]:
    out = {"plain": {}, "example": {}, "engine": {}}
    for lever in levers:
        if device == "cpu" and lever in GPU_ONLY:
            continue
        key, value = LEVERS[lever]
        out[f"engine {lever}"] = {key: value}
    return out


def summarise(results: dict[str, list[dict]], batch: int) -> dict:
    row: dict[str, dict] = {}
    for name, runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            row[name] = {"error": runs[0]["error"][-500:]}
            continue
        row[name] = {
            "images_per_s": statistics.median(r["images_per_s"] for r in good),
            "peak_mb": statistics.median(r["peak_mb"] for r in good),
            "rounds": len(good),
        }
        if "flops_per_step" in good[0]:
            row[name]["tflops_per_s"] = good[0]["flops_per_step"] / batch * row[name]["images_per_s"] / 1e12
    engine = row.get("engine", {}).get("images_per_s")
    for entry in row.values():
        if engine and "images_per_s" in entry:
            entry["speed_vs_engine"] = round(entry["images_per_s"] / engine, 3)
            entry["memory_vs_engine"] = round(entry["peak_mb"] / row["engine"]["peak_mb"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:tiny-sd")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes, e.g. 1,2,4,8,16")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every variant")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--levers", default="fused=off,channels_last=on,attention=math,log_every=1",
                        help=f"levers to switch one at a time: {', '.join(LEVERS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    parser.add_argument("--out", type=Path, help="write the JSON here too")
    parser.add_argument("--child", choices=["engine", "plain", "example"], help=argparse.SUPPRESS)
    parser.add_argument("--child-config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fn = {"engine": child_engine, "plain": child_plain, "example": lambda c, w: child_plain(c, w, example=True)}[args.child]
        print(json.dumps(fn(args.child_config, args.warmup)))
        return
    from train_speed import make_images

    from trainer.config import dumps_config

    levers = [lever for lever in args.levers.split(",") if lever]
    unknown = [lever for lever in levers if lever not in LEVERS]
    if unknown:
        raise SystemExit(f"unknown lever(s) {unknown}; known: {', '.join(LEVERS)}")
    report = {"model": args.model, "resolution": args.resolution, "mixed_precision": args.mixed_precision,
              "device": args.device, "rank": args.rank, "steps": args.steps, "warmup": args.warmup,
              "rounds": args.rounds, "memory": "peak VRAM (MB)" if args.device == "cuda" else "peak RSS (MB)",
              "batches": {}}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_images(Path(tmp) / "data", 4, args.resolution)
        for batch in [int(b) for b in args.batches.split(",")]:
            plan = variants(levers, args.device)
            results: dict[str, list[dict]] = {name: [] for name in plan}
            for round_ in range(args.rounds):
                for name, overrides in plan.items():
                    cfg_path = Path(tmp) / f"{name}-{batch}-{round_}.toml"
                    cfg = make_config(args, Path(tmp) / "runs" / f"{name}-{batch}-{round_}", data, batch, overrides)
                    cfg_path.write_text(dumps_config(cfg))
                    kind = name if name in ("plain", "example") else "engine"
                    results[name].append(run_child(kind, cfg_path, args.warmup, args.timeout))
                    print(f"batch {batch} round {round_} {name}: {results[name][-1]}", file=sys.stderr, flush=True)
            report["batches"][str(batch)] = summarise(results, batch)
    report["seconds"] = round(time.time() - started, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
