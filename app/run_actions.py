"""What the Runs tab can do to a run: resume it, move it to the trash, ask it for a preview now.

Each action checks first that it applies (a running run is not deleted, a completed one is not
resumed) and answers with a message for beside its button; nothing here raises for a user's mistake.
Resume goes through the same pre-flight check as Start and then the job manager (``--resume``); the
preview request is a ``SAMPLE_NOW`` file the trainer takes at its next step, like ``STOP``.
No Gradio, no torch.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from app.config_form import config_to_toml_text
from app.run_status import RunStatus
from app.start_check import problems_markdown
from trainer.atomic import write_text
from trainer.config import load_config
from trainer.preflight import preflight
from trainer.run_folder import CONFIG_FILE, SAMPLE_NOW_FILE

if TYPE_CHECKING:
    from app.studio import Studio

TRASH_DIR = ".trash"  # under the runs dir; hidden from the runs list like ``.jobs``
RESUMABLE = ("stopped", "failed", "interrupted")
BUSY = ("waiting", "running", "stopping")


@dataclass(frozen=True)
class RunActions:
    """Which of the run's buttons apply to it now."""

    resume: bool
    delete: bool
    sample_now: bool


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    message: str  # Markdown, shown beside the button that was pressed


def run_actions(status: RunStatus, queued: bool = False) -> RunActions:
    """Resume a stopped, failed or interrupted run; delete any run that no trainer is using; sample a running one."""
    busy = status.state in BUSY or queued
    return RunActions(resume=status.state in RESUMABLE and not queued, delete=not busy, sample_now=status.state == "running")


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The step of the run's newest checkpoint folder (``checkpoints/step_NNNNNN``; each is renamed into place
    complete), or None: what ``--resume`` will continue from, read without loading anything."""
    steps = [int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
    return max(steps, default=None)


def _queued_for(studio: Studio, run_dir: Path) -> bool:
    return any(job.run_dir.resolve() == run_dir.resolve() for job in studio.jobs.queued())


def _run_dir(studio: Studio, name: str | None) -> Path | None:
    if not name or "/" in name or name.startswith("."):
        return None
    run_dir = studio.settings.runs_dir / name
    return run_dir if (run_dir / CONFIG_FILE).is_file() else None


def resume_run(studio: Studio, name: str | None) -> ActionResult:
    """Queue ``python -m trainer train <its config> --resume`` for a stopped, failed or interrupted run."""
    run_dir = _run_dir(studio, name)
    if run_dir is None:
        return ActionResult(False, "Pick a run first.")
    _, status = studio.run_status_of(run_dir)
    if _queued_for(studio, run_dir):
        return ActionResult(False, f"**{name}** is already queued.")
    if status.state not in RESUMABLE:
        return ActionResult(False, f"**{name}** is {status.state}: only a stopped, failed or interrupted run can be resumed.")
    try:
        cfg = load_config(run_dir / CONFIG_FILE)
    except Exception as err:  # an old or hand-edited config: say which file and why
        return ActionResult(False, problems_markdown([f"{run_dir / CONFIG_FILE} cannot be read: {err}"]))
    # The run is where it is: its own folder, whatever the saved output_dir says.
    cfg.run.output_dir, cfg.run.name = str(studio.settings.runs_dir), run_dir.name
    report = preflight(cfg, resume=True)
    if not report.ok:
        return ActionResult(False, problems_markdown(report.errors))
    job = studio.jobs.submit(config_to_toml_text(cfg), run_dir.name, resume=True)
    studio.jobs.tick()
    job = studio.jobs.get(job.id)
    where = "it starts when the running job ends" if job.state == "queued" else "follow it under *2 · Train*"
    verb = "Queued the resume of" if job.state == "queued" else "Resumed"
    step = latest_checkpoint_step(run_dir)
    origin = f"from its checkpoint at step {step}" if step is not None else "from step 0 (it has no checkpoint)"
    return ActionResult(True, f"{verb} **{name}** {origin}: {where}.")


def delete_run(studio: Studio, name: str | None) -> ActionResult:
    """Move the run folder to ``runs/.trash/`` (never a running or queued run)."""
    run_dir = _run_dir(studio, name)
    if run_dir is None:
        return ActionResult(False, "Pick a run first.")
    _, status = studio.run_status_of(run_dir)
    if status.state in BUSY or _queued_for(studio, run_dir):
        return ActionResult(False, f"**{name}** is {status.state if status.state in BUSY else 'queued'}: stop it first, then delete it.")
    trash = studio.settings.runs_dir / TRASH_DIR
    trash.mkdir(exist_ok=True)
    target = trash / run_dir.name
    if target.exists():
        target = trash / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    shutil.move(str(run_dir), str(target))
    studio.forget(run_dir)
    return ActionResult(True, f"Moved **{name}** to the trash (`{target}`); delete it there to free the disk space.")


def request_sample(studio: Studio, name: str | None) -> ActionResult:
    """Ask a running trainer for previews at its next step (a ``SAMPLE_NOW`` file it takes and removes)."""
    run_dir = _run_dir(studio, name)
    if run_dir is None:
        return ActionResult(False, "Pick a run first.")
    _, status = studio.run_status_of(run_dir)
    if status.state != "running":
        return ActionResult(False, f"**{name}** is {status.state}: previews can be asked for while it trains.")
    write_text(run_dir / SAMPLE_NOW_FILE, "previews requested by the UI\n")
    return ActionResult(True, f"Asked **{name}** for previews at its next step; they appear in the grid below.")
