"""``resize``: a LoRA at a lower rank (fixed or dynamic), as sd-scripts' resize_lora.py, with an energy table."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "resize"
HELP = "lower a LoRA's rank by SVD (--rank R, or --dynamic sv_ratio|sv_fro|sv_cumulative --param X)"
DESCRIPTION = HELP + (
    "\n\nsv_ratio X: keep singular values above the largest / X; sv_fro X: keep the smallest rank whose Frobenius"
    "\nnorm reaches fraction X; sv_cumulative X: ... whose sum of singular values reaches fraction X. With --dynamic,"
    "\n--rank is the cap (default 128). Prints the energy kept per module; the file is checked to be the rank-R"
    "\nSVD truncation of the input, module by module."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", type=Path, help="LoRA .safetensors file (kohya or diffusers keys)")
    parser.add_argument("--rank", type=int, help="new rank (with --dynamic: the largest rank allowed)")
    parser.add_argument("--dynamic", choices=["sv_ratio", "sv_fro", "sv_cumulative"], help="choose each module's rank")
    parser.add_argument("--param", type=float, help="the --dynamic method's target (e.g. sv_ratio 2, sv_fro 0.9)")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="saved dtype (default: the input's)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--events", type=Path, help="append progress/finished events (JSON lines) to this file")


def run(args: argparse.Namespace) -> int:
    from trainer.tools.common import ToolError, check_output
    from trainer.tools.lowrank import energy_table
    from trainer.tools.progress import run_tool
    from trainer.tools.resize import resize_adapter

    def work(progress):
        if args.rank is None and args.dynamic is None:
            raise ToolError("resize needs --rank R, or --dynamic METHOD --param X")
        out = check_output(args.out, args.overwrite)
        rank = args.rank if args.rank is not None else 128
        return resize_adapter(args.adapter, out, rank, args.dynamic, args.param, args.dtype, progress)

    result = run_tool(args.events, work)
    print(energy_table(result.rows))
    print(result.message)
    return 0
