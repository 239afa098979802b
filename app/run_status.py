"""A run's status as the page shows it, from the events, the UI's job record and the run folder's lock.

The events alone cannot tell a dead run from a live one: a trainer killed with ``kill -9`` writes no
``finished`` event, so its last ``step`` would read "running 11/200" forever. ``run_status`` asks, in
this order:

1. The job record (``app.jobs``): the job manager watched the process and knows its exit code (the
   runner's ``exit.json``) or that it vanished. It speaks for the run when it is the newest job started
   for that folder and no later session (say a CLI ``--resume``) began after it ended.
2. Otherwise the ``finished`` event.
3. Otherwise the run folder's lock (``trainer.run_lock``): held, a trainer is alive (a CLI run); free,
   the trainer is gone without a word: "interrupted at step N (no trainer running)".

An ``export`` event whose self-check failed (``verified: false``) is a failure whatever the ``finished``
status says: the adapter file on disk is not known to hold what was trained.

Pure Python (no Gradio, no torch); the HTML helpers escape everything they are given.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from app.jobs import ACTIVE_STATES, DIED_MESSAGE, Job, describe_exit
from app.run_view import RunView

FAILED_STATES = ("failed", "interrupted")
OUTCOME_LOG_LINES = 12  # the log lines shown under a failed job's outcome


@dataclass(frozen=True)
class RunStatus:
    """What one run is, in words: ``state`` for logic and CSS, ``label`` for the page."""

    state: str  # waiting / running / stopping / completed / stopped / failed / interrupted
    label: str  # e.g. "failed — killed by SIGKILL (exit -9: out of memory, or kill -9)"
    problems: tuple[str, ...] = ()  # failed export self-checks, each with its message

    @property
    def failed(self) -> bool:
        """Shown red: the run failed, or something it produced did (also while it still runs)."""
        return self.state in FAILED_STATES or bool(self.problems)


def failed_exports(view: RunView) -> list[str]:
    """One line per exported file whose newest self-check failed, with the checker's message."""
    newest = {str(event.get("path")): event for event in view.adapters}  # a later export replaces the file
    return [
        f"the exported adapter {path} failed its self-check: {event.get('message') or 'no reason recorded'}"
        for path, event in newest.items()
        if event.get("verified") is False
    ]


def job_describes_run(job: Job, view: RunView) -> bool:
    """Whether ``job`` (the newest job for this run folder) speaks for the run's latest session."""
    if job.started is None:
        return False  # queued or cancelled: it has not touched the folder
    return job.ended is None or view.last_started is None or view.last_started <= job.ended


def run_status(view: RunView, job: Job | None = None, holder_pid: int | None = None) -> RunStatus:
    """The run's status; ``job`` is the newest UI job for its folder, ``holder_pid`` the lock's holder."""
    if job is not None and job_describes_run(job, view):
        return job_status(view, job)
    problems = tuple(failed_exports(view))
    if view.status in ("completed", "stopped", "failed"):
        reason = view.error if view.status == "failed" else ""
        return _final(view.status, reason, problems)
    if holder_pid is not None:
        return RunStatus(view.status, view.status, problems)  # a live trainer the UI did not start
    where = f"at step {view.step}" if view.status == "running" else "before its first step"
    return RunStatus("interrupted", f"interrupted {where} (no trainer running)", problems)


def job_status(view: RunView, job: Job) -> RunStatus:
    """How a started job went, from its record (exit code, message) and its run's export checks."""
    problems = tuple(failed_exports(view))
    if job.state in ACTIVE_STATES:
        state = "waiting" if job.state == "running" and view.status == "waiting" else job.state
        return RunStatus(state, state, problems)
    if job.state in ("failed", "died"):
        reason = job.message or (describe_exit(job.exit_code) if job.exit_code is not None else DIED_MESSAGE)
        if job.exit_code not in (None, 0) and "exit" not in reason:
            reason = f"{reason} (exit {job.exit_code})"
        return _final("failed", reason, problems)
    return _final(job.state, job.message, problems)


def _final(state: str, reason: str, problems: tuple[str, ...]) -> RunStatus:
    if problems and state != "failed":
        return RunStatus("failed", f"failed — {state}, but an exported adapter failed its self-check", problems)
    return RunStatus(state, f"{state} — {reason}" if reason else state, problems)


# ---------------------------------------------------------------------------------------------
# Rendering


def _problems_html(status: RunStatus) -> str:
    if not status.problems:
        return ""
    items = "".join(f"<li>{html.escape(problem)}</li>" for problem in status.problems)
    return f'<ul class="ls-problems">{items}</ul>'


def outcome_html(name: str, view: RunView, status: RunStatus, log_tail: str = "") -> str:
    """The monitor's "last finished job" box: it stays while the next job runs beside it.

    A failure shows its reason (exit code included) in red and the last lines of the log.
    """
    css = "failed" if status.failed else status.state
    head = f"Last finished: <b>{html.escape(name)}</b> — {html.escape(status.label)} · step {view.step} / {view.total_steps or '?'}"
    detail = ""
    if status.state == "completed" and not status.failed:
        verified = any(event.get("verified") for event in view.adapters)
        check = " Exported adapter verified in diffusers." if verified else ""
        detail = f"<div>{check.strip()} Download it under <i>3 · Runs</i>.</div>"
    elif status.state == "stopped" and not status.failed:
        detail = "<div>The adapter so far was saved; <i>Resume</i> under <i>3 · Runs</i> continues from the last checkpoint.</div>"
    log = ""
    if status.failed and log_tail.strip():
        log = f'<pre class="ls-log">{html.escape(log_tail)}</pre>'
    return (
        f'<div id="last-outcome" class="ls-outcome {html.escape(css)}" data-state="{html.escape(status.state)}" '
        f'data-run="{html.escape(name)}"><div>{head}</div>{detail}{_problems_html(status)}{log}</div>'
    )


def run_info_html(name: str, view: RunView, status: RunStatus, adapter_found: bool) -> str:
    """The Runs tab's summary of one run: status line, red problems, the exported files and their checks."""
    css = "failed" if status.failed else status.state
    lines = [
        f'<div id="run-summary" class="ls-outcome {html.escape(css)}" data-state="{html.escape(status.state)}">'
        f"<b>{html.escape(name)}</b> — {html.escape(status.label)}, step {view.step}/{view.total_steps or '?'}"
        + (f", batch {html.escape(view.batch)}" if view.batch else "") + ".</div>",
        _problems_html(status),
    ]
    files = []
    newest = {str(event.get("path")): event for event in view.adapters}  # a resumed run exports the same files again
    for event in newest.values():
        verified = event.get("verified")
        check = {True: "verified in diffusers", None: "not verified"}.get(verified, "self-check FAILED")
        css_check = ' class="ls-bad"' if verified is False else ""
        files.append(
            f"<li><code>{html.escape(str(event.get('path')))}</code> ({html.escape(str(event.get('format')))}, "
            f"<span{css_check}>{check}</span>)</li>"
        )
    if files:
        lines.append(f"<ul>{''.join(files)}</ul>")
    if not adapter_found:
        lines.append("<div>No adapter exported yet.</div>")
    return "".join(lines)
