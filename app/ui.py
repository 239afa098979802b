"""The Gradio page: Dataset → Train → Runs → Test.

Each tab is a module of ``app.tabs`` that builds its components and wires them to the pure parts
(``config_form``, ``run_view``, ``run_status``, ``datasets``, ``jobs``, ``trainer_calls``). State lives in
one ``Studio`` (``app.studio``) made by ``launch.py`` (no module globals), and the page polls it with a
``gr.Timer`` (every second while a job runs or waits, every 5 s otherwise), so reloading the page or
restarting the UI shows the running job again: the job manager re-attaches, and the page reads the run
folder, never memory.
"""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from app.config_form import config_to_values, form_fields
from app.studio import REPO_ROOT, SAMPLE_DATASET, Settings, Studio
from app.tabs import dataset as dataset_tab
from app.tabs import runs as runs_tab_module
from app.tabs import test as test_tab_module
from app.tabs import train as train_tab
from app.tabs.runs import RUNS_COLUMNS, runs_table

__all__ = ["CSS", "REPO_ROOT", "RUNS_COLUMNS", "SAMPLE_DATASET", "THEME", "Settings", "Studio", "build_ui", "runs_table"]

CSS = """
.ls-progress { font-size: 0.95em; padding: 6px 0; }
.ls-progress-track { height: 14px; background: var(--neutral-200); border-radius: 7px; overflow: hidden; margin-top: 4px; }
.ls-progress-fill { height: 100%; background: var(--color-accent); transition: width 0.5s; }
.ls-progress.failed .ls-progress-fill, .ls-progress.died .ls-progress-fill { background: #d9534f; }
.ls-progress.completed .ls-progress-fill { background: #3c9a5f; }
#start-message { min-height: 1.5em; }
.ls-start-error, .ls-start-error * { color: #b42318 !important; }
.ls-start-warning, .ls-start-warning * { color: #8a5a00 !important; }
#monitor { position: sticky; top: 8px; align-self: flex-start; }
/* A phone-wide screen stacks the columns: the monitor (Start, progress) first, not below the whole form. */
@media (max-width: 720px) { #train-row { flex-direction: column-reverse; } #monitor { position: static; } }
.ls-section-doc p { margin: 0 0 4px 0; }
/* The selected tab's name in Gradio's accent (orange-500, 2.8:1 on white) is below AA; orange-700 is 5.2:1. */
[role="tab"][aria-selected="true"] { color: var(--primary-700) !important; }
.ls-empty { padding: 8px 0; }
.ls-grid { overflow-x: auto; }
.ls-grid table { border-collapse: collapse; }
.ls-grid th, .ls-grid td { padding: 4px; text-align: left; vertical-align: top; font-size: 0.9em; }
.ls-grid img { width: 128px; height: auto; object-fit: contain; display: block; }
.ls-health table { border-collapse: collapse; width: 100%; margin-top: 6px; }
.ls-health tr > :nth-child(2) { white-space: nowrap; width: 4em; }
.ls-health th, .ls-health td { padding: 4px 8px; border-top: 1px solid var(--neutral-200); text-align: left; vertical-align: top;
  overflow-wrap: anywhere; }
.ls-health tr.ls-bad th, .ls-health tr.ls-bad td { color: #b42318; }
.ls-dupes { display: flex; flex-wrap: wrap; gap: 8px; margin: 2px 0 6px 0; }
.ls-dupes figure { margin: 0; }
.ls-dupes img { max-height: 72px; max-width: 96px; object-fit: contain; display: block; }
.ls-dupes figcaption { font-size: 0.85em; }
.ls-outcome { padding: 4px 0 4px 10px; border-left: 4px solid var(--neutral-300); margin: 4px 0; }
.ls-outcome.completed { border-left-color: #3c9a5f; }
.ls-outcome.failed { border-left-color: #d9534f; color: #b42318; }
.ls-problems, .ls-bad { color: #b42318; font-weight: 600; }
.ls-log { font-size: 0.8em; max-height: 14em; overflow: auto; white-space: pre-wrap; color: var(--body-text-color); }
"""
# Fonts that Gradio serves itself, then the system's: the page loads nothing from the internet.
# Help text is the page's documentation: Gradio's default grey for it (neutral-400 on white, 2.5:1) is
# below WCAG AA's 4.5:1; neutral-600 is 7.6:1 (the browser test checks every text on the page).
THEME = gr.themes.Default(
    font=[gr.themes.LocalFont("Source Sans Pro"), "ui-sans-serif", "system-ui", "sans-serif"],
    font_mono=[gr.themes.LocalFont("IBM Plex Mono"), "ui-monospace", "Consolas", "monospace"],
).set(
    body_text_color_subdued="*neutral_600",
    body_text_color_subdued_dark="*neutral_300",
    block_info_text_color="*neutral_600",
    block_info_text_color_dark="*neutral_300",
    # White on orange-500 (2.8:1) and on red-500 (3.8:1) fail AA too: the buttons take the 700 shades.
    button_primary_background_fill="*primary_700",
    button_primary_background_fill_hover="*primary_800",
    button_cancel_background_fill="#b91c1c",
    button_cancel_background_fill_hover="#991b1b",
)


