"""What *Start training* says before it queues anything: the trainer's pre-flight check, as page text.

``trainer.preflight`` imports no torch and answers in well under two seconds, so it runs here, in the UI
process, on the form's config: a wrong model path or dataset folder is refused beside the button (in
red) before a job or a run folder exists, instead of failing in the trainer half a minute later and
leaving a failed run behind. Warnings are shown and the run starts anyway. Pure functions, no Gradio.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from trainer.config import Config
from trainer.preflight import PreflightReport, preflight


@dataclass
class StartCheck:
    """``ok``: the job may be submitted. ``message``: Markdown for beside Start (the errors, or the warnings)."""

    ok: bool
    message: str
    report: PreflightReport


def start_check(cfg: Config) -> StartCheck:
    report = preflight(cfg, resume=False)
    if not report.ok:
        return StartCheck(False, problems_markdown(report.errors), report)
    return StartCheck(True, warnings_markdown(report.warnings), report)


def problems_markdown(problems: list[str]) -> str:
    """Problems that stop Start, in red; each names its setting as the config file does."""
    return _block("ls-start-error", "Fix these before starting:", problems)


def warnings_markdown(warnings: list[str]) -> str:
    return _block("ls-start-warning", "Warnings:", warnings) if warnings else ""


def _block(css_class: str, heading: str, items: list[str]) -> str:
    """Markdown in a <div> whose class ``ui.CSS`` colours (red errors, amber warnings).

    Blank lines around the Markdown inside: CommonMark ends an HTML block at a blank line, so the list
    in between is still rendered as Markdown.
    """
    lines = "\n".join(f"- {html.escape(item, quote=False)}" for item in items)
    return f'<div class="{css_class}">\n\n**{heading}**\n{lines}\n\n</div>'


def estimate_markdown(report: PreflightReport, cfg: Config, processes: int = 1) -> str:
    """The pre-flight's memory and time estimate (``trainer.estimate``) as a line for beside Start."""
    estimate = report.resources
    if estimate is None:
        return ""
    from trainer.distributed import effective_batch

    batch = effective_batch(cfg.training.batch_size, processes, cfg.training.gradient_accumulation_steps)
    per_gpu = " on each GPU" if processes > 1 else ""
    return f"**Estimate**{per_gpu}: {html.escape(estimate.describe().removeprefix('estimate: '))}; each step trains on {batch.describe()} images."
