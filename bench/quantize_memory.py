"""Peak memory of a LoRA run on a quantized base (``model.quantize``) against the same run unquantized.

Each mode runs in its own process (a fresh peak): the real trainer (``trainer.train``) on the full-size
random SD 1.5 of ``bench/random_models.py`` at 64 px, batch 1, a few steps. Two peaks per run, from the
kernel's high-water mark (VmHWM): the whole process, and the training phase alone (the mark is reset with
``/proc/self/clear_refs`` after set-up, when the base is loaded, quantized and LoRA injected). The model
loads in its stored precision and is quantized layer by layer after loading, so the load peak is the
same for both; the training phase is where the quantized base saves memory. On a GPU (``--device cuda``)
the same two figures come from ``torch.cuda.max_memory_allocated`` and steps/s is reported too.

    python bench/quantize_memory.py /tmp/sd15-random [--modes none int8] [--steps 3] [--device cpu]

On a GPU, the issue's figure (full-size SDXL at 1024 px, UNet LoRA, bf16, nf4 base vs bf16 base):

    python bench/random_models.py sdxl /tmp/sdxl-random --device cuda
    python bench/quantize_memory.py /tmp/sdxl-random --device cuda --modes none nf4 int8 --resolution 1024 --steps 20

Prints one JSON line per mode and the int8/none (or nf4/none) ratios; the ratio is the figure to quote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(mode: str, model: str, steps: int, device: str, out: Path, resolution: int = 64) -> dict:
    import torch

    import trainer.train as train_module
    from trainer.config import Config

    cfg = Config()
    cfg.model.base, cfg.model.quantize = model, mode
    cfg.run.output_dir, cfg.run.name = str(out), f"quantize-{mode}"
    cfg.dataset.path, cfg.dataset.resolution = str(REPO / "sample_data"), resolution
    # `training.device` is "auto" (CUDA when there is one) or "cpu"
    cfg.training.max_steps, cfg.training.device = steps, "auto" if device == "cuda" else device
    cfg.training.mixed_precision = "bf16" if device == "cuda" else "no"
    cfg.sampling.every_n_steps, cfg.sampling.at_end = 0, False
    cfg.checkpoint.every_n_steps, cfg.export.verify = 0, False
    cfg.network.rank, cfg.network.alpha = 16, 16.0
    cfg.optimizer.learning_rate = 1e-4
    marks: dict = {}
    original = train_module.run_loop

    def measured_loop(s, *args):
        marks["load_peak_mb"] = vm_hwm_mb()
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the training phase's own peak from here
        if torch.cuda.is_available():
            marks["gpu_load_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = original(s, *args)
        marks["train_seconds"] = time.perf_counter() - start
        marks["train_peak_mb"] = vm_hwm_mb()
        if torch.cuda.is_available():
            marks["gpu_train_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return result

    train_module.run_loop = measured_loop
    result = train_module.train(cfg, show_progress=False)
    events = [json.loads(line) for line in (cfg.run_dir / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if e["type"] == "step"]
    return {"mode": mode, "status": result.status, "steps": steps, "losses": losses,
            "steps_per_s": steps / marks["train_seconds"], **marks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a diffusers folder, e.g. from bench/random_models.py sd15")
    parser.add_argument("--modes", nargs="+", default=["none", "int8"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--child", default="")
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(child(args.child, args.model, args.steps, args.device, Path(out), args.resolution)))
        return
    rows = {}
    for mode in args.modes:
        run = subprocess.run([sys.executable, __file__, args.model, "--child", mode, "--steps", str(args.steps),
                              "--device", args.device, "--resolution", str(args.resolution)],
                             capture_output=True, text=True, cwd=REPO)
        line = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
        if run.returncode or not line.startswith("{"):
            print(f"{mode}: failed ({run.returncode})\n{run.stderr[-3000:]}", file=sys.stderr)
            continue
        rows[mode] = json.loads(line)
        print(line, flush=True)
    base = rows.get("none")
    for mode, row in rows.items():
        if base is None or mode == "none":
            continue
        keys = [k for k in row if k.endswith("_mb") and k in base]
        print(json.dumps({f"{mode}/none {k}": round(row[k] / base[k], 3) for k in keys}))


if __name__ == "__main__":
    main()
