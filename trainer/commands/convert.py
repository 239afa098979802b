"""``convert``: an adapter file in another format (kohya, diffusers, peft), checked ΔW for ΔW."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "convert"
HELP = "convert a LoRA between kohya, diffusers and peft formats (ΔW per module checked)"
DESCRIPTION = HELP + (
    "\n\nkohya: sd-scripts / AUTOMATIC1111 / ComfyUI keys; diffusers: load_lora_weights keys; peft: a folder with"
    "\none adapter_config.json + adapter_model.safetensors per component. LoHa/LoKr/DoRA stay kohya (no other form)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", type=Path, help="adapter .safetensors file")
    parser.add_argument("--to", required=True, choices=["kohya", "diffusers", "peft"], help="output format")
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file (a folder for peft)")
    parser.add_argument("--base", help="base model the adapter was trained on (builtin:NAME, diffusers folder or "
                        "single file); default: the architecture its metadata names, no weights loaded")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="saved dtype (default: the input's)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--events", type=Path, help="append progress/finished events (JSON lines) to this file")


def run(args: argparse.Namespace) -> int:
    from trainer.tools.convert import convert
    from trainer.tools.progress import run_tool

    result = run_tool(args.events, lambda progress: convert(
        args.adapter, args.out, args.to, base=args.base, dtype=args.dtype, overwrite=args.overwrite, progress=progress))
    print(result.message)
    return 0
