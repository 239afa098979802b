"""The UI's job manager: one training process at a time, a persistent editable queue, graceful stop.

Why it looks like this:

- Training always runs in a separate process (``app.job_runner`` wrapping ``python -m trainer train``),
  so a crash, an out-of-memory kill or ``kill -9`` never takes the UI down. It runs in its own session:
  the forced stop kills the whole process group (data-loader workers included) and nothing else.
- Every job is a folder ``runs_dir/.jobs/<job id>/`` (``job.json``, ``config.toml``, ``output.log``,
  and the runner's ``runner.json`` / ``exit.json``), each written atomically. A restarted UI reads them
  back: it re-attaches to a job that still runs, keeps the queue order and still learns the exit code
  of a run that ended while no UI was watching.
- One ``JobManager`` per ``runs_dir``: it is the only writer of ``job.json``. All methods are
  thread-safe (one lock); the getters return copies, so a UI thread never sees a half-updated job.
- With ``warm_standby`` (the UI's default) one trainer process is kept ready while nothing trains: it
  has imported torch, diffusers and the engine and waits in a hidden ``.standby-*`` folder, so *Start
  training* skips those seconds. A job takes it over by its ``config.toml`` and ``go.json``; its job
  folder then records the standby's pids and folder (``runner.json`` ``needle``) for the same checks.
- Imports no torch: only the standard library, ``trainer.atomic`` and ``trainer.events``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.job_runner import EXIT_FILE, LOG_PREFIX, NOT_STARTED, RUNNER_FILE, START_FILE
from app.multi_gpu import launch_command
from app.trainer_calls import trainer_env
from trainer.atomic import write_text
from trainer.events import EVENTS_FILE, EventCursor
from trainer.run_folder import LOG_FILE as TRAIN_LOG
from trainer.run_folder import STOP_FILE

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "stopping", "completed", "stopped", "failed", "died", "cancelled")
ACTIVE_STATES = ("running", "stopping")
FINAL_STATES = ("completed", "stopped", "failed", "died", "cancelled")

JOBS_DIR = ".jobs"
JOB_FILE = "job.json"
CONFIG_FILE = "config.toml"
OUTPUT_LOG = "output.log"
STANDBY_PREFIX = ".standby-"
STANDBY_RETRY_S = 60.0  # a standby that died by itself (a broken install?) is not restarted sooner
OWNER_FILE = "owner.json"  # trainer.commands.train.OWNER_FILE: the warm trainer ends with its UI
DIED_MESSAGE = "the trainer process ended without reporting (exit code unknown)"
_HAS_PROC = Path("/proc/self/cmdline").exists()


@dataclass
class Job:
    """One training run the UI asked for; persisted as ``job.json`` in its job folder."""

    id: str  # unique, sortable (UTC time first) and filesystem-safe
    name: str  # the run name (cfg.run.name)
    run_dir: Path  # where the trainer writes the run folder
    config_path: Path  # the TOML the trainer is started with (in the job folder)
    state: str
    created: float
    started: float | None = None
    ended: float | None = None
    exit_code: int | None = None  # the trainer's; negative: killed by that signal
    message: str = ""  # why it failed / died / was killed
    resume: bool = False
    # Bookkeeping beyond the UI's contract:
    pid: int | None = None  # the runner's pid, which is also the process group id
    order: int = 0  # queue position key (queued jobs start in ascending order)
    # The UI's working directory at submit: relative paths in the config mean what they would in a shell.
    cwd: str = ""
    # Size of events.jsonl when the job started: a resumed run's earlier `finished` event is not this job's.
    events_offset: int = 0
    stop_requested: float | None = None  # when stop() was called; the grace period counts from here
    killed: bool = False  # force-killed after the grace period
    gpus: list[int] = dataclasses.field(default_factory=list)  # 2+: one process per GPU via accelerate (app.multi_gpu)

    @property
    def job_dir(self) -> Path:
        return self.config_path.parent

    @property
    def output_log(self) -> Path:
        return self.job_dir / OUTPUT_LOG

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["run_dir"] = str(self.run_dir)
        data["config_path"] = str(self.config_path)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}  # newer/older records still load
        values["run_dir"] = Path(values["run_dir"])
        values["config_path"] = Path(values["config_path"])
        return cls(**values)


def describe_exit(exit_code: int) -> str:
    """A human reading of an exit code: signals by name, SIGKILL with its two usual causes."""
    signum = -exit_code if exit_code < 0 else exit_code - 128 if exit_code > 128 else 0
    try:
        name = signal.Signals(signum).name if signum else ""
    except ValueError:
        name = ""
    if signum == signal.SIGKILL:
        return f"killed by SIGKILL (exit {exit_code}: out of memory, or kill -9)"
    if name:
        return f"killed by {name} (exit {exit_code})"
    if exit_code == NOT_STARTED:
        return f"exit code {exit_code} (the trainer command could not be started)"
    return f"exit code {exit_code}"


def run_dir_from_config(config_text: str, runs_dir: Path, name: str, cwd: Path) -> tuple[str, Path]:
    """(run name, run folder) as the trainer will compute them: ``run.output_dir / run.name``.

    A relative ``output_dir`` is relative to the trainer's working directory, which is ``cwd``.
    Raises ValueError for text that is not TOML (there would be no run folder to watch).
    """
    try:
        data = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"the config is not valid TOML: {err}") from None
    run = data.get("run") if isinstance(data.get("run"), dict) else {}
    run_name = str(run.get("name") or name)
    output_dir = Path(str(run.get("output_dir") or runs_dir)).expanduser()
    if not output_dir.is_absolute():
        output_dir = cwd / output_dir
    return run_name, output_dir / run_name


def _tail_lines(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a possibly large, growing file, reading only its end."""
    if lines <= 0 or not path.is_file():
        return []
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        block = 16384
        while True:
            start = max(0, size - block)
            handle.seek(start)
            data = handle.read(size - start)
            if start == 0 or data.count(b"\n") > lines:
                break
            block *= 4
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    result = text.splitlines()
    if start > 0:
        result = result[1:]  # the first line is probably cut
    return result[-lines:]


