"""Tab 4 · Test: what an adapter does, as a grid of prompts × strengths; and the Tools panel (merge, resize,
convert, combine, info). Every render and tool is a trainer process (``app.tool_jobs``) followed by its
events; this module only builds components and wires them to ``tool_requests`` and ``tool_view``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from app.adapter_choices import adapter_choices
from app.tool_jobs import ToolJobs
from app.tool_requests import (
    CONVERT_TARGETS,
    GRID_BY,
    MERGE_FORMATS,
    TOOLS,
    RequestError,
    grid_args,
    picked_adapters,
    tool_args,
)
from app.tool_view import error_html, pretty_json, tool_message_html, tool_progress_html

if TYPE_CHECKING:
    from app.studio import Studio

SLOTS = 3  # adapters one grid or merge takes at once; more is a combine first
POLL_S = 1.0
TOOL_HELP = {
    "merge": "Bake the adapters (at their weights) into the base model: a diffusers folder or one .safetensors "
    "checkpoint that A1111 and ComfyUI open as a model. Written to the run's `merged/` folder.",
    "resize": "Lower Adapter 1's rank by SVD (smaller file, most of the effect kept). Written to the run's `tools/`.",
    "convert": "Rewrite Adapter 1 in another format (kohya for A1111/ComfyUI, diffusers, PEFT).",
    "combine": "Several adapters at their weights into one file (exact, or at Rank by SVD).",
    "info": "Format, ranks, alphas, base model and training metadata of Adapter 1.",
}


def build(studio: Studio) -> Any:
    """Build the tab; returns the function that refreshes the adapter lists (called when the tab opens)."""
    jobs = ToolJobs(studio.settings.runs_dir)
    choices = adapter_choices(studio.run_dirs())
    gr.Markdown(
        "Pick adapters (a run's final export, a checkpoint, or a path) and render a grid: one row per prompt, "
        "the base model first, then each strength. Every cell has the same seed, so what changes is the adapter alone."
    )
    slots = []
    with gr.Row():
        for number in range(1, SLOTS + 1):
            with gr.Column(min_width=220):
                first = choices[0][1] if choices and number == 1 else None
                path = gr.Dropdown(choices, value=first, label=f"Adapter {number}", allow_custom_value=True,
                                   elem_id=f"test-adapter-{number}")  # fmt: skip
                weight = gr.Number(1.0, label=f"Weight {number}", elem_id=f"test-weight-{number}")
                slots += [path, weight]
    refresh = gr.Button("Refresh adapter lists", size="sm", elem_id="test-refresh")
    with gr.Row():
        prompts = gr.Textbox("sks\nsks, a red circle", lines=3, label="Prompts (one per line)", scale=3,
                             elem_id="test-prompts")  # fmt: skip
        with gr.Column(scale=2):
            strengths = gr.Textbox("0, 0.5, 0.75, 1", label="Strengths", elem_id="test-strengths",
                                   info="0 is the base model; each adapter acts at weight × strength")  # fmt: skip
            grid_by = gr.Radio(list(GRID_BY), value="all together", label="Several adapters", elem_id="test-grid-by",
                               info="all together: combined per strength; side by side: each alone (compare checkpoints)")  # fmt: skip
        with gr.Column(scale=2):
            seed = gr.Number(1234, precision=0, label="Seed", elem_id="test-seed")
            steps = gr.Number(20, precision=0, label="Steps", elem_id="test-steps")
            base = gr.Textbox("", label="Base model (empty: the run's)", elem_id="test-base")
    render = gr.Button("Render grid", variant="primary", elem_id="test-render")
    grid_progress = gr.HTML(tool_progress_html(None, "test-progress", "grid"))
    grid_message = gr.HTML(elem_id="test-message-box")
    grid_image = gr.Image(label="Grid", type="filepath", interactive=False, elem_id="test-grid", visible=False)
    grid_download = gr.DownloadButton("Download grid (PNG)", visible=False, elem_id="test-download")
    grid_job = gr.State("")
    grid_timer = gr.Timer(POLL_S, active=False)

    with gr.Accordion("Tools: merge into the base, resize, convert, combine, info", open=True):
        tool = gr.Radio(list(TOOLS), value="merge", label="Tool", elem_id="tool-pick")
        tool_help = gr.Markdown(TOOL_HELP["merge"], elem_id="tool-help")
        with gr.Row():
            tool_base = gr.Textbox("", label="Base model to merge into (empty: the run's)", elem_id="tool-base")
            merge_format = gr.Radio(list(MERGE_FORMATS), value="diffusers folder", label="Merged model as",
                                    elem_id="tool-format")  # fmt: skip
            rank = gr.Number(0, precision=0, label="Rank (resize; combine: 0 = exact)", elem_id="tool-rank")
            target = gr.Dropdown(list(CONVERT_TARGETS), value="kohya", label="Convert to", elem_id="tool-target")
        run_tool = gr.Button("Run tool", elem_id="tool-run")
        tool_progress = gr.HTML(tool_progress_html(None, "tool-progress", "tool"))
        tool_message = gr.HTML(elem_id="tool-message-box")
        tool_download = gr.DownloadButton("Download result", visible=False, elem_id="tool-download")
        tool_output = gr.Code(language="json", label="Info", visible=False, elem_id="tool-info", interactive=False,
                              max_lines=30)  # fmt: skip
        tool_job = gr.State("")
        tool_timer = gr.Timer(POLL_S, active=False)

    hidden = gr.update(visible=False)

    def refresh_lists(*current):
        """New runs' adapters in every list; Adapter 1 takes the newest when it is still empty."""
        fresh = adapter_choices(studio.run_dirs())
        first = current[0] or (fresh[0][1] if fresh else None)
        return [gr.update(choices=fresh, value=first), *[gr.update(choices=fresh) for _ in range(SLOTS - 1)]]

    def start_grid(*values):
        *slot_values, prompt_text, strength_text, seed_value, steps_value, by, base_text = values
        try:
            adapters = picked_adapters(list(zip(slot_values[::2], slot_values[1::2], strict=True)))
            args = grid_args(adapters, prompt_text, strength_text, seed_value, steps_value, by, base_text, jobs.root / "grids")
        except RequestError as err:
            return "", tool_progress_html(None, "test-progress", "grid"), error_html(str(err), "test-message"), \
                gr.Timer(active=False), hidden, hidden  # fmt: skip
        job = jobs.start(args)
        status = jobs.status(job.id)
        return (job.id, tool_progress_html(status, "test-progress", "grid"), tool_message_html(status, "test-message"),
                gr.Timer(POLL_S, active=True), hidden, hidden)  # fmt: skip

    def poll_grid(job_id: str):
        if not job_id:
            return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(), gr.skip()
        status = jobs.status(job_id)
        progress = tool_progress_html(status, "test-progress", "grid")
        if status.state == "running":
            return progress, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        done = status.state == "completed" and status.output is not None and status.output.is_file()
        image = gr.update(value=str(status.output), visible=True) if done else hidden
        download = gr.update(value=str(status.output), visible=True) if done else hidden
        return progress, tool_message_html(status, "test-message"), gr.Timer(active=False), image, download

    def start_tool(*values):
        *slot_values, tool_name, base_text, fmt, rank_value, target_value = values
        try:
            adapters = picked_adapters(list(zip(slot_values[::2], slot_values[1::2], strict=True)))
            args = tool_args(tool_name, adapters, base_text, fmt, rank_value, target_value)
        except RequestError as err:
            return "", tool_progress_html(None, "tool-progress", "tool"), error_html(str(err), "tool-message"), \
                gr.Timer(active=False), hidden, hidden  # fmt: skip
        job = jobs.start(args)
        status = jobs.status(job.id)
        return (job.id, tool_progress_html(status, "tool-progress", tool_name), tool_message_html(status, "tool-message"),
                gr.Timer(POLL_S, active=True), hidden, hidden)  # fmt: skip

    def poll_tool(job_id: str):
        if not job_id:
            return gr.skip(), gr.skip(), gr.Timer(active=False), gr.skip(), gr.skip()
        job = jobs.job(job_id)
        status = jobs.status(job_id)
        progress = tool_progress_html(status, "tool-progress", job.tool)
        if status.state == "running":
            return progress, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        # info answers on stdout; any other tool's output file is offered for download (a folder is named only).
        is_file = job.tool != "info" and status.state == "completed" and status.output is not None and status.output.is_file()
        download = gr.update(value=str(status.output), visible=True) if is_file else hidden
        info = gr.update(value=pretty_json(status.stdout), visible=True) if job.tool == "info" and status.stdout.strip() else hidden
        return progress, tool_message_html(status, "tool-message"), gr.Timer(active=False), download, info

    refresh.click(refresh_lists, slots[::2], slots[::2])
    grid_inputs = [*slots, prompts, strengths, seed, steps, grid_by, base]
    render.click(start_grid, grid_inputs, [grid_job, grid_progress, grid_message, grid_timer, grid_image, grid_download])
    grid_timer.tick(poll_grid, grid_job, [grid_progress, grid_message, grid_timer, grid_image, grid_download],
                    show_progress="hidden")  # fmt: skip
    tool.change(lambda name: TOOL_HELP.get(name, ""), tool, tool_help)
    tool_inputs = [*slots, tool, tool_base, merge_format, rank, target]
    run_tool.click(start_tool, tool_inputs, [tool_job, tool_progress, tool_message, tool_timer, tool_download, tool_output])
    tool_timer.tick(poll_tool, tool_job, [tool_progress, tool_message, tool_timer, tool_download, tool_output],
                    show_progress="hidden")  # fmt: skip
    return refresh_lists, slots[::2]
