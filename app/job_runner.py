"""The parent process of one training run: forwards the graceful stop and records how the trainer ended.

Why a wrapper: only a process's parent can learn its exit code, and the UI may be restarted while a
run trains. This small process stays the trainer's parent for the trainer's whole life, so the exit
code survives a UI restart: it forwards SIGTERM/SIGINT to the trainer (the trainer then saves and
stops), waits for it, and writes ``exit.json`` atomically into the job folder, where the next UI
process (``app.jobs.JobManager``) reads it to tell "completed", "failed with exit code 3" and "killed
(out of memory?)" apart.

Usage: ``python -m app.job_runner JOB_DIR -- TRAINER_COMMAND...``

A warm trainer (``JobManager(warm_standby=True)``) is started this way in a standby folder before any job
exists; the job it serves is named in that folder's ``go.json`` (``job_dir``), and the exit record goes there.

Imports only the standard library and ``trainer.atomic``: never torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from trainer.atomic import write_text

EXIT_FILE = "exit.json"  # {"exit_code": int (negative: killed by that signal), "ended": float}
RUNNER_FILE = "runner.json"  # {"pid": runner pid, "trainer_pid": int, "started": float}
LOG_PREFIX = "[job runner]"  # lines the runner itself writes into the job's output.log
START_FILE = "go.json"  # a standby's start order (trainer.commands.train.START_FILE): {"job_dir": ...}
NOT_STARTED = 127  # the shell's "command not found"


def record_exit(job_dir: Path, exit_code: int) -> None:
    write_text(job_dir / EXIT_FILE, json.dumps({"exit_code": exit_code, "ended": time.time()}))


def served_job_dir(job_dir: Path) -> Path:
    """The job folder this runner ended up serving: its own, or the one a standby was started for."""
    try:
        return Path(json.loads((job_dir / START_FILE).read_text(encoding="utf-8"))["job_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return job_dir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m app.job_runner JOB_DIR -- COMMAND...", file=sys.stderr)
        return 2
    job_dir, command = Path(argv[0]), argv[2:]
    child: subprocess.Popen | None = None
    pending: list[int] = []

    def forward(signum: int, frame) -> None:
        # The trainer is in this process's group but gets the signal from here only, so its data-loader
        # workers are not terminated under it; a forced kill goes to the whole group (JobManager).
        if child is None:
            pending.append(signum)
            return
        print(f"{LOG_PREFIX} forwarding {signal.Signals(signum).name} to the trainer", file=sys.stderr, flush=True)
        child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    except OSError as err:
        print(f"{LOG_PREFIX} cannot start the trainer {command[0]!r}: {err}", file=sys.stderr, flush=True)
        record_exit(job_dir, NOT_STARTED)
        return NOT_STARTED
    write_text(
        job_dir / RUNNER_FILE,
        json.dumps({"pid": os.getpid(), "trainer_pid": child.pid, "started": time.time()}),
    )
    for signum in pending:  # a stop that came while the trainer was being started
        child.send_signal(signum)
    exit_code = child.wait()
    record_exit(served_job_dir(job_dir), exit_code)
    return exit_code if exit_code >= 0 else 128 - exit_code


if __name__ == "__main__":
    sys.exit(main())
