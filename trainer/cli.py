"""``python -m trainer``: dispatches to the subcommand modules in ``trainer/commands``.

Errors that a user can fix (``UserFacingError`` subclasses and ConfigError) print one clear message
and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `--help` lists them.
COMMANDS = ["train", "init_config", "sample", "check_dataset", "caption",
            "info", "convert", "merge", "combine", "resize", "extract"]


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="lora-studio: train Stable Diffusion LoRA adapters from a TOML config.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"trainer.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"trainer.commands.{name}":
                continue  # a command not built yet in this checkout
            raise
        cmd = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(cmd)
        modules[module.NAME] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from trainer.errors import user_facing_errors
    from trainer.library_noise import quiet_known_library_noise

    quiet_known_library_noise()

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(modules[args.command].run(args) or 0)
    except user_facing_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
