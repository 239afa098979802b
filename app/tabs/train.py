"""Tab 2 · Train: the settings form (generated from the trainer's config docs) beside the live monitor."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from app.config_form import (
    apply_preset,
    config_from_toml_text,
    config_to_toml_text,
    config_to_values,
    preset_changes,
    section_title,
    settings_for_new_base,
    unique_run_name,
    values_to_config,
)
from app.multi_gpu import gpu_choices, picked_gpu_ids
from app.oom_restart import OFFERS, restart_config, restart_offers
from app.queue_view import QUEUE_COLUMNS, job_name, queue_choices, queue_rows
from app.run_status import job_status
from app.run_view import (
    ACTIVE_POLL_S,
    MonitorMemo,
    RunView,
    gallery_items,
    loss_rows,
    lr_rows,
    monitor_memo,
    progress_html,
)
from app.start_check import estimate_markdown, problems_markdown, start_check
from trainer.atomic import write_text
from trainer.config import BUILTIN_MODELS, PRESETS, ConfigError, section_doc
from trainer.config import load_config as read_config_file
from trainer.gpus import visible_gpus

CHARTS_EMPTY = (
    "**Loss and learning rate** charts appear here once the run logs its first step; **previews** below, "
    "every *Previews · every n steps* and at the end."
)

if TYPE_CHECKING:
    from app.studio import Studio


def build(studio: Studio, fields: list) -> list[Any]:
    defaults = config_to_values(studio.form_config())
    # Settings on the left, the live run on the right: Start, progress and charts stay in view while editing.
    with gr.Row(equal_height=False, elem_id="train-row"):
        with gr.Column(scale=5):
            with gr.Row():
                preset = gr.Dropdown(["(none)", *PRESETS], value="(none)", label="Preset", scale=2,
                                     info="Fills the form with proven settings for a style or a character LoRA.",
                                     elem_id="preset")
                apply_preset_button = gr.Button("Apply preset", scale=1, elem_id="apply-preset")
            preset_message = gr.Markdown(elem_id="preset-message")
            with gr.Row():
                save_config = gr.DownloadButton("Save config (TOML)", elem_id="save-config", size="sm")
                load_config = gr.UploadButton("Load config (TOML)", file_types=[".toml"], elem_id="load-config", size="sm")
            config_message = gr.Markdown(elem_id="config-message")
            widgets = _settings_form(fields, defaults)
        with gr.Column(scale=4, elem_id="monitor"):
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start-btn", scale=2)
                estimate = gr.Button("Estimate memory and time", elem_id="estimate-btn", scale=1, size="sm")
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
            gpus = visible_gpus()  # nvidia-smi, no torch; more than one: the run can use several (accelerate)
            gpu_pick = gr.CheckboxGroup(gpu_choices(gpus), value=gpu_choices(gpus), label="GPUs to use",
                                        info="Two or more: one training process per GPU (accelerate launch --multi_gpu); "
                                             "each step then trains on batch size × GPUs images.",
                                        visible=len(gpus) > 1, elem_id="gpu-pick")
            start_message = gr.Markdown(elem_id="start-message")
            progress = gr.HTML(progress_html(None), elem_id="progress-box")
            outcome = gr.HTML(elem_id="run-outcome")  # the last finished job: stays while the next one runs
            with gr.Row(visible=False, elem_id="oom-restart") as oom_row:  # after a run ran out of memory
                oom_buttons = {kind: gr.Button(label, size="sm", elem_id=f"oom-{kind}") for kind, label in OFFERS.items()}
            charts_hint = gr.Markdown(CHARTS_EMPTY, elem_id="charts-hint", elem_classes="ls-empty")
            # Hidden while empty: an empty chart is a blank box with an icon that says nothing.
            loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss: raw, smoothed, validation; checkpoints as points",
                                    elem_id="loss-plot", height=240, visible=False)
            lr_plot = gr.LinePlot(x="step", y="lr", title="Learning rate", elem_id="lr-plot", height=160, visible=False)
            previews = gr.Gallery(label="Previews (newest first)", columns=4, height=260, elem_id="preview-gallery",
                                  object_fit="contain")
            with gr.Accordion("Log", open=False):
                log_tail = gr.Textbox(lines=12, max_lines=12, show_label=False, elem_id="log-tail", autoscroll=True)
            with gr.Accordion("Queue", open=False):
                queue_table = gr.Dataframe(headers=QUEUE_COLUMNS, interactive=False, elem_id="queue-table")
                queued_pick = gr.Dropdown([], label="Queued run", elem_id="queued-pick")
                with gr.Row():
                    up = gr.Button("Move up", size="sm")
                    down = gr.Button("Move down", size="sm")
                    remove = gr.Button("Remove from queue", size="sm")
                queue_message = gr.Markdown(elem_id="queue-message")
    timer = gr.Timer(ACTIVE_POLL_S)  # the first poll sets the pace: slower while nothing runs
    seen = gr.State(None)
    stopping = gr.State(None)  # the job Stop was pressed for: its outcome replaces "Stopping…" when it ends

    def with_gpu_pick(values: tuple) -> tuple[list, list[str] | None]:
        """The form's values and the *GPUs to use* ticks (the last input; absent when called with the form alone)."""
        if len(values) == len(widgets) + 1:
            return list(values[:-1]), values[-1]
        return list(values), None

    def do_start(*values):
        values, picked = with_gpu_pick(values)
        cfg, problems = values_to_config(list(values), studio.settings.runs_dir)
        if problems:
            return problems_markdown(problems), gr.skip()
        chosen = picked_gpu_ids(picked if picked is not None else gpu_choices(gpus), gpus) if len(gpus) > 1 else []
        return submit(cfg, chosen)

    def submit(cfg, gpu_ids: list[int]):
        name = unique_run_name(studio.settings.runs_dir, cfg.run.name, studio.reserved_names())
        renamed = f" (as **{name}**: `{cfg.run.name}` already exists)" if name != cfg.run.name else ""
        cfg.run.name = name
        check = start_check(cfg)  # pre-flight, in this process: refused here, nothing is queued or created
        if not check.ok:
            return check.message, gr.skip()
        warnings = f"\n\n{check.message}" if check.message else ""
        job = studio.jobs.submit(config_to_toml_text(cfg), name, gpus=gpu_ids)
        studio.jobs.tick()
        job = studio.jobs.get(job.id)
        if job.state == "queued":
            position = [j.id for j in studio.jobs.queued()].index(job.id) + 1
            return f"Queued **{name}**{renamed}: position {position}; it starts when the running job ends.{warnings}", gr.skip()
        return f"Started **{name}**{renamed}.{warnings}", gr.Timer(ACTIVE_POLL_S)  # follow it from the next second

    def do_estimate(*values):
        values, picked = with_gpu_pick(values)
        cfg, problems = values_to_config(list(values), studio.settings.runs_dir)
        if problems:
            return problems_markdown(problems)
        check = start_check(cfg)
        if not check.ok:
            return check.message
        processes = max(1, len(picked_gpu_ids(picked, gpus))) if len(gpus) > 1 else 1
        return estimate_markdown(check.report, cfg, processes) or "No estimate for this model (its configs are unknown)."

    def oom_job():
        """The last finished job, when its run ran out of memory."""
        job = studio.last_finished_job()
        if job is None or studio.follower(job.run_dir).poll().failure_reason != "out_of_memory":
            return None
        return job

    def oom_row_update():
        job = oom_job()
        try:
            kinds = restart_offers(read_config_file(job.config_path)) if job else []
        except ConfigError:
            kinds = []
        return [gr.update(visible=bool(kinds)), *(gr.update(visible=k in kinds) for k in OFFERS)]

    def do_oom_restart(kind: str):
        def handler():
            job = oom_job()
            if job is None:
                return "The last run did not run out of memory; nothing to restart.", gr.skip()
            cfg = restart_config(read_config_file(job.config_path), kind)
            cfg.run.name = f"{job.name}-{'gc' if kind == 'checkpointing' else 'half-batch'}"
            return submit(cfg, job.gpus)
        return handler

    def do_stop():
        job = studio.jobs.current()
        if job is None:
            return "Nothing is running.", None
        studio.jobs.stop(job.id)
        return f"Stopping **{job.name}**: the trainer saves the adapter and exits (forced after a grace period).", job.id

    def stop_outcome(job_id: str | None) -> str | None:
        """What became of the job Stop was pressed for, once it ended (None while it still runs)."""
        try:
            job = studio.jobs.get(job_id) if job_id else None
        except KeyError:
            return ""
        if job is None or not job.final:
            return None
        view = studio.follower(job.run_dir).poll()
        status = job_status(view, job)
        if status.state == "stopped":
            return (f"**{job.name}** stopped at step {view.step} of {view.total_steps or '?'}; the adapter so far was "
                    "saved. *Resume* under *3 · Runs* continues it.")
        return f"**{job.name}** ended: {status.label}."

    def do_preset(name: str, *values):
        cfg, problems = values_to_config(list(values), studio.settings.runs_dir)
        if cfg is None:
            return [gr.skip()] * len(values) + [problems_markdown(problems)]
        preset_cfg = apply_preset(cfg, name)
        changed = preset_changes(cfg, preset_cfg)
        listed = "\n".join(f"- `{change}`" for change in changed)
        said = f"Preset **{name}** changed {len(changed)} setting(s):\n{listed}" if changed else f"Preset **{name}** changed nothing."
        return [*config_to_values(preset_cfg), said]

    def do_base_changed(*values):
        """A new base in the form: settings made for the built-in shapes model go, and the form says which.
        Only the changed fields are sent back, so what the user types meanwhile elsewhere is kept."""
        cfg, _ = values_to_config(list(values), studio.settings.runs_dir)
        if cfg is None:
            return [gr.skip()] * (len(values) + 1)
        before = config_to_values(cfg)
        adjusted, changed = settings_for_new_base(cfg)
        if not changed:
            return [gr.skip()] * (len(values) + 1)
        updates = [new if new != old else gr.skip() for old, new in zip(before, config_to_values(adjusted), strict=True)]
        listed = "\n".join(f"- `{change}`" for change in changed)
        return [*updates, f"For base **{adjusted.model.base}**, changed:\n{listed}"]

    def do_save_config(*values):
        cfg, problems = values_to_config(list(values), studio.settings.runs_dir)
        if cfg is None:
            raise gr.Error("Fix these first: " + "; ".join(problems))
        out = studio.settings.runs_dir / ".configs" / f"{cfg.run.name}.toml"
        write_text(out, config_to_toml_text(cfg))
        return str(out)

    def do_load_config(file: str | None):
        if not file:
            return [gr.skip()] * len(widgets) + [gr.skip()]
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            return [gr.skip()] * len(widgets) + [f"Could not read {path.name}: {err}"]
        cfg, problems = config_from_toml_text(text, path.name, studio.settings.runs_dir)
        if cfg is None:
            return [gr.skip()] * len(widgets) + ["**Could not load the config:**\n" + "\n".join(f"- {p}" for p in problems)]
        return [*config_to_values(cfg), f"Loaded **{path.name}**."]

    def refresh(last: MonitorMemo | None, picked: str | None, stopped_id: str | None):
        studio.jobs.tick()
        job = studio.watched_job()
        view: RunView | None = studio.follower(job.run_dir).poll() if job else None
        state = job.state if job else ""
        if job and job.state == "running" and view is not None and view.status == "waiting":
            state = "waiting"
        elif job and view is not None and job.final:
            state = job_status(view, job).state  # e.g. "failed" for a completed run whose export check failed
        queued = studio.jobs.queued()
        current = studio.jobs.current()
        queue = queue_rows(current, queued)
        log = studio.jobs.log_tail(job.id, 40) if job else ""
        outcome = studio.last_outcome_html()
        send, memo = (last or MonitorMemo()).updates(
            monitor_memo(job.id if job else None, state, view, queue, log, outcome), time.monotonic()
        )
        queued_ids = [j.id for j in queued]
        stop_message = stop_outcome(stopped_id)

        def part(name: str, make: Any) -> Any:
            return make() if name in send else gr.skip()

        return [
            part("progress", lambda: progress_html(view, state) if job else progress_html(None)),
            part("outcome", lambda: outcome),
            *(oom_row_update() if "outcome" in send else [gr.skip()] * (len(OFFERS) + 1)),
            part("charts", lambda: _chart(loss_rows(view) if view and view.losses else [])),
            part("charts", lambda: _chart(lr_rows(view) if view and view.lrs else [])),
            part("charts", lambda: gr.update(visible=not (view and view.losses))),
            part("gallery", lambda: gallery_items(view) if view else []),
            part("queue", lambda: pd.DataFrame(queue, columns=QUEUE_COLUMNS)),
            part("log", lambda: log),
            # The picked job stays picked while the queue around it changes.
            part("queue", lambda: gr.update(choices=queue_choices(queued),
                                            value=picked if picked in queued_ids else (queued_ids or [None])[0])),
            gr.skip() if stop_message is None else stop_message,
            gr.skip() if stop_message is None else None,
            memo,
            part("poll_s", lambda: gr.Timer(memo.poll_s)),
        ]

    def queue_action(kind: str):
        def handler(job_id: str | None):
            if not job_id:
                return "Pick a queued run first."
            name = job_name(studio.jobs.jobs(), job_id)
            try:
                if kind == "remove":
                    studio.jobs.remove_queued(job_id)
                    return f"Removed **{name}** from the queue."
                studio.jobs.move_queued(job_id, -1 if kind == "up" else 1)
            except (KeyError, ValueError):  # it started or was removed meanwhile
                return f"**{name}** is no longer queued (it started or was removed); nothing changed."
            return f"Moved **{name}** {kind}."
        return handler

    start.click(do_start, [*widgets, gpu_pick], [start_message, timer])
    estimate.click(do_estimate, [*widgets, gpu_pick], start_message)
    for kind, button in oom_buttons.items():
        button.click(do_oom_restart(kind), None, [start_message, timer])
    stop.click(do_stop, None, [start_message, stopping])
    apply_preset_button.click(do_preset, [preset, *widgets], [*widgets, preset_message])
    save_config.click(do_save_config, widgets, save_config)
    load_config.upload(do_load_config, load_config, [*widgets, config_message])
    base_widget = widgets[[field.key for field in fields].index("model.base")]
    base_widget.input(do_base_changed, widgets, [*widgets, config_message])
    timer.tick(
        refresh, [seen, queued_pick, stopping],
        [progress, outcome, oom_row, *oom_buttons.values(), loss_plot, lr_plot, charts_hint, previews, queue_table, log_tail, queued_pick, start_message, stopping,
         seen, timer],
        show_progress="hidden",  # no loading overlay flashing over the charts every second
    )
    up.click(queue_action("up"), queued_pick, queue_message)
    down.click(queue_action("down"), queued_pick, queue_message)
    remove.click(queue_action("remove"), queued_pick, queue_message)
    return widgets


