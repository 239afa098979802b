"""``combine``: several LoRA files into one, exactly or at a target rank by SVD."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "combine"
HELP = "combine LoRA files (with weights) into one: exact (ranks concatenated) or --rank R by SVD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER[:WEIGHT]", help="two or more LoRA files, weight default 1")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--rank", type=int, help="target rank (SVD of the sum); default: exact, ranks concatenated")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="saved dtype (default: the first input's)")
    parser.add_argument("--table", action="store_true", help="print the energy kept per module (with --rank)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--events", type=Path, help="append progress/finished events (JSON lines) to this file")


def run(args: argparse.Namespace) -> int:
    from trainer.tools.combine import combine_adapters
    from trainer.tools.common import check_output, parse_weighted
    from trainer.tools.lowrank import energy_table
    from trainer.tools.progress import run_tool

    adapters = [parse_weighted(a) for a in args.adapters]

    def work(progress):
        out = check_output(args.out, args.overwrite)
        return combine_adapters(adapters, out, rank=args.rank, dtype=args.dtype, progress=progress)

    result = run_tool(args.events, work)
    if args.table and result.rows:
        print(energy_table(result.rows))
    print(result.message)
    return 0
