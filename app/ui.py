"""The Gradio page: Dataset → Train → Runs.

This module only wires widgets to the pure parts (``config_form``, ``run_view``, ``datasets``, ``jobs``,
``trainer_calls``). State lives in one ``Studio`` object made by ``launch.py`` (no module globals), and
the page polls it with a ``gr.Timer`` (every second while a job runs or waits, every 5 s otherwise), so
reloading the page or restarting the UI shows the running job again: the job manager re-attaches, and
the page reads the run folder, never memory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app.config_form import (
    apply_preset,
    config_from_toml_text,
    config_to_toml_text,
    config_to_values,
    form_fields,
    ui_default_config,
    unique_run_name,
    values_to_config,
)
from app.datasets import DatasetStore
from app.jobs import JobManager
from app.run_status import (
    OUTCOME_LOG_LINES,
    RunStatus,
    job_describes_run,
    job_status,
    outcome_html,
    run_info_html,
    run_status,
)
from app.run_view import (
    ACTIVE_POLL_S,
    MonitorMemo,
    RunFollower,
    RunView,
    gallery_items,
    load_view,
    loss_rows,
    lr_rows,
    monitor_memo,
    progress_html,
)
from app.start_check import problems_markdown, start_check
from app.trainer_calls import auto_caption, dataset_report, try_adapter
from trainer.atomic import write_text
from trainer.config import BUILTIN_MODELS, PRESETS, Config, section_doc
from trainer.run_lock import lock_holder

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DATASET = "sample_data"
BULK_ACTIONS = {
    "add prefix": "prefix",
    "add suffix": "suffix",
    "find / replace": "replace",
    "set trigger word (first tag)": "trigger",
    "remove duplicate tags": "dedupe",
    "sort tags": "sort",
}

CSS = """
.ls-progress { font-size: 0.95em; padding: 6px 0; }
.ls-progress-track { height: 14px; background: var(--neutral-200); border-radius: 7px; overflow: hidden; margin-top: 4px; }
.ls-progress-fill { height: 100%; background: var(--color-accent); transition: width 0.5s; }
.ls-progress.failed .ls-progress-fill, .ls-progress.died .ls-progress-fill { background: #d9534f; }
.ls-progress.completed .ls-progress-fill { background: #3c9a5f; }
#start-message { min-height: 1.5em; }
#start-message .ls-start-error, #start-message .ls-start-error * { color: #d9534f !important; }
#start-message .ls-start-warning, #start-message .ls-start-warning * { color: #b7791f !important; }
#monitor { position: sticky; top: 8px; align-self: flex-start; }
.ls-outcome { padding: 4px 0 4px 10px; border-left: 4px solid var(--neutral-300); margin: 4px 0; }
.ls-outcome.completed { border-left-color: #3c9a5f; }
.ls-outcome.failed { border-left-color: #d9534f; color: #b42318; }
.ls-problems, .ls-bad { color: #b42318; font-weight: 600; }
.ls-log { font-size: 0.8em; max-height: 14em; overflow: auto; white-space: pre-wrap; color: var(--body-text-color); }
"""
# Fonts that Gradio serves itself, then the system's: the page loads nothing from the internet.
THEME = gr.themes.Default(
    font=[gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"],
)


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


# ---------------------------------------------------------------------------------------------
# Page


def build_ui(studio: Studio) -> gr.Blocks:
    fields = form_fields()
    with gr.Blocks(title="lora-studio", analytics_enabled=False) as page:
        gr.Markdown(
            "# lora-studio\nDrop in a few images, press **Start training**, watch it learn, download a "
            "`.safetensors` LoRA for diffusers, ComfyUI and AUTOMATIC1111. "
            "The built-in tiny model and the sample dataset are selected, so *Start training* works right away."
        )
        with gr.Tabs():
            with gr.Tab("1 · Dataset", id="tab-dataset"):
                dataset_widgets = _dataset_tab(studio)
            with gr.Tab("2 · Train", id="tab-train"):
                widgets = _train_tab(studio, fields)
            with gr.Tab("3 · Runs", id="tab-runs") as runs_tab:
                list_runs, runs_inputs, runs_outputs = _runs_tab(studio)
        # The dataset picker fills `dataset.path` in the training form.
        path_box = widgets[fields_index(fields, "dataset.path")]
        dataset_widgets["select"].change(
            lambda name: str(studio.store.path(name)) if name else gr.skip(), dataset_widgets["select"], path_box
        )
        # A reloaded page (or a restarted UI) shows what is on disk now, not what was there at build time:
        # the datasets, and in the form the settings of the newest job with its dataset selected.
        # The form's values reach the browser in a hidden box first; a browser-side step then fills only
        # the fields still as the page was served, so what someone typed while the page opened is kept.
        loaded_form = gr.JSON(visible=False)

        def on_open(current: str | None):
            cfg = studio.form_config()
            return [config_to_values(cfg), *dataset_widgets["on_load"](studio.dataset_name_of(cfg.dataset.path) or current)]

        page.load(
            on_open, dataset_widgets["select"],
            [loaded_form, dataset_widgets["select"], dataset_widgets["gallery"], dataset_widgets["table"]],
        ).then(None, [loaded_form, *widgets], widgets, js=keep_edits_js([widget.value for widget in widgets]))
        page.load(list_runs, runs_inputs, runs_outputs)
        runs_tab.select(list_runs, runs_inputs, runs_outputs)
    return page


def fields_index(fields: list, key: str) -> int:
    return next(i for i, f in enumerate(fields) if f.key == key)


def keep_edits_js(served: list[Any]) -> str:
    """Browser-side merge of the form on page open: loaded values go only where the user has not typed.

    Filling the form straight from the page's load event raced the user: its answer arrived after the
    first keystrokes and replaced them (then a job started with the previous job's name). Here a field
    still equal to what the page was served with takes the loaded value; any other field keeps what
    was typed. Runs in the browser in one go, so no keystroke can fall between the check and the write.
    """
    return f"""(loaded, ...current) => {{
        const served = {json.dumps(served)};
        if (!Array.isArray(loaded)) return current;
        const same = (a, b) => (a ?? "") === (b ?? "") || (typeof a !== "boolean" && a !== "" && b !== ""
            && a !== null && b !== null && Number(a) === Number(b));
        return current.map((value, i) => (same(value, served[i]) ? loaded[i] : value));
    }}"""


def _dataset_tab(studio: Studio) -> dict[str, Any]:
    store = studio.store
    names = store.names()
    with gr.Row():
        select = gr.Dropdown(
            names, value=SAMPLE_DATASET if SAMPLE_DATASET in names else (names[0] if names else None),
            label="Dataset", info="Saved datasets in the data folder. Training uses the selected one.",
            elem_id="dataset-select", scale=3,
        )
        new_name = gr.Textbox(label="New dataset name", placeholder="e.g. my-dog", elem_id="new-dataset-name", scale=2)
        create = gr.Button("Create dataset", elem_id="create-dataset", scale=1)
    upload = gr.File(
        label="Drop images, .txt captions or a .zip here (many at once)", file_count="multiple",
        elem_id="dataset-upload",
    )
    replace = gr.Checkbox(False, label="Replace existing files with the same name", elem_id="replace-existing")
    upload_result = gr.Markdown(elem_id="upload-result")
    gallery = gr.Gallery(label="Images", columns=8, height=260, elem_id="dataset-gallery", allow_preview=True)
    table = gr.Dataframe(
        headers=["image", "caption"], datatype=["str", "str"], interactive=True, column_count=2,
        label="Captions (edit in place, then save)", elem_id="caption-table", static_columns=[0], wrap=True,
    )
    with gr.Row():
        save = gr.Button("Save captions", elem_id="save-captions")
        check = gr.Button("Check dataset", elem_id="check-dataset")
    with gr.Accordion("Bulk caption edits", open=False), gr.Row():
        action = gr.Dropdown(list(BULK_ACTIONS), value="add prefix", label="Action", elem_id="bulk-action")
        text = gr.Textbox(label="Text (prefix, suffix or trigger word)")
        old = gr.Textbox(label="Find")
        new = gr.Textbox(label="Replace with")
        apply = gr.Button("Apply to all captions", elem_id="bulk-apply")
    with gr.Accordion("Auto-caption with a model", open=False), gr.Row():
        caption_model = gr.Textbox(label="Captioning model", scale=3,
                                   info="A local folder or a hub id of a BLIP-style image-to-text model or a booru tagger.")
        caption_kind = gr.Dropdown(["blip", "tagger"], value="blip", label="Kind", scale=1)
        caption_overwrite = gr.Checkbox(False, label="Also replace existing captions", scale=1)
        caption_run = gr.Button("Caption images", scale=1)
    with gr.Accordion("Danger zone", open=False):
        delete = gr.Button("Move this dataset to the trash", variant="stop")
    report = gr.Markdown(elem_id="dataset-report")

    def show(name: str | None):
        if not name:
            return [], pd.DataFrame({"image": [], "caption": []})
        items = store.items(name)
        return (
            [(str(item.path), f"{item.image} · {item.width}×{item.height}") for item in items],
            pd.DataFrame({"image": [item.image for item in items], "caption": [item.caption for item in items]}),
        )

    def do_create(raw: str):
        if not raw.strip():
            return gr.skip(), "Type a name for the new dataset first."
        name = store.create(raw)
        return gr.update(choices=store.names(), value=name), f"Created dataset **{name}**: now drop images into it."

    def do_upload(files: list[str] | None, name: str | None, raw_new: str, overwrite: bool):
        if not files:
            return gr.skip(), gr.skip(), None
        if not name or (name == SAMPLE_DATASET and raw_new.strip()):
            name = store.create(raw_new.strip() or f"dataset-{time.strftime('%Y%m%d-%H%M%S')}")
        result = store.add_files(name, [(Path(f).name, Path(f)) for f in files], overwrite=overwrite)
        return gr.update(choices=store.names(), value=name), result.summary(), None

    def do_save(name: str | None, frame: pd.DataFrame):
        if not name:
            return "Choose a dataset first."
        changed = 0
        current = {item.image: item.caption for item in store.items(name)}
        for image, caption in zip(frame["image"], frame["caption"], strict=True):
            if image in current and (caption or "") != current[image]:
                store.set_caption(name, image, caption or "")
                changed += 1
        return f"Saved {changed} caption(s)."

    def do_bulk(name: str | None, label: str, text_value: str, old_value: str, new_value: str):
        if not name:
            return gr.skip(), gr.skip(), "Choose a dataset first."
        try:
            changed = store.bulk_edit(name, BULK_ACTIONS[label], text=text_value, old=old_value, new=new_value)
        except ValueError as err:  # e.g. "find" left empty: say so beside the button
            return gr.skip(), gr.skip(), str(err)
        images, frame = show(name)
        return images, frame, f"{label}: {changed} caption(s) changed."

    def do_check(name: str | None):
        if not name:
            return "Choose a dataset first."
        return "```\n" + dataset_report(store.path(name)) + "\n```"

    def do_caption(name: str | None, model: str, kind: str, overwrite: bool):
        if not name:
            return gr.skip(), gr.skip(), "Choose a dataset first."
        if not model.strip():
            return gr.skip(), gr.skip(), "Give the captioning model's folder or hub id."
        message = auto_caption(store.path(name), model.strip(), kind, overwrite)
        images, frame = show(name)
        return images, frame, message

    def do_delete(name: str | None):
        if not name:
            return gr.skip(), "Choose a dataset first."
        store.delete_dataset(name)
        names = store.names()
        return gr.update(choices=names, value=names[0] if names else None), f"Moved **{name}** to the trash folder."

    select.change(show, select, [gallery, table])
    create.click(do_create, new_name, [select, upload_result])
    upload.upload(do_upload, [upload, select, new_name, replace], [select, upload_result, upload]).then(
        show, select, [gallery, table]
    )
    save.click(do_save, [select, table], upload_result)
    apply.click(do_bulk, [select, action, text, old, new], [gallery, table, upload_result])
    check.click(do_check, select, report)
    caption_run.click(do_caption, [select, caption_model, caption_kind, caption_overwrite], [gallery, table, upload_result])
    delete.click(do_delete, select, [select, upload_result])

    def on_load(name: str | None):
        names = store.names()
        name = name if name in names else (names[0] if names else None)
        return gr.update(choices=names, value=name), *show(name)

    return {"select": select, "gallery": gallery, "table": table, "on_load": on_load}


def _train_tab(studio: Studio, fields: list) -> list[Any]:
    defaults = config_to_values(studio.form_config())
    # Settings on the left, the live run on the right: Start, progress and charts stay in view while editing.
    with gr.Row(equal_height=False):
        with gr.Column(scale=5):
            with gr.Row():
                preset = gr.Dropdown(["(none)", *PRESETS], value="(none)", label="Preset", scale=2,
                                     info="Fills the form with proven settings for a style or a character LoRA.",
                                     elem_id="preset")
                apply_preset_button = gr.Button("Apply preset", scale=1)
            with gr.Row():
                save_config = gr.DownloadButton("Save config (TOML)", elem_id="save-config", size="sm")
                load_config = gr.UploadButton("Load config (TOML)", file_types=[".toml"], elem_id="load-config", size="sm")
            widgets = _settings_form(fields, defaults)
        with gr.Column(scale=4, elem_id="monitor"):
            with gr.Row():
                start = gr.Button("Start training", variant="primary", elem_id="start-btn", scale=2)
                stop = gr.Button("Stop", variant="stop", elem_id="stop-btn", scale=1)
            start_message = gr.Markdown(elem_id="start-message")
            progress = gr.HTML(progress_html(None), elem_id="progress-box")
            outcome = gr.HTML(elem_id="run-outcome")  # the last finished job: stays while the next one runs
            loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss (raw and smoothed)",
                                    elem_id="loss-plot", height=240)
            lr_plot = gr.LinePlot(x="step", y="lr", title="Learning rate", elem_id="lr-plot", height=160)
            previews = gr.Gallery(label="Previews (newest first)", columns=4, height=260, elem_id="preview-gallery")
            with gr.Accordion("Log", open=False):
                log_tail = gr.Textbox(lines=12, max_lines=12, show_label=False, elem_id="log-tail", autoscroll=True)
            with gr.Accordion("Queue", open=False):
                queue_table = gr.Dataframe(headers=["job", "run", "state"], interactive=False, elem_id="queue-table")
                queued_pick = gr.Dropdown([], label="Queued job", elem_id="queued-pick")
                with gr.Row():
                    up = gr.Button("Move up", size="sm")
                    down = gr.Button("Move down", size="sm")
                    remove = gr.Button("Remove from queue", size="sm")
    timer = gr.Timer(ACTIVE_POLL_S)  # the first poll sets the pace: slower while nothing runs
    seen = gr.State(None)

    def do_start(*values):
        cfg, problems = values_to_config(list(values), studio.settings.runs_dir)
        if problems:
            return problems_markdown(problems), gr.skip()
        name = unique_run_name(studio.settings.runs_dir, cfg.run.name, studio.reserved_names())
        renamed = f" (as **{name}**: `{cfg.run.name}` already exists)" if name != cfg.run.name else ""
        cfg.run.name = name
        check = start_check(cfg)  # pre-flight, in this process: refused here, nothing is queued or created
        if not check.ok:
            return check.message, gr.skip()
        warnings = f"\n\n{check.message}" if check.message else ""
        job = studio.jobs.submit(config_to_toml_text(cfg), name)
        studio.jobs.tick()
        job = studio.jobs.get(job.id)
        if job.state == "queued":
            position = [j.id for j in studio.jobs.queued()].index(job.id) + 1
            return f"Queued **{name}**{renamed}: position {position}; it starts when the running job ends.{warnings}", gr.skip()
        return f"Started **{name}**{renamed}.{warnings}", gr.Timer(ACTIVE_POLL_S)  # follow it from the next second

    def do_stop():
        job = studio.jobs.current()
        if job is None:
            return "Nothing is running."
        studio.jobs.stop(job.id)
        return f"Stopping **{job.name}**: the trainer saves the adapter and exits (forced after a grace period)."

    def do_preset(name: str, *values):
        cfg, problems = values_to_config(list(values), studio.settings.runs_dir)
        if cfg is None:
            return [gr.skip()] * len(values) + ["**Fix these first:**\n" + "\n".join(f"- {p}" for p in problems)]
        return [*config_to_values(apply_preset(cfg, name)), f"Preset **{name}** applied."]

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

    def refresh(last: MonitorMemo | None, picked: str | None):
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
        queue = [[j.id, j.name, j.state] for j in ([current] if current else []) + queued]
        log = studio.jobs.log_tail(job.id, 40) if job else ""
        outcome = studio.last_outcome_html()
        send, memo = (last or MonitorMemo()).updates(
            monitor_memo(job.id if job else None, state, view, queue, log, outcome), time.monotonic()
        )
        queued_ids = [j.id for j in queued]

        def part(name: str, make: Any) -> Any:
            return make() if name in send else gr.skip()

        return [
            part("progress", lambda: progress_html(view, state) if job else progress_html(None)),
            part("outcome", lambda: outcome),
            part("charts", lambda: pd.DataFrame(loss_rows(view)) if view and view.losses else None),
            part("charts", lambda: pd.DataFrame(lr_rows(view)) if view and view.lrs else None),
            part("gallery", lambda: gallery_items(view) if view else []),
            part("queue", lambda: pd.DataFrame(queue, columns=["job", "run", "state"])),
            part("log", lambda: log),
            # The picked job stays picked while the queue around it changes.
            part("queue", lambda: gr.update(choices=queued_ids, value=picked if picked in queued_ids else (queued_ids or [None])[0])),
            gr.skip(),
            memo,
            part("poll_s", lambda: gr.Timer(memo.poll_s)),
        ]

    def queue_action(kind: str):
        def handler(job_id: str | None):
            if not job_id:
                return "Pick a queued job first."
            try:
                if kind == "remove":
                    studio.jobs.remove_queued(job_id)
                    return f"Removed {job_id} from the queue."
                studio.jobs.move_queued(job_id, -1 if kind == "up" else 1)
            except (KeyError, ValueError) as err:  # it started or was removed meanwhile
                return f"Could not change the queue: {err}"
            return f"Moved {job_id} {kind}."
        return handler

    start.click(do_start, widgets, [start_message, timer])
    stop.click(do_stop, None, start_message)
    apply_preset_button.click(do_preset, [preset, *widgets], [*widgets, start_message])
    save_config.click(do_save_config, widgets, save_config)
    load_config.upload(do_load_config, load_config, [*widgets, start_message])
    timer.tick(
        refresh, [seen, queued_pick],
        [progress, outcome, loss_plot, lr_plot, previews, queue_table, log_tail, queued_pick, start_message, seen, timer],
        show_progress="hidden",  # no loading overlay flashing over the charts every second
    )
    up.click(queue_action("up"), queued_pick, start_message)
    down.click(queue_action("down"), queued_pick, start_message)
    remove.click(queue_action("remove"), queued_pick, start_message)
    return widgets


def _settings_form(fields: list, defaults: list[Any]) -> list[Any]:
    """One widget per trainer setting: basic ones in view, the rest in a closed accordion per section."""
    widgets: list[Any] = [None] * len(fields)
    sections: dict[str, list[int]] = {}
    for i, field in enumerate(fields):
        sections.setdefault(field.info.section, []).append(i)
    for section, indices in sections.items():
        basic = [i for i in indices if not fields[i].advanced]
        advanced = [i for i in indices if fields[i].advanced]
        with gr.Accordion(f"{section} — {section_doc(section)}", open=bool(basic), elem_id=f"section-{section}"):
            with gr.Row(equal_height=False):
                for i in basic:
                    widgets[i] = _widget(fields[i], defaults[i])
            if advanced:
                with gr.Accordion(f"More {section} settings", open=False), gr.Row(equal_height=False):
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


RUNS_COLUMNS = ["run", "status", "steps", "final loss", "started", "base model"]


def runs_table(runs: list[tuple[Path, RunView, RunStatus]]) -> Any:
    """The Runs tab's table (a pandas Styler): one row a run, a failed run's status in red."""
    rows = []
    for run_dir, view, status in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(view.started)) if view.started else ""
        loss = f"{view.final_loss:.4f}" if view.final_loss is not None else ""
        rows.append([run_dir.name, status.label, f"{view.step}/{view.total_steps}", loss, started, view.base_model])
    frame = pd.DataFrame(rows, columns=RUNS_COLUMNS)
    red = [status.failed for _, _, status in runs]
    return frame.style.apply(
        lambda column: ["color: #b42318; font-weight: 600" if bad else "" for bad in red], subset=["status"]
    )


def _runs_tab(studio: Studio) -> tuple[Any, list[Any], list[Any]]:
    refresh = gr.Button("Refresh", elem_id="runs-refresh")
    table = gr.Dataframe(
        headers=RUNS_COLUMNS, interactive=False, elem_id="runs-table",
    )
    pick = gr.Dropdown([], label="Run", elem_id="run-pick")
    with gr.Row():
        kohya = gr.DownloadButton("Adapter (kohya: ComfyUI / A1111 / diffusers)", elem_id="download-kohya", visible=False)
        diffusers = gr.DownloadButton("Adapter (diffusers / PEFT)", elem_id="download-diffusers", visible=False)
        config = gr.DownloadButton("Config (TOML)", elem_id="download-config", visible=False)
    run_info = gr.HTML(elem_id="run-info")
    with gr.Accordion("Try it: base vs. adapted, same seed", open=True):
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value="sks", scale=3, elem_id="try-prompt")
            seed = gr.Number(1234, precision=0, label="Seed", scale=1)
            strength = gr.Slider(0, 2, 1.0, step=0.05, label="LoRA strength", scale=2)
            steps = gr.Slider(1, 50, 20, step=1, label="Steps", scale=2)
        generate = gr.Button("Generate", elem_id="try-generate")
        try_gallery = gr.Gallery(label="Base (left) and adapted (right)", columns=2, height=320, elem_id="try-gallery")
        try_message = gr.Markdown()

    def list_runs():
        runs = studio.runs()
        names = [run_dir.name for run_dir, _, _ in runs]
        return runs_table(runs), gr.update(choices=names, value=names[0] if names else None)

    def list_and_choose(current: str | None):
        """The table, and the downloads of the picked run refreshed too (its adapter may be new since)."""
        frame, pick_update = list_runs()
        names = pick_update["choices"]
        name = current if current in names else (names[0] if names else None)
        return frame, gr.update(choices=names, value=name), *choose(name)

    def choose(name: str | None):
        if not name:
            return gr.update(visible=False), gr.update(visible=False), gr.update(visible=False), ""
        run_dir = studio.settings.runs_dir / name
        view, status = studio.run_status_of(run_dir)
        k, d = view.adapter_path("kohya"), view.adapter_path("diffusers")
        cfg_file = run_dir / "config.toml"
        return (
            gr.update(value=str(k), visible=True) if k else gr.update(visible=False),
            gr.update(value=str(d), visible=True) if d else gr.update(visible=False),
            gr.update(value=str(cfg_file), visible=True) if cfg_file.exists() else gr.update(visible=False),
            run_info_html(name, view, status, adapter_found=bool(k or d)),
        )

    def do_try(name: str | None, text: str, seed_value: float, strength_value: float, steps_value: float):
        if not name:
            return [], "Pick a run first."
        adapter = load_view(studio.settings.runs_dir / name).adapter_path("kohya") or \
            load_view(studio.settings.runs_dir / name).adapter_path("diffusers")
        if adapter is None:
            return [], "This run has no adapter yet."
        out = studio.settings.runs_dir / name / "try-it"
        images, message = try_adapter(adapter, text or "sks", int(seed_value or 0), strength_value, int(steps_value), out)
        return [(str(image.path), image.caption) for image in images], message

    refresh.click(list_and_choose, pick, [table, pick, kohya, diffusers, config, run_info])
    pick.change(choose, pick, [kohya, diffusers, config, run_info])
    generate.click(do_try, [pick, prompt, seed, strength, steps], [try_gallery, try_message])
    return list_and_choose, [pick], [table, pick, kohya, diffusers, config, run_info]