# ---------------------------------------------------------------------------------------------
# Page

# What a newcomer should expect from the default model, in one line where they see it first.
BUILTIN_MODEL_NOTE = (
    "ℹ️ The built-in model, `builtin:shapes-sd`, is a small model (4 million parameters) this project trained on "
    "simple pictures: circles, squares and triangles in five colours on plain backgrounds, 64×64 pixels. "
    "It has never seen a cross (a plus sign); the sample dataset teaches it one as `sks` in about a minute on a "
    "CPU (expect crosses in scenes like the sample images, rougher ones elsewhere, and circles still drawn as "
    "circles). "
    "For real pictures, pick a real Stable Diffusion model."
)


def build_ui(studio: Studio) -> gr.Blocks:
    fields = form_fields()
    with gr.Blocks(title="lora-studio", analytics_enabled=False) as page:
        gr.Markdown(
            "# lora-studio\nDrop in a few images, press **Start training**, watch it learn, download a "
            "`.safetensors` LoRA for diffusers, ComfyUI and AUTOMATIC1111. "
            "The built-in model and the sample dataset are selected, so *Start training* works right away."
        )
        gr.Markdown(BUILTIN_MODEL_NOTE, elem_id="builtin-model-note")
        with gr.Tabs():
            with gr.Tab("1 · Dataset", id="tab-dataset"):
                data = dataset_tab.build(studio)
            with gr.Tab("2 · Train", id="tab-train"):
                widgets = train_tab.build(studio, fields)
            with gr.Tab("3 · Runs", id="tab-runs") as runs_tab:
                list_runs, runs_inputs, runs_outputs = runs_tab_module.build(studio)
            with gr.Tab("4 · Test", id="tab-test") as test_tab:
                refresh_adapters, adapter_lists = test_tab_module.build(studio)
        # The dataset picker fills `dataset.path` in the training form.
        path_box = widgets[fields_index(fields, "dataset.path")]
        data.select.change(lambda name: str(studio.store.path(name)) if name else gr.skip(), data.select, path_box)
        # The health check's suggested repeats and steps go into the form in one click.
        suggested = [widgets[fields_index(fields, "dataset.repeats")], widgets[fields_index(fields, "training.max_steps")]]

        def apply_suggestions(wanted: dict | None):
            if not wanted:
                return gr.skip(), gr.skip(), "Check the dataset first."
            return (wanted["repeats"], wanted["max_steps"],
                    f"Set `dataset.repeats` = {wanted['repeats']} and `training.max_steps` = {wanted['max_steps']} "
                    "in *2 · Train*.")

        data.apply_suggestions.click(apply_suggestions, data.suggestions, [*suggested, data.suggestion_message])
        # A reloaded page (or a restarted UI) shows what is on disk now, not what was there at build time:
        # the datasets, and in the form the settings of the newest job with its dataset selected.
        # The form's values reach the browser in a hidden box first; a browser-side step then fills only
        # the fields still as the page was served, so what someone typed while the page opened is kept.
        loaded_form = gr.JSON(visible=False)

        def on_open(current: str | None):
            cfg = studio.form_config()
            return [config_to_values(cfg), *data.on_load(studio.dataset_name_of(cfg.dataset.path) or current)]

        page.load(on_open, data.select, [loaded_form, data.select, data.table]).then(None, [loaded_form, *widgets], widgets, js=keep_edits_js([widget.value for widget in widgets]))
        page.load(list_runs, runs_inputs, runs_outputs)
        runs_tab.select(list_runs, runs_inputs, runs_outputs)
        test_tab.select(refresh_adapters, adapter_lists, adapter_lists)  # a run finished since: its adapter is listed
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


