"""The Train tab's queue, in run names: the running job first, then the queued ones in start order.

Job ids (``20261130-134501-…``) are how the job manager tells jobs apart, not how a person does; the
table and the picker show the run's name and its place. Pure Python (no Gradio).
"""

from __future__ import annotations

from app.jobs import Job

QUEUE_COLUMNS = ["#", "run", "state"]


def queue_rows(current: Job | None, queued: list[Job]) -> list[list[str]]:
    """``[["now", name, "running"], ["1", name, "queued"], …]``."""
    rows = [["now", current.name, current.state]] if current else []
    return rows + [[str(place), job.name, job.state] for place, job in enumerate(queued, start=1)]


def queue_choices(queued: list[Job]) -> list[tuple[str, str]]:
    """(label, job id) pairs for the queued-job picker: ``"2 · my-lora"``."""
    return [(f"{place} · {job.name}", job.id) for place, job in enumerate(queued, start=1)]


def job_name(jobs: list[Job], job_id: str) -> str:
    """The run name of ``job_id`` for a message, or the id when the job is gone."""
    return next((job.name for job in jobs if job.id == job_id), job_id)
