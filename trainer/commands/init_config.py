"""``init-config``: write a commented config from a preset."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.atomic import write_text
from trainer.config import PRESETS, dumps_config, preset_config
from trainer.presets import DEMO_PRESET

NAME = "init-config"
HELP = "write a commented TOML config (optionally from a preset) to start from"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", type=Path, nargs="?", default=Path("lora.toml"), help="where to write (default: lora.toml)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS),
        help=f"fill the config for a style or a character LoRA (default: {DEMO_PRESET}, the built-in model's first run)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")


def run(args: argparse.Namespace) -> int:
    from trainer.errors import UserFacingError

    if args.output.exists() and not args.force:
        raise UserFacingError(f"{args.output} already exists; pass --force to overwrite it or choose another name")
    config = preset_config(args.preset or DEMO_PRESET)
    write_text(args.output, dumps_config(config, comments=True))
    print(f"wrote {args.output}; edit it, then run: python -m trainer train {args.output}")
    return 0