def _pid_matches(pid: int | None, needle: str) -> bool:
    """Whether ``pid`` is alive and still the process we started (its command line names ``needle``).

    The command-line check guards against pid reuse after a UI restart; a zombie has an empty one.
    """
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not one we started
    if not _HAS_PROC:
        return True  # no /proc to look at (macOS): trust the pid
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return needle.encode() in cmdline


class JobManager:
    """Starts, queues, stops and watches training jobs; see the module docstring for why.

    Call ``tick()`` regularly (``start_background()`` does) to reap finished processes, start the next
    queued job and force-kill a job that ignored its stop request for ``grace_seconds``.
    """

    def __init__(
        self,
        runs_dir: Path,
        *,
        trainer_command: list[str] | None = None,
        grace_seconds: float = 30.0,
        warm_standby: bool = False,
    ):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.jobs_dir = self.runs_dir / JOBS_DIR
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.trainer_command = list(trainer_command or [sys.executable, "-m", "trainer", "train"])
        self.grace_seconds = float(grace_seconds)
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, subprocess.Popen] = {}  # runners this manager started (exact exit codes)
        self._last_id_us = 0
        self._thread: threading.Thread | None = None
        self._stop_thread = threading.Event()
        self.warm_standby = warm_standby
        self._standby: tuple[Path, subprocess.Popen] | None = None
        self._standby_retry_at = 0.0
        self._remove_standbys()
        self._load()

    # -- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Read every job record; re-attach to live processes and finalise the ones that ended meanwhile."""
        for job_file in sorted(self.jobs_dir.glob(f"*/{JOB_FILE}")):
            try:
                job = Job.from_dict(json.loads(job_file.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("skipping unreadable job record %s: %s", job_file, err)
                continue
            self._jobs[job.id] = job
        with self._lock:
            for job in self._jobs.values():
                if job.active and not self._alive(job):
                    self._finalise(job, None)

    def _save(self, job: Job) -> None:
        write_text(job.job_dir / JOB_FILE, json.dumps(job.to_dict(), indent=2))

    def _new_id(self) -> str:
        """UTC time to the microsecond (strictly increasing here) plus a random suffix across processes."""
        now_us = max(time.time_ns() // 1000, self._last_id_us + 1)
        self._last_id_us = now_us
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now_us // 1_000_000))
        return f"{stamp}-{now_us % 1_000_000:06d}-{secrets.token_hex(2)}"

    # -- the public API ------------------------------------------------------------------------

    def submit(self, config_text: str, name: str, *, resume: bool = False, gpus: list[int] | None = None) -> Job:
        """Store the config and queue a job; it starts at once when nothing else runs."""
        cwd = Path.cwd()
        run_name, run_dir = run_dir_from_config(config_text, self.runs_dir, name, cwd)
        with self._lock:
            job_id = self._new_id()
            job_dir = self.jobs_dir / job_id
            job_dir.mkdir(parents=True)
            config_path = job_dir / CONFIG_FILE
            write_text(config_path, config_text)
            order = max((j.order for j in self._jobs.values()), default=-1) + 1
            job = Job(
                id=job_id,
                name=run_name,
                run_dir=run_dir,
                config_path=config_path,
                state="queued",
                created=time.time(),
                resume=resume,
                order=order,
                cwd=str(cwd),
                gpus=list(gpus or []),
            )
            self._save(job)
            self._jobs[job_id] = job
            self.tick()
            return dataclasses.replace(job)

    def tick(self) -> None:
        """Reap an ended process, force-kill after the grace period, start the next queued job."""
        with self._lock:
            now = time.time()
            for job in [j for j in self._jobs.values() if j.active]:
                if self._alive(job):
                    overdue = job.stop_requested is not None and now - job.stop_requested >= self.grace_seconds
                    if job.state == "stopping" and overdue and not job.killed:
                        self._kill(job)
                    continue
                proc = self._procs.pop(job.id, None)
                self._finalise(job, proc.poll() if proc else None)
            while not any(j.active for j in self._jobs.values()):
                queue = self._queue()
                if not queue:
                    self._ensure_standby()  # idle: have a trainer ready for the next Start
                    break
                self._start(queue[0])

    def start_background(self, interval: float = 0.5) -> None:
        """Call ``tick()`` every ``interval`` seconds on a daemon thread (a second call does nothing)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop_thread.clear()
            self._thread = threading.Thread(
                target=self._loop, args=(interval,), name="lora-studio-jobs", daemon=True
            )
            self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop_thread.wait(interval):
            try:
                self.tick()
            except Exception:  # a full disk must not end the watching for good
                log.exception("job manager tick failed")

    def close(self) -> None:
        """Stop the background thread. A running trainer keeps running; the next JobManager re-attaches."""
        self._stop_thread.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self._thread = None
        with self._lock:
            self._remove_standbys()

    def jobs(self) -> list[Job]:
        """All jobs, newest first."""
        with self._lock:
            ordered = sorted(self._jobs.values(), key=lambda j: (j.created, j.id), reverse=True)
            return [dataclasses.replace(j) for j in ordered]

    def get(self, job_id: str) -> Job:
        with self._lock:
            return dataclasses.replace(self._job(job_id))

    def current(self) -> Job | None:
        """The running or stopping job, if any."""
        with self._lock:
            active = [j for j in self._jobs.values() if j.active]
            return dataclasses.replace(active[0]) if active else None

    def queued(self) -> list[Job]:
        """Queued jobs in the order they will start."""
        with self._lock:
            return [dataclasses.replace(j) for j in self._queue()]

    def stop(self, job_id: str) -> None:
        """Running: ask the trainer to save and stop (STOP file + SIGTERM); queued: cancel it.

        A job that is still alive ``grace_seconds`` later gets its process group SIGKILLed by tick().
        Stopping a job that is already stopping or over does nothing.
        """
        with self._lock:
            job = self._job(job_id)
            if job.state == "queued":
                job.state, job.ended = "cancelled", time.time()
                self._save(job)
                return
            if job.state != "running":
                return
            if job.run_dir.is_dir():
                with contextlib.suppress(OSError):
                    write_text(job.run_dir / STOP_FILE, "stop requested by the UI\n")
            self._signal_runner(job, signal.SIGTERM)
            job.state, job.stop_requested = "stopping", time.time()
            self._save(job)

    def remove_queued(self, job_id: str) -> None:
        """Take a queued job out of the queue and delete its record."""
        with self._lock:
            job = self._job(job_id)
            if job.state != "queued":
                raise ValueError(f"job {job_id} is {job.state}, not queued")
            del self._jobs[job_id]
            shutil.rmtree(job.job_dir, ignore_errors=True)

    def move_queued(self, job_id: str, delta: int) -> None:
        """Move a queued job ``delta`` places (-1: one earlier, +1: one later), clamped to the queue."""
        with self._lock:
            job = self._job(job_id)
            if job.state != "queued":
                raise ValueError(f"job {job_id} is {job.state}, not queued")
            queue = self._queue()
            keys = [j.order for j in queue]
            index = queue.index(job)
            queue.insert(max(0, min(len(queue) - 1, index + delta)), queue.pop(index))
            for key, queued_job in zip(keys, queue, strict=True):
                if queued_job.order != key:
                    queued_job.order = key
                    self._save(queued_job)

    def log_tail(self, job_id: str, lines: int = 40) -> str:
        """The last lines of the process's stdout+stderr (tracebacks included); train.log before it exists."""
        with self._lock:
            job = self._job(job_id)
        tail = _tail_lines(job.output_log, lines)
        if not any(line.strip() for line in tail):
            tail = _tail_lines(job.run_dir / TRAIN_LOG, lines)
        return "\n".join(tail)

    # -- internals (called with the lock held) -----------------------------------------------

    def _job(self, job_id: str) -> Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id!r}") from None

    def _queue(self) -> list[Job]:
        return sorted((j for j in self._jobs.values() if j.state == "queued"), key=lambda j: (j.order, j.id))

    def _runner_info(self, job: Job) -> dict[str, Any]:
        try:
            return json.loads((job.job_dir / RUNNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _alive(self, job: Job) -> bool:
        """Whether the job's runner or its trainer still runs (an own child by its Popen, else by pid)."""
        if (job.job_dir / EXIT_FILE).exists():
            return False  # the runner has reaped the trainer and is only exiting itself
        proc = self._procs.get(job.id)
        if proc is not None and proc.poll() is None:
            return True
        info = self._runner_info(job)
        runner_pid = job.pid or info.get("pid")
        if proc is None and _pid_matches(runner_pid, info.get("needle") or str(job.job_dir)):
            return True
        # The runner gone but its trainer still there (someone killed only the runner): still busy.
        return _pid_matches(info.get("trainer_pid"), info.get("needle") or str(job.config_path))

    def _signal_runner(self, job: Job, signum: int) -> None:
        proc = self._procs.get(job.id)
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signum)
            return
        info = self._runner_info(job)
        pid = job.pid or info.get("pid")
        if _pid_matches(pid, info.get("needle") or str(job.job_dir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        else:  # the runner is gone but the trainer may not be
            trainer_pid = info.get("trainer_pid")
            if _pid_matches(trainer_pid, info.get("needle") or str(job.config_path)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(trainer_pid, signum)

    def _kill(self, job: Job) -> None:
        """SIGKILL the job's whole process group (runner, trainer, its workers); only called while alive."""
        pgid = job.pid or self._runner_info(job).get("pid")
        log.warning("job %s ignored the stop request for %.0f s; killing it", job.id, self.grace_seconds)
        if pgid:
            # Safe against pid reuse: the group id stays taken while any member (checked alive) lives.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        job.killed = True
        self._save(job)

    def _start(self, job: Job) -> None:
        events = job.run_dir / EVENTS_FILE
        job.events_offset = events.stat().st_size if events.is_file() else 0
        job.state, job.started = "running", time.time()
        self._save(job)  # before the process exists: a UI crash right now leaves "running", later "died"
        if len(job.gpus) < 2 and self._start_on_standby(job):  # the warm trainer is one process
            return
        command = [
            sys.executable, "-m", "app.job_runner", str(job.job_dir), "--",
            *launch_command(self.trainer_command, job.gpus), str(job.config_path), "--no-progress",
            *(["--resume"] if job.resume else []),
        ]  # fmt: skip
        cwd = job.cwd if job.cwd and Path(job.cwd).is_dir() else str(self.runs_dir)
        try:
            with open(job.output_log, "ab") as output:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env=trainer_env(),  # the runner and `-m trainer` import from this checkout
                    start_new_session=True,
                )
        except OSError as err:
            job.state, job.ended, job.message = "failed", time.time(), f"could not start the trainer: {err}"
            self._save(job)
            return
        job.pid = proc.pid
        self._procs[job.id] = proc
        self._save(job)

    # -- the warm trainer (called with the lock held) -------------------------------------------

    def _ensure_standby(self) -> None:
        """Start a standby runner + trainer (``train --wait-for-start``) unless one is ready or starting."""
        if not self.warm_standby:
            return
        if self._standby is not None:
            if self._standby[1].poll() is None:
                return
            log.warning("the warm trainer ended by itself (exit %s); see %s", self._standby[1].returncode,
                        self._standby[0] / OUTPUT_LOG)
            self._remove_standbys()  # it died (say, out of memory while importing): make another, later
            self._standby_retry_at = time.monotonic() + STANDBY_RETRY_S
        if time.monotonic() < self._standby_retry_at:
            return
        folder = self.jobs_dir / f"{STANDBY_PREFIX}{secrets.token_hex(4)}"
        folder.mkdir(parents=True)
        write_text(folder / OWNER_FILE, json.dumps({"pid": os.getpid()}))
        command = [
            sys.executable, "-m", "app.job_runner", str(folder), "--",
            *self.trainer_command, str(folder / CONFIG_FILE), "--no-progress", "--wait-for-start",
        ]  # fmt: skip
        try:
            with open(folder / OUTPUT_LOG, "ab") as output:
                proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    cwd=str(self.runs_dir), env=trainer_env(), start_new_session=True,
                )
        except OSError as err:
            log.warning("could not start a warm trainer: %s", err)
            shutil.rmtree(folder, ignore_errors=True)
            return
        self._standby = (folder, proc)

    def _start_on_standby(self, job: Job) -> bool:
        """Hand ``job`` to the waiting standby trainer; False (and nothing changed) when there is none ready."""
        standby, self._standby = self._standby, None
        if standby is None:
            return False
        folder, proc = standby
        try:
            runner = json.loads((folder / RUNNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            runner = {}
        if proc.poll() is not None or not runner.get("trainer_pid"):
            self._standby = standby
            self._remove_standbys()  # dead, or its trainer not started yet: start cold
            return False
        # The trainer's command line names the standby folder: the pid checks look for it (``needle``).
        write_text(job.job_dir / RUNNER_FILE, json.dumps({**runner, "needle": str(folder)}))
        (job.job_dir / OUTPUT_LOG).unlink(missing_ok=True)
        os.symlink(folder / OUTPUT_LOG, job.job_dir / OUTPUT_LOG)
        shutil.copyfile(job.config_path, folder / CONFIG_FILE)
        go = {"job_dir": str(job.job_dir), "resume": job.resume, "cwd": job.cwd if job.cwd and Path(job.cwd).is_dir() else str(self.runs_dir)}
        write_text(folder / START_FILE, json.dumps(go))  # last: the trainer starts on this file
        job.pid = proc.pid
        self._procs[job.id] = proc
        self._save(job)
        log.info("job %s (%s) started on the warm trainer %s", job.id, job.name, folder.name)
        return True

    def _remove_standbys(self) -> None:
        """End and delete every standby that no job took over (this UI's, or a crashed UI's leftovers)."""
        if self._standby is not None:
            folder, proc = self._standby
            self._standby = None
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for folder in self.jobs_dir.glob(f"{STANDBY_PREFIX}*"):
            if (folder / START_FILE).exists():
                continue  # taken over by a job: it is that job's process now
            try:
                pid = int(json.loads((folder / RUNNER_FILE).read_text(encoding="utf-8"))["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                pid = 0
            if _pid_matches(pid, str(folder)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            shutil.rmtree(folder, ignore_errors=True)

    def _read_exit(self, job: Job) -> tuple[int | None, float | None]:
        """The runner's record: (exit code, when it ended), or (None, None) when it wrote none."""
        try:
            record = json.loads((job.job_dir / EXIT_FILE).read_text(encoding="utf-8"))
            return int(record["exit_code"]), float(record.get("ended") or time.time())
        except (OSError, ValueError, KeyError, TypeError):
            return None, None

    def _finished_event(self, job: Job) -> dict[str, Any] | None:
        """This job's own ``finished`` event (events before its start belong to an earlier session)."""
        events = EventCursor(job.run_dir / EVENTS_FILE, job.events_offset).read_new()
        finished = [e for e in events if e.get("type") == "finished"]
        return finished[-1] if finished else None

    def _last_output_line(self, job: Job) -> str:
        for line in reversed(_tail_lines(job.output_log, 20)):
            if line.strip() and not line.startswith(LOG_PREFIX):
                line = line.strip()
                return line if len(line) <= 300 else line[:297] + "..."
        return ""

    def _finalise(self, job: Job, process_code: int | None) -> None:
        """Set the final state from the runner's exit record (else the Popen code) and the finished event."""
        recorded, ended = self._read_exit(job)
        code = recorded if recorded is not None else process_code
        finished = self._finished_event(job) or {}
        status, error = finished.get("status"), finished.get("error")
        stop_signals = {-signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT}
        message = ""
        if job.killed and recorded is None:
            state = "stopped"
            code = -signal.SIGKILL if code is None or code >= 0 else code
            message = f"did not stop within {self.grace_seconds:g} s of the stop request; killed (SIGKILL)"
        elif status == "stopped":
            state = "stopped"
        elif status == "completed" and code in (0, None):
            state = "completed"
        elif status == "failed":
            state = "failed"
            message = str(error or (describe_exit(code) if code is not None else DIED_MESSAGE))
        elif code is None:
            state, message = "died", DIED_MESSAGE
        elif code == 0:
            state = "stopped" if job.stop_requested else "completed"
        elif job.stop_requested and code in stop_signals:
            state = "stopped"
            message = f"ended by the stop signal before it could save anything (exit code {code})"
        else:
            state, message = "failed", describe_exit(code)
            last = self._last_output_line(job)
            if last and code > 0:
                message = f"{message}: {last}"
        job.state, job.exit_code, job.message = state, code, message
        job.ended = job.ended or ended or time.time()
        self._save(job)
        log.info("job %s (%s) %s %s", job.id, job.name, state, message)
