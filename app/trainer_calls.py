"""Short trainer jobs the UI runs in a child process: the dataset health report and the "try it" samples.

The UI process never imports torch (a crash or OOM there would take the page down, and the import alone
costs seconds and hundreds of MB), so anything that touches a model runs as ``python -m trainer ...``.
Each call is bounded by a timeout and turns a failure into a message, never a traceback on the page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK_TIMEOUT_S = 300
SAMPLE_TIMEOUT_S = 1800
CAPTION_TIMEOUT_S = 3600


def trainer_command() -> list[str]:
    return [sys.executable, "-m", "trainer"]


def trainer_env() -> dict[str, str]:
    """The environment of every trainer process the UI starts.

    The repo is importable, so ``-m trainer`` works from a plain checkout too. Unless the user set
    ``OMP_NUM_THREADS``, torch gets one core less than the machine has: the page's polling and the
    browser drawing it need some CPU, and torch threads that must wait for a busy core wait for each
    other too (on 2 cores a 200-step builtin run from the page took 49.8 s with 2 threads, 39.9 s with 1).
    """
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() - 1)))
    return env


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one, as in containers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class CallResult:
    ok: bool
    stdout: str
    message: str  # what went wrong, in words (the last lines the trainer printed)


def run_trainer(args: list[str], timeout: float) -> CallResult:
    try:
        proc = subprocess.run(
            [*trainer_command(), *args], capture_output=True, text=True, timeout=timeout, env=trainer_env(),
            stdin=subprocess.DEVNULL, check=False,
        )
    except subprocess.TimeoutExpired:
        return CallResult(False, "", f"the trainer did not answer within {timeout:.0f} s and was stopped")
    tail = "\n".join((proc.stderr or "").strip().splitlines()[-8:])
    if proc.returncode != 0:
        return CallResult(False, proc.stdout, tail or f"the trainer exited with code {proc.returncode}")
    return CallResult(True, proc.stdout, "")


def dataset_report(folder: Path) -> str:
    """The trainer's text health report for ``folder``.

    Exit code 1 means "problems that stop training", which is still a report to show.
    """
    result = run_trainer(["check-dataset", str(folder)], CHECK_TIMEOUT_S)
    if result.stdout.strip():
        return result.stdout.strip()
    return f"Could not check the dataset: {result.message}"


def dataset_health(folder: Path) -> tuple[dict | None, str]:
    """The trainer's health report for ``folder`` as data (``check-dataset --json``), or None and why not."""
    result = run_trainer(["check-dataset", str(folder), "--json"], CHECK_TIMEOUT_S)
    try:
        return json.loads(result.stdout), ""
    except ValueError:
        return None, f"Could not check the dataset: {result.message or result.stdout[-500:]}"


def auto_caption(folder: Path, model: str, kind: str, overwrite: bool) -> str:
    """Caption ``folder`` with a BLIP-style captioner or a tagger (the trainer's ``caption`` command)."""
    args = ["caption", str(folder), "--model", model, "--kind", kind] + (["--overwrite"] if overwrite else [])
    result = run_trainer(args, CAPTION_TIMEOUT_S)
    if not result.ok:
        return f"Captioning failed: {result.message}"
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "Captioning finished."


@dataclass
class TryItImage:
    path: Path
    kind: str  # "base" or "adapted", as the sample command reports it
    caption: str


def try_adapter(
    adapter: Path, prompt: str, seed: int, strength: float, steps: int, out_dir: Path
) -> tuple[list[TryItImage], str]:
    """Base and adapted images for one prompt and seed, side by side; the error message when it fails."""
    args = [
        "sample", str(adapter), "--prompt", prompt, "--seed", str(int(seed)), "--strength", str(float(strength)),
        "--steps", str(int(steps)), "--compare", "--json", "--out", str(out_dir),
    ]
    result = run_trainer(args, SAMPLE_TIMEOUT_S)
    if not result.ok:
        return [], f"Sampling failed: {result.message}"
    try:
        payload = json.loads(result.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return [], f"Sampling printed no result: {result.stdout[-500:]}"
    images = []
    for item in payload.get("images", []):
        kind = item.get("kind", "adapted")
        label = "base model" if kind == "base" else f"LoRA × {strength:g}"
        images.append(TryItImage(Path(item["path"]), kind, f"{label} · seed {item.get('seed')}"))
    images.sort(key=lambda image: image.kind != "base")  # base on the left
    return images, ""
