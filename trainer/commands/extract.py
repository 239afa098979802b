"""``extract``: a LoRA from the difference between a fine-tuned model and its base."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "extract"
HELP = "extract a LoRA from a fine-tuned model minus its base (Linear and conv layers, SVD), output checked"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="the original model: builtin:NAME, a diffusers folder or a single-file checkpoint")
    parser.add_argument("tuned", help="the fine-tuned model, in any of the same forms")
    parser.add_argument("--rank", required=True, type=int, help="LoRA rank of the Linear (and 1x1 conv) layers")
    parser.add_argument("--conv-rank", type=int, help="rank of the 3x3 convolutions (default: --rank)")
    parser.add_argument("--min-diff", type=float, default=1e-6,
                        help="layers whose weights differ by at most this (max |ΔW|) are left out (default 1e-6)")
    parser.add_argument("--clamp-quantile", type=float,
                        help="clamp the factors at this quantile as sd-scripts does (it uses 0.99); default: off (exact)")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file (kohya keys)")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="saved dtype (default fp16)")
    parser.add_argument("--table", action="store_true", help="print the energy kept per module")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--events", type=Path, help="append progress/finished events (JSON lines) to this file")


def run(args: argparse.Namespace) -> int:
    from trainer.tools.extract import extract_lora
    from trainer.tools.lowrank import energy_table
    from trainer.tools.progress import run_tool

    result = run_tool(args.events, lambda progress: extract_lora(
        args.base, args.tuned, args.out, args.rank, conv_rank=args.conv_rank, min_diff=args.min_diff,
        clamp_quantile=args.clamp_quantile, dtype=args.dtype, overwrite=args.overwrite, progress=progress))
    if args.table:
        print(energy_table(result.rows))
    print(result.message)
    return 0
