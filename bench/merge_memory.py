"""Peak memory of ``merge`` (streamed) against loading the base alone and against the naive merge.

The streamed merge should need about one base model: the ratio to "load" (the base loaded in fp16 with every
weight read) near 1, and never 2. The naive path — diffusers' ``load_lora_weights`` + ``fuse_lora`` +
``save_pretrained`` — is measured beside it. Each is a fresh process reporting its own peak RSS (VmHWM);
the ratios are against "load", measured in the same run, and the model's fp16 size on disk is printed too.
The output check (on by default) is left out (``--no-verify``): it holds fp32 copies and is measured
separately as "merge + check".

    python bench/merge_memory.py --arch sd15 --work /tmp/merge-bench      # full-size SD 1.5 (random weights)
    python bench/merge_memory.py --arch sd15-small                         # quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# VmHWM: this process image's own peak RSS. Not ru_maxrss: Linux carries that across fork + exec, so every child
# would report at least the parent's size at the fork.
PEAK = "print('PEAK_KB', next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')))"
LOAD = """
import torch
from trainer.tools.common import load_base
model = load_base({base!r}, dtype=torch.float16)
# safetensors maps the file: a weight is resident only once read, so read every one (as a merge does).
total = sum(float(t.sum()) for m in (*model.component_modules().values(), model.vae) for t in m.state_dict().values())
"""
STREAMED = """
import sys
from trainer.cli import main
rc = main(["merge", {base!r}, {lora!r}, "--out", {out!r}, "--dtype", "fp16", "--overwrite"{extra}])
assert rc == 0, rc
"""
NAIVE = """
import torch
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained({base!r}, torch_dtype=torch.float16, safety_checker=None)
pipe.load_lora_weights({lora!r})
pipe.fuse_lora()
pipe.unload_lora_weights()
pipe.save_pretrained({out!r}, safe_serialization=True)
"""


def peak_mb(code: str) -> float:
    done = subprocess.run([sys.executable, "-c", code + "\n" + PEAK], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-2000:])
    kb = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_KB"))
    return kb / 1024


def make_lora(base: str, out: Path) -> Path:
    import torch

    from trainer.config import Config
    from trainer.export import TrainingMetadata, export_adapter
    from trainer.network import inject_lora
    from trainer.tools.common import load_base

    if (out / "bench.safetensors").is_file():
        return out / "bench.safetensors"
    model, cfg = load_base(base), Config()
    cfg.network.rank, cfg.network.alpha, cfg.network.train_text_encoder = 16, 16.0, True
    cfg.run.name, cfg.export.format, cfg.export.dtype, cfg.export.verify = "bench", "kohya", "fp16", False
    inject_lora(model, cfg.network)
    with torch.no_grad():
        for module in model.component_modules().values():
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.01)
    return export_adapter(model, cfg, out, metadata=TrainingMetadata(), verify=False)[0].path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="sd15-small", choices=["sd15", "sd15-small", "sdxl"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/merge-bench"))
    parser.add_argument("--with-check", action="store_true", help="also measure merge + its output check")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "bench"))
    from random_models import build

    base = str(build(args.arch, args.work / args.arch))
    lora = str(make_lora(base, args.work / f"{args.arch}-lora"))
    figures = {"load": peak_mb(LOAD.format(base=base))}
    figures["merge (streamed)"] = peak_mb(STREAMED.format(base=base, lora=lora, out=str(args.work / "m1"), extra=', "--no-verify"'))
    if args.arch != "sdxl":
        figures["naive (fuse_lora + save_pretrained)"] = peak_mb(NAIVE.format(base=base, lora=lora, out=str(args.work / "m2")))
    if args.with_check:
        figures["merge + check"] = peak_mb(STREAMED.format(base=base, lora=lora, out=str(args.work / "m3"), extra=""))
    on_disk = sum(f.stat().st_size for f in Path(base).glob("*/*.safetensors")) / 2**20
    print(f"{'fp16 weights on disk':38}           {on_disk:8.0f} MB")
    for name, mb in figures.items():
        print(f"{name:38} peak RSS {mb:8.0f} MB   x{mb / figures['load']:.2f} of load")
    print(json.dumps({"arch": args.arch, "on_disk": round(on_disk), **{k: round(v) for k, v in figures.items()}}))


if __name__ == "__main__":
    main()
