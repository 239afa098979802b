"""Short trainer jobs the Test tab starts (a grid, merge, resize, convert, combine, info), followed by events.

Each job is ``python -m trainer <tool> ... --events FILE`` in a process of its own (the UI never imports
torch), in a folder ``runs_dir/.tools/<id>/`` holding its ``events.jsonl`` and ``output.log``. The
events contract is the tools' (``trainer/tools/progress.py``): ``progress`` lines with done/total/what,
then one ``finished`` line with ok/output/message. A process that ends without that line failed, and
the last line it printed says why. These jobs run beside training (they are short, and a grid is what
one looks at while a run trains); they do not take the training queue's slot.

Imports only the standard library and ``app.trainer_calls``: no Gradio, no torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.trainer_calls import trainer_command, trainer_env

TOOLS_DIR = ".tools"
EVENTS = "events.jsonl"
OUTPUT_LOG = "output.log"  # the tool's stderr: progress bars, warnings, and its error line when it fails
STDOUT = "stdout.txt"  # its answer (``info --json``, ``sample --json``), kept apart from the log


@dataclass
class ToolStatus:
    """What the page shows of one tool job."""

    state: str  # "running", "completed" or "failed"
    done: int = 0
    total: int = 0
    what: str = ""
    output: Path | None = None
    message: str = ""
    stdout: str = ""  # what the tool printed (``info --json`` prints its answer)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0


@dataclass
class ToolJob:
    id: str
    tool: str  # the trainer command: "sample", "merge", ...
    folder: Path
    command: list[str] = field(default_factory=list)

    @property
    def events(self) -> Path:
        return self.folder / EVENTS

    @property
    def log(self) -> Path:
        return self.folder / OUTPUT_LOG

    @property
    def stdout(self) -> Path:
        return self.folder / STDOUT


class ToolJobs:
    """Starts tool processes and reads their progress; one per UI process (made by the tab that uses it)."""

    def __init__(self, runs_dir: Path, command: list[str] | None = None):
        self.root = Path(runs_dir) / TOOLS_DIR
        self.command = list(command or trainer_command())
        self._procs: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()

    def start(self, args: list[str]) -> ToolJob:
        """Run ``<command> *args --events FILE`` in a new job folder (its working directory)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        folder = self.root / f"{stamp}-{args[0]}-{secrets.token_hex(3)}"
        folder.mkdir(parents=True)
        job = ToolJob(folder.name, args[0], folder, [*self.command, *args, "--events", str(folder / EVENTS)])
        with open(job.log, "wb") as log, open(job.stdout, "wb") as out:
            proc = subprocess.Popen(
                job.command, cwd=folder, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                env=trainer_env(), start_new_session=True,  # a stop ends the tool's whole process group
            )  # fmt: skip
        with self._lock:
            self._procs[job.id] = proc
        return job

    def job(self, job_id: str) -> ToolJob:
        folder = self.root / job_id
        if not job_id or "/" in job_id or not folder.is_dir():
            raise KeyError(f"no tool job {job_id!r}")
        return ToolJob(job_id, job_id.split("-")[2] if job_id.count("-") >= 3 else "", folder)

    def status(self, job_id: str) -> ToolStatus:
        """Progress from the events; the end from the ``finished`` line, else from the process's exit."""
        job = self.job(job_id)
        events = read_events(job.events)
        finished = next((e for e in reversed(events) if e.get("event") == "finished"), None)
        progress = next((e for e in reversed(events) if e.get("event") == "progress"), {})
        status = ToolStatus(
            "running", int(progress.get("done") or 0), int(progress.get("total") or 0), str(progress.get("what") or "")
        )
        if finished is not None:
            with self._lock:
                proc = self._procs.get(job_id)
            if proc is not None and proc.poll() is None:
                return status  # the line is written; the process is printing its last output: wait for it
            status.state = "completed" if finished.get("ok") else "failed"
            status.output = Path(finished["output"]) if finished.get("output") else None
            status.message = str(finished.get("message") or "")
            status.stdout = _read(job.stdout)
            if status.state == "completed" and status.total:
                status.done = status.total
            return status
        code = self._exit_code(job_id)
        if code is None:
            return status
        status.state = "failed"
        last = _last_line(job.log)
        status.message = f"the {job.tool or 'tool'} process ended without reporting (exit code {code})" + (
            f": {last}" if last else ""
        )
        return status

    def _exit_code(self, job_id: str) -> int | None:
        """The process's exit code, None while it runs; a job of an earlier UI process counts as ended (-1)."""
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is None:
            return -1
        return proc.poll()

    def stop(self, job_id: str) -> None:
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)

    def close(self) -> None:
        """End every tool process still running (the UI is shutting down)."""
        with self._lock:
            ids = list(self._procs)
        for job_id in ids:
            self.stop(job_id)


def read_events(path: Path) -> list[dict]:
    """Every whole JSON line of ``path`` (a line still being written does not parse and is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    events = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def _read(path: Path, limit: int = 200_000) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-limit:]
    except OSError:
        return ""


def _last_line(log: Path) -> str:
    """The last line the process printed (progress bars' carriage-return updates folded away)."""
    lines = [line.rsplit("\r", 1)[-1].strip() for line in _read(log, 20_000).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    return lines[-1] if len(lines[-1]) <= 300 else lines[-1][:297] + "..."
