"""``train``: run a config to completion (or resume it); every setting is documented in the help."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from trainer.config import field_infos, load_config, section_doc, set_dotted

NAME = "train"
HELP = "train a LoRA adapter from a TOML config"
START_FILE = "go.json"  # --wait-for-start: {"resume": bool, "cwd": str, ...}, written beside CONFIG
OWNER_FILE = "owner.json"  # --wait-for-start: {"pid": the UI's pid}; the warm trainer ends when it does
START_POLL_S = 0.1


def _settings_help() -> str:
    lines = ["settings (TOML sections and keys; override any with --set section.key=value):"]
    section = None
    for info in field_infos():
        if info.section != section:
            section = info.section
            lines.append(f"\n  [{section}]  {section_doc(section)}")
        choices = f" One of: {', '.join(map(repr, info.choices))}." if info.choices else ""
        lines.append(f"    {info.name} = {info.default!r}\n        {info.doc}{choices}")
    return "\n".join(lines)


DESCRIPTION = HELP + "\n\n" + _settings_help()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="the TOML config (write one with: python -m trainer init-config)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the config's run folder from its latest checkpoint")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a setting, e.g. --set training.max_steps=500 (value parsed as TOML)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (events.jsonl still records progress)")
    parser.add_argument(
        "--wait-for-start", action="store_true",
        help="import the engine first, then wait for go.json beside CONFIG (the UI's warm trainer: Start to "
             "first step without the imports)",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="only check the config, model, dataset, adapter, disk space and run folder; print the report and "
             "exit 0 (ok) or 2 (problems); creates nothing",
    )


def apply_overrides(config, overrides: list[str]) -> None:
    import tomllib

    from trainer.config import ConfigError

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError([f"--set {item!r}: expected SECTION.KEY=VALUE"])
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # bare words are strings: --set model.base=builtin:tiny-sd
        set_dotted(config, key.strip(), value)


def check_before_training(config, args: argparse.Namespace) -> int | None:
    """The pre-flight check (``trainer.preflight``), before any run folder exists.

    ``--dry-run``: print the whole report, return the exit code. Otherwise errors raise (exit 2, nothing
    created) and warnings go to stderr before training starts.
    """
    import sys

    from trainer.preflight import PreflightError, preflight

    report = preflight(config, resume=args.resume)
    if getattr(args, "dry_run", False):
        print(report.format_text(notes=True))
        return 0 if report.ok else 2
    if not report.ok:
        raise PreflightError(report)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return None


def wait_for_start(folder: Path) -> dict:
    """Import everything a run needs, then wait for ``go.json`` in ``folder`` (its resume flag and cwd).

    The UI keeps one such process ready while nothing trains, so *Start training* skips the imports
    (about 5 s of torch and diffusers on 2 cores; far more where bytecode cannot be written). It ends
    quietly when the UI that made it is gone (``owner.json``).
    """
    import trainer.preflight  # noqa: F401 - imported now, not after Start
    import trainer.train  # noqa: F401

    owner = json.loads((folder / OWNER_FILE).read_text(encoding="utf-8")).get("pid") if (folder / OWNER_FILE).exists() else None
    while not (folder / START_FILE).exists():
        if owner and not _alive(int(owner)):
            raise SystemExit(0)
        time.sleep(START_POLL_S)
    return json.loads((folder / START_FILE).read_text(encoding="utf-8"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(args: argparse.Namespace) -> int:
    from trainer.config import ConfigError, validate

    if getattr(args, "wait_for_start", False):
        start = wait_for_start(args.config.parent)
        args.resume = bool(start.get("resume"))
        if start.get("cwd"):
            os.chdir(start["cwd"])  # relative paths in the config mean what they would where the UI runs
    config = load_config(args.config)
    apply_overrides(config, args.set)
    problems = validate(config)
    if problems:
        raise ConfigError(problems, args.config)
    if (code := check_before_training(config, args)) is not None:
        return code  # --dry-run ends here
    from trainer.train import train  # heavy imports only once the config is known to be good

    result = train(config, resume=args.resume, show_progress=not args.no_progress)
    print(f"{result.status} at step {result.step}: {result.run_dir}")
    for path in result.adapter_paths:
        print(f"adapter: {path}")
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        return 1  # training ran, but what it wrote is not right: a failure the caller must see
    return 0
