"""The UI's state: one ``Studio`` per UI process, made by ``launch.py`` (no module globals).

It holds the dataset store, the job manager and followers of run folders, and answers the questions
every tab asks (which runs exist and what they are, which job the monitor shows). No Gradio here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config_form import config_from_toml_text, ui_default_config
from app.datasets import DatasetStore
from app.jobs import JobManager
from app.run_status import (
    OUTCOME_LOG_LINES,
    RunStatus,
    job_describes_run,
    job_status,
    outcome_html,
    run_status,
)
from app.run_view import RunFollower, RunView, load_view
from trainer.config import Config
from trainer.run_lock import lock_holder

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATASET = "sample_data"


@dataclass
class Settings:
    """Where the UI keeps its files; made from ``launch.py``'s flags."""

    runs_dir: Path
    data_dir: Path
    sample_data: Path = REPO_ROOT / "sample_data"


class Studio:
    """The UI's state: datasets, jobs and followers of run folders. One per UI process."""

    def __init__(self, settings: Settings, jobs: JobManager, store: DatasetStore):
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self._followers: dict[Path, RunFollower] = {}
        settings.runs_dir.mkdir(parents=True, exist_ok=True)
        self._seed_sample_dataset()

    def _seed_sample_dataset(self) -> None:
        """First start: copy ``sample_data/`` in as an editable dataset, so Train works at once.

        Only when the data dir has no dataset at all: a user who deleted it does not get it back.
        """
        if self.store.names() or not self.settings.sample_data.is_dir():
            return
        name = self.store.create(SAMPLE_DATASET)
        # Through the upload path: the same checks and atomic writes, and the generator script is skipped.
        files = sorted(p for p in self.settings.sample_data.iterdir() if p.is_file() and p.suffix != ".py")
        self.store.add_files(name, [(p.name, p) for p in files])

    def default_config(self) -> Config:
        default_data = self.store.path(SAMPLE_DATASET) if SAMPLE_DATASET in self.store.names() else self.settings.sample_data
        return ui_default_config(self.settings.runs_dir, default_data)

    def form_config(self) -> Config:
        """What the form shows when the page opens: the config of the newest job, else the defaults.

        So a reload or a restarted UI never loses the settings someone trained (or queued) with.
        """
        for job in self.jobs.jobs():
            try:
                text = Path(job.config_path).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            cfg, _ = config_from_toml_text(text, job.name, self.settings.runs_dir)
            if cfg is not None:
                return cfg
        return self.default_config()

    def dataset_name_of(self, path: str) -> str | None:
        """The saved dataset whose folder is ``path``, if it is one."""
        target = Path(path).resolve()
        return next((name for name in self.store.names() if self.store.path(name).resolve() == target), None)

    def follower(self, run_dir: Path) -> RunFollower:
        if run_dir not in self._followers:
            self._followers[run_dir] = RunFollower(run_dir)
        return self._followers[run_dir]

    def forget(self, run_dir: Path) -> None:
        """Drop the follower of a run folder that was moved away (a run of the same name starts afresh)."""
        self._followers.pop(run_dir, None)

    def watched_job(self) -> Any | None:
        """The job the monitor shows: the running one, else the newest that has started."""
        current = self.jobs.current()
        if current is not None:
            return current
        return next((job for job in self.jobs.jobs() if job.started is not None), None)

    def last_finished_job(self) -> Any | None:
        """The job that ended last (a cancelled one never ran): the monitor keeps its outcome in view."""
        ended = [job for job in self.jobs.jobs() if job.final and job.started is not None]
        return max(ended, key=lambda job: (job.ended or 0.0, job.id), default=None)

    def last_outcome_html(self) -> str:
        """The last finished job's outcome box; a failure comes with its exit code and the log's last lines."""
        job = self.last_finished_job()
        if job is None:
            return ""
        view = self.follower(job.run_dir).poll()
        status = job_status(view, job)
        log = self.jobs.log_tail(job.id, OUTCOME_LOG_LINES) if status.failed else ""
        return outcome_html(job.name, view, status, log)

    def runs(self) -> list[tuple[Path, RunView, RunStatus]]:
        """Every run folder, newest first, with its events read and its status from all sources."""
        jobs = self._newest_job_per_run()
        return [(run_dir, *self.run_status_of(run_dir, jobs)) for run_dir in self.run_dirs()]

    def run_status_of(self, run_dir: Path, jobs: dict[Path, Any] | None = None) -> tuple[RunView, RunStatus]:
        """One run's events and its status: the job record first, then the events, then the lock."""
        view = load_view(run_dir)
        job = (self._newest_job_per_run() if jobs is None else jobs).get(run_dir.resolve())
        # Probe the lock only where nothing else can tell (no job record, no `finished` event).
        unexplained = (job is None or not job_describes_run(job, view)) and view.status in ("waiting", "running")
        return view, run_status(view, job, lock_holder(run_dir) if unexplained else None)

    def _newest_job_per_run(self) -> dict[Path, Any]:
        newest: dict[Path, Any] = {}
        for job in self.jobs.jobs():  # newest first
            if job.started is not None:
                newest.setdefault(job.run_dir.resolve(), job)
        return newest

    def reserved_names(self) -> set[str]:
        return {job.name for job in self.jobs.jobs()}

    def run_dirs(self) -> list[Path]:
        """Run folders under the runs dir, newest first."""
        root = self.settings.runs_dir
        runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "config.toml").exists()]
        return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