def _chart(rows: list[dict[str, Any]]) -> Any:
    """A chart's data; hidden while there is none (the hint above it says what will appear)."""
    return gr.update(value=pd.DataFrame(rows) if rows else None, visible=bool(rows))


def _settings_form(fields: list, defaults: list[Any]) -> list[Any]:
    """One widget per trainer setting: basic ones in view, the rest in a closed accordion per section."""
    widgets: list[Any] = [None] * len(fields)
    sections: dict[str, list[int]] = {}
    for i, field in enumerate(fields):
        sections.setdefault(field.info.section, []).append(i)
    for section, indices in sections.items():
        basic = [i for i in indices if not fields[i].advanced]
        advanced = [i for i in indices if fields[i].advanced]
        title = section_title(section)
        with gr.Accordion(title, open=bool(basic), elem_id=f"section-{section}"):
            gr.Markdown(f"{section_doc(section)} In the config file: `[{section}]`.", elem_classes="ls-section-doc")
            with gr.Row(equal_height=False):
                for i in basic:
                    widgets[i] = _widget(fields[i], defaults[i])
            if advanced:
                with gr.Accordion(f"More {title.lower()} settings", open=False), gr.Row(equal_height=False):
                    for i in advanced:
                        widgets[i] = _widget(fields[i], defaults[i])
    return widgets


def _widget(field: Any, value: Any) -> Any:
    common = {"label": field.label, "info": field.help, "elem_id": "cfg-" + field.key.replace(".", "-"), "min_width": 220}
    kind = field.kind
    if field.key == "model.base":
        return gr.Dropdown(list(BUILTIN_MODELS), value=value, allow_custom_value=True, **common)
    if kind == "dropdown":
        return gr.Dropdown(list(field.info.choices), value=value, **common)
    if kind == "checkbox":
        return gr.Checkbox(value=value, **common)
    if kind == "int":
        return gr.Number(value=value, precision=0, **common)
    if kind == "float":
        return gr.Number(value=value, step=1e-5 if abs(value or 0) < 0.01 else 0.01, **common)
    if kind == "lines":
        return gr.Textbox(value=value, lines=2, **common)
    return gr.Textbox(value=value, **common)


