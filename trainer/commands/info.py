"""``info``: what an adapter file is (format, type, ranks, base model, training metadata, clients)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NAME = "info"
HELP = "describe an adapter file: format, type, ranks/alphas, base model, training metadata, clients"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", type=Path, help="adapter .safetensors file (kohya/LyCORIS or diffusers/PEFT keys)")
    parser.add_argument("--json", action="store_true", help="print JSON (with every module's rank and alpha)")
    parser.add_argument("--events", type=Path, help="append progress/finished events (JSON lines) to this file")


def run(args: argparse.Namespace) -> int:
    from trainer.tools.info import adapter_info
    from trainer.tools.progress import run_tool

    info = run_tool(args.events, lambda progress: adapter_info(args.adapter))
    if args.json:
        json.dump(info.to_dict(), sys.stdout, indent=2)
        print()
    else:
        print(info.format_text())
    return 0
