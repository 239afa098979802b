"""``check-dataset``: the dataset health report, as text or JSON, without training anything."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from trainer.config import PRESETS, Config, ModelConfig, load_config

NAME = "check-dataset"
HELP = "report dataset problems (unreadable images, missing or too-long captions, duplicates, sizes)"
DESCRIPTION = (
    HELP + "\n\nExit status: 0 when training could start, 1 when the report lists problems that stop it."
    "\nWith --config the dataset settings (resolution, buckets, trigger word) and the base model's"
    "\ntokenizer (for the caption-length check) come from that config."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, nargs="?", help="dataset folder (default: `dataset.path` of --config)")
    parser.add_argument("--config", type=Path, help="training config (TOML) whose [dataset] and [model] settings to use")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="base the suggested repeats/steps on this preset")
    parser.add_argument("--no-tokenizer", action="store_true", help="skip the caption-length check (no model needed)")


def run(args: argparse.Namespace) -> int:
    from trainer.data.health import health_report
    from trainer.errors import UserFacingError

    config = load_config(args.config) if args.config else Config()
    folder = args.folder or (Path(config.dataset.path) if args.config else None)
    if folder is None:
        raise UserFacingError("check-dataset needs a folder: python -m trainer check-dataset DIR (or --config C)")
    tokenizer, note = (None, "caption lengths not checked (--no-tokenizer)") if args.no_tokenizer else load_tokenizer(config.model)
    report = health_report(folder, config.dataset, tokenizer, preset=args.preset, batch_size=config.training.batch_size)
    if note:
        report.notes.append(note)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print(report.format())
    return 0 if report.ok else 1


def load_tokenizer(model: ModelConfig) -> tuple[Any, str]:
    """The base model's (first) tokenizer, or None and why not; a missing model never stops the report."""
    from trainer.models.loading import ModelLoadError, resolve_model_source

    try:
        kind, where = resolve_model_source(model.base)
    except ModelLoadError as err:
        return None, f"caption lengths not checked: {err}"
    if kind == "file":
        return None, "caption lengths not checked: a single-file checkpoint has no tokenizer folder"
    from transformers import CLIPTokenizer

    kwargs = {"revision": model.revision} if kind == "hub" and model.revision else {}
    try:
        return CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kwargs), ""
    except (OSError, ValueError) as err:
        return None, f"caption lengths not checked: could not load the tokenizer of {model.base!r} ({err})"
