"""Tab 3 · Runs: every run with its status; act on the picked one (resume, delete, sample now), see its
story (previews over time, loss, config, dataset health, export check), download it, try it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from app.health_view import health_table_html
from app.run_actions import delete_run, request_sample, resume_run, run_actions
from app.run_detail import (
    adapter_shape_html,
    preview_grid,
    preview_grid_html,
    run_config_text,
    run_facts,
    try_it_prompt,
)
from app.run_status import RunStatus, run_info_html
from app.run_view import RunView, best_checkpoint, load_view, loss_rows, tracking_hint
from app.trainer_calls import try_adapter

if TYPE_CHECKING:
    from app.studio import Studio

DETAIL_POLL_S = 5.0  # the detail view and table follow a running run this often (each redraw costs the browser CPU)
TRY_IT_DEFAULT_PROMPT = "sks"  # until a run is picked; then its preview prompt

RUNS_COLUMNS = ["run", "status", "steps", "final loss", "started", "base model"]


def runs_table(runs: list[tuple[Path, RunView, RunStatus]]) -> Any:
    """The Runs tab's table (a pandas Styler): one row a run, a failed run's status in red.

    A run that failed before its first event still shows when it started and on which base model.
    """
    rows = []
    for run_dir, view, status in runs:
        facts = run_facts(run_dir, view)
        loss = f"{view.final_loss:.4f}" if view.final_loss is not None else ""
        rows.append([run_dir.name, status.label, f"{view.step}/{view.total_steps}", loss, facts.started, facts.base_model])
    frame = pd.DataFrame(rows, columns=RUNS_COLUMNS)
    red = [status.failed for _, _, status in runs]
    return frame.style.apply(
        lambda column: ["color: #b42318; font-weight: 600" if bad else "" for bad in red], subset=["status"]
    )


def build(studio: Studio) -> tuple[Any, list[Any], list[Any]]:
    refresh = gr.Button("Refresh", elem_id="runs-refresh", size="sm")
    table = gr.Dataframe(headers=RUNS_COLUMNS, interactive=False, elem_id="runs-table",
                         label="Runs (click a row to see it below)")
    with gr.Row(equal_height=False):
        pick = gr.Dropdown([], label="Run", elem_id="run-pick", scale=3)
        with gr.Column(scale=2, min_width=160), gr.Row():
            resume = gr.Button("Resume", elem_id="run-resume", visible=False, variant="primary", size="md")
            sample_now = gr.Button("Sample now", elem_id="run-sample-now", visible=False, size="md")
            delete = gr.Button("Delete (to the trash)", elem_id="run-delete", visible=False, variant="stop", size="md")
    action_message = gr.Markdown(elem_id="run-action-message")
    with gr.Row():
        kohya = gr.DownloadButton("Adapter (kohya: ComfyUI / A1111 / diffusers)", elem_id="download-kohya", visible=False)
        diffusers = gr.DownloadButton("Adapter (diffusers / PEFT)", elem_id="download-diffusers", visible=False)
        config = gr.DownloadButton("Config (TOML)", elem_id="download-config", visible=False)
        best = gr.DownloadButton("Best checkpoint", elem_id="download-best", visible=False)  # lowest validation loss
    run_info = gr.HTML(elem_id="run-info", label="Status and export check")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gr.Markdown("#### Previews over time (rows: prompts, columns: steps)")
            previews = gr.HTML(elem_id="run-previews-box")
        with gr.Column(scale=2):
            loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss: raw, smoothed, validation; checkpoints as points",
                                    elem_id="run-loss", height=240, visible=False)
            loss_hint = gr.Markdown(elem_id="run-loss-hint")
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("#### Config as it ran")
            config_view = gr.Code(language=None, elem_id="run-config", interactive=False, max_lines=24)
        with gr.Column():
            gr.Markdown("#### Dataset health when it started")
            health = gr.HTML(elem_id="run-health")
    timer = gr.Timer(DETAIL_POLL_S, active=False)  # on while the picked run trains: the grid and loss follow it
    with gr.Accordion("Try it: base vs. adapted, same seed", open=True):
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value=TRY_IT_DEFAULT_PROMPT, scale=3, elem_id="try-prompt")
            filled_prompt = gr.State("")  # the prompt last filled in from a run, replaced on the next pick
            seed = gr.Number(1234, precision=0, label="Seed", scale=1)
            strength = gr.Slider(0, 2, 1.0, step=0.05, label="LoRA strength", scale=2)
            steps = gr.Slider(1, 50, 20, step=1, label="Steps", scale=2)
        generate = gr.Button("Generate", elem_id="try-generate")
        try_gallery = gr.Gallery(label="Base (left) and adapted (right)", columns=2, height=320, elem_id="try-gallery",
                                 object_fit="contain")
        try_message = gr.Markdown()

    detail_outputs = [resume, sample_now, delete, kohya, diffusers, config, run_info, previews, loss_plot, loss_hint,
                      config_view, health, timer, best]

    def list_runs():
        runs = studio.runs()
        names = [run_dir.name for run_dir, _, _ in runs]
        return runs_table(runs), names

    def list_and_choose(current: str | None):
        """The table, and the picked run's detail refreshed too (its adapter may be new since)."""
        frame, names = list_runs()
        name = current if current in names else (names[0] if names else None)
        return frame, gr.update(choices=names, value=name), *choose(name)

    def choose(name: str | None):
        hidden = gr.update(visible=False)
        if not name or not (studio.settings.runs_dir / name).is_dir():
            return (hidden, hidden, hidden, hidden, hidden, hidden, "No run picked.", "", hidden, "", "", "",
                    gr.Timer(active=False), hidden)
        run_dir = studio.settings.runs_dir / name
        view, status = studio.run_status_of(run_dir)
        queued = any(job.run_dir.resolve() == run_dir.resolve() for job in studio.jobs.queued())
        actions = run_actions(status, queued)
        k, d = view.adapter_path("kohya"), view.adapter_path("diffusers")
        cfg_file = run_dir / "config.toml"
        report = view.dataset_report
        top = best_checkpoint(view)
        hint = "" if view.losses else "No loss yet: the curve appears here after the run's first logged step."
        return (
            gr.update(visible=actions.resume),
            gr.update(visible=actions.sample_now),
            gr.update(visible=actions.delete),
            gr.update(value=str(k), visible=True) if k else hidden,
            gr.update(value=str(d), visible=True) if d else hidden,
            gr.update(value=str(cfg_file), visible=True) if cfg_file.exists() else hidden,
            run_info_html(name, view, status, adapter_found=bool(k or d)) + adapter_shape_html(view),
            preview_grid_html(preview_grid(view)),
            gr.update(value=pd.DataFrame(loss_rows(view)) if view.losses else None, visible=bool(view.losses)),
            "\n\n".join(part for part in (hint, tracking_hint(run_dir)) if part),
            run_config_text(run_dir),
            health_table_html(report) if report else "No health report: the run stopped before it read its dataset.",
            gr.Timer(DETAIL_POLL_S, active=status.state in ("waiting", "running", "stopping") or queued),
            gr.update(value=str(top.adapter), label=f"{top.label} (kohya)", visible=True) if top and top.adapter else hidden,
        )

    def on_row(evt: gr.SelectData):
        row = getattr(evt, "row_value", None)
        return row[0] if row else gr.skip()

    def act(action):
        def handler(name: str | None):
            result = action(studio, name)
            frame, pick_update, *detail = list_and_choose(name)
            return result.message, frame, pick_update, *detail
        return handler

    def prompt_for_run(name: str | None, current: str, filled: str):
        """Try it starts from the picked run's preview prompt, so base vs. adapted shows what it learned. A
        prompt the user typed is kept: only the default or the last prompt filled in here is replaced (the
        pick also changes when the table refreshes)."""
        if not name or (current or "").strip() not in {"", TRY_IT_DEFAULT_PROMPT, filled}:
            return gr.skip(), gr.skip()
        suggested = try_it_prompt(studio.settings.runs_dir / name)
        return suggested, suggested

    def do_try(name: str | None, text: str, seed_value: float, strength_value: float, steps_value: float):
        if not name:
            return [], "Pick a run first."
        view = load_view(studio.settings.runs_dir / name)
        adapter = view.adapter_path("kohya") or view.adapter_path("diffusers")
        if adapter is None:
            return [], "This run has no adapter yet."
        out = studio.settings.runs_dir / name / "try-it"
        images, message = try_adapter(adapter, text or TRY_IT_DEFAULT_PROMPT, int(seed_value or 0), strength_value, int(steps_value), out)
        return [(str(image.path), image.caption) for image in images], message

    outputs = [table, pick, *detail_outputs]
    refresh.click(list_and_choose, pick, outputs)
    table.select(on_row, None, pick)
    pick.change(choose, pick, detail_outputs)
    pick.change(prompt_for_run, [pick, prompt, filled_prompt], [prompt, filled_prompt])
    timer.tick(list_and_choose, pick, outputs, show_progress="hidden")  # the table's status and steps too
    resume.click(act(resume_run), pick, [action_message, *outputs])
    delete.click(act(delete_run), pick, [action_message, *outputs])
    sample_now.click(act(request_sample), pick, [action_message, *outputs])
    generate.click(do_try, [pick, prompt, seed, strength, steps], [try_gallery, try_message])
    return list_and_choose, [pick], outputs
