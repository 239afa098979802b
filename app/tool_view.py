"""A tool job's progress and outcome as HTML for the Test tab (pure Python, every string escaped).

The bar uses the monitor's ``ls-progress`` styles; a failure is drawn with ``ls-start-error`` (red, as a
refused Start), so an error looks the same wherever it appears on the page.
"""

from __future__ import annotations

import html
import json

from app.tool_jobs import ToolStatus


def tool_progress_html(status: ToolStatus | None, elem_id: str, label: str) -> str:
    if status is None:
        return f'<div id="{elem_id}" class="ls-progress idle" data-state="idle"></div>'
    percent = 100 * (1.0 if status.state == "completed" else status.fraction)
    if status.state == "running":
        detail = f"{status.what or 'starting the trainer process'}"
        detail += f" · {status.done} / {status.total}" if status.total else " …"
    else:
        detail = status.state
    return (
        f'<div id="{elem_id}" class="ls-progress {html.escape(status.state)}" data-state="{html.escape(status.state)}" '
        f'data-done="{status.done}" data-total="{status.total}">'
        f'<div class="ls-progress-label"><b>{html.escape(label)}</b> — {html.escape(detail)}</div>'
        f'<div class="ls-progress-track"><div class="ls-progress-fill" style="width:{percent:.1f}%"></div></div></div>'
    )


def tool_message_html(status: ToolStatus | None, elem_id: str) -> str:
    """Nothing while it runs; the output path when done; the error in red when it failed."""
    if status is None or status.state == "running":
        return f'<div id="{elem_id}"></div>'
    if status.state == "failed":
        return (
            f'<div id="{elem_id}" class="ls-start-error" data-state="failed">Failed: '
            f"{html.escape(status.message or 'no reason given')}</div>"
        )
    where = f"<br>Written to <code>{html.escape(str(status.output))}</code>" if status.output else ""
    return f'<div id="{elem_id}" data-state="completed">Done: {html.escape(status.message)}{where}</div>'


def error_html(message: str, elem_id: str) -> str:
    return f'<div id="{elem_id}" class="ls-start-error" data-state="refused">{html.escape(message)}</div>'


def pretty_json(text: str) -> str:
    """A tool's one-line JSON answer indented for reading; other text as it is."""
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text.strip()
