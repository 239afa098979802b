"""``merge``: bake adapters into a base model; save a diffusers folder or a single-file checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "merge"
HELP = "merge adapters into a base model (diffusers folder or single-file .safetensors), output checked"
DESCRIPTION = HELP + (
    "\n\nEach ADAPTER may carry a weight: my_lora.safetensors:0.8. Merged in fp32, saved in --dtype; streamed, so"
    "\nmemory is about one base model in --dtype. The result is checked: its UNet and text-encoder outputs must equal"
    "\nthe base with the adapters loaded by diffusers (and a single file must load through diffusers' from_single_file)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", help="base model: builtin:NAME, a diffusers folder or a single-file checkpoint")
    parser.add_argument("adapters", nargs="+", metavar="ADAPTER[:WEIGHT]", help="adapter file(s), weight default 1")
    parser.add_argument("--out", required=True, type=Path, help="output folder (diffusers) or .safetensors (single-file)")
    parser.add_argument("--format", default="diffusers", choices=["diffusers", "single-file"], help="output layout")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="saved dtype (default fp16)")
    parser.add_argument("--no-verify", action="store_true", help="skip the output check (not recommended)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--events", type=Path, help="append progress/finished events (JSON lines) to this file")


def run(args: argparse.Namespace) -> int:
    from trainer.tools.common import parse_weighted
    from trainer.tools.merge import merge_into_base
    from trainer.tools.progress import run_tool

    adapters = [parse_weighted(a) for a in args.adapters]
    result = run_tool(args.events, lambda progress: merge_into_base(
        args.base, adapters, args.out, args.format, args.dtype, overwrite=args.overwrite, verify=not args.no_verify,
        progress=progress))
    print(result.message)
    return 0
