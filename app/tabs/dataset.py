"""Tab 1 · Dataset: pick or create a dataset, upload into it, edit captions beside their images, check its health.

Every button's message appears right beside that button (a message 800 px away, off-screen, is not seen).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from app.health_view import health_table_html
from app.run_detail import file_url
from app.studio import SAMPLE_DATASET
from app.trainer_calls import auto_caption, dataset_health

if TYPE_CHECKING:
    from app.studio import Studio

BULK_ACTIONS = {
    "add prefix": "prefix",
    "add suffix": "suffix",
    "find / replace": "replace",
    "set trigger word (first tag)": "trigger",
    "remove duplicate tags": "dedupe",
    "sort tags": "sort",
}


CAPTION_COLUMNS = ["preview", "image", "caption"]
THUMB_STYLE = "max-height:96px;max-width:128px;object-fit:contain;display:block"  # the image's own aspect ratio


@dataclass
class DatasetTab:
    """What the page wires across tabs: the picker (it fills ``dataset.path``), the caption table, the
    on-open refresh, and the health check's *Apply suggestions* button with the suggestions it holds."""

    select: Any
    table: Any
    on_load: Any
    apply_suggestions: Any
    suggestions: Any
    suggestion_message: Any


def image_label(item: Any) -> str:
    """The table's name cell: the whole file name (wrapped, never cut) and the image's size."""
    return f"{item.image} ({item.width}×{item.height})"


def caption_edits(items: list[Any], labels: list[str], captions: list[str | None]) -> dict[str, str]:
    """``{image: new caption}`` for the table rows whose caption differs from the one on disk."""
    by_label = {image_label(item): item for item in items}
    edits = {}
    for label, caption in zip(labels, captions, strict=True):
        item = by_label.get(label)
        if item is not None and (caption or "") != item.caption:
            edits[item.image] = caption or ""
    return edits


def thumbnail_html(path: Path, alt: str) -> str:
    return f'<img src="{file_url(path)}" alt="{html.escape(alt)}" loading="lazy" style="{THUMB_STYLE}">'


def build(studio: Studio) -> DatasetTab:
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
    table = gr.Dataframe(
        headers=CAPTION_COLUMNS, datatype=["html", "str", "str"], interactive=True, column_count=3,
        label="Images and captions (edit a caption in place, then Save captions)", elem_id="caption-table",
        static_columns=[0, 1], wrap=True, max_height=640, column_widths=["140px", "25%", "60%"],
    )
    with gr.Row():
        save = gr.Button("Save captions", elem_id="save-captions")
        check = gr.Button("Check dataset", elem_id="check-dataset")
    captions_message = gr.Markdown(elem_id="captions-message")
    report = gr.HTML(elem_id="dataset-report")
    with gr.Row():
        apply_suggestions = gr.Button("Apply the suggestions to the training form", elem_id="apply-suggestions",
                                      visible=False, size="sm")
    suggestion_message = gr.Markdown(elem_id="suggestion-message")
    suggestions = gr.State(None)
    with gr.Accordion("Bulk caption edits", open=False):
        with gr.Row():
            action = gr.Dropdown(list(BULK_ACTIONS), value="add prefix", label="Action", elem_id="bulk-action")
            text = gr.Textbox(label="Text (prefix, suffix or trigger word)", elem_id="bulk-text")
            old = gr.Textbox(label="Find", elem_id="bulk-find")
            new = gr.Textbox(label="Replace with", elem_id="bulk-replace")
            apply = gr.Button("Apply to all captions", elem_id="bulk-apply")
        bulk_message = gr.Markdown(elem_id="bulk-message")
    with gr.Accordion("Auto-caption with a model", open=False):
        with gr.Row():
            caption_model = gr.Textbox(label="Captioning model", scale=3,
                                       info="A local folder or a hub id of a BLIP-style image-to-text model or a booru tagger.")
            caption_kind = gr.Dropdown(["blip", "tagger"], value="blip", label="Kind", scale=1)
            caption_overwrite = gr.Checkbox(False, label="Also replace existing captions", scale=1)
            caption_run = gr.Button("Caption images", scale=1, elem_id="caption-run")
        caption_message = gr.Markdown(elem_id="caption-message")
    with gr.Accordion("Danger zone", open=False):
        delete = gr.Button("Move this dataset to the trash", variant="stop", elem_id="delete-dataset")
        delete_message = gr.Markdown(elem_id="delete-message")

    def show(name: str | None):
        if not name:
            return pd.DataFrame({column: [] for column in CAPTION_COLUMNS})
        items = store.items(name)
        return pd.DataFrame({
            "preview": [thumbnail_html(item.path, f"{item.image}, {item.width}×{item.height}") for item in items],
            "image": [image_label(item) for item in items],
            "caption": [item.caption for item in items],
        })

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
        edits = caption_edits(store.items(name), list(frame["image"]), list(frame["caption"]))
        for image, caption in edits.items():
            store.set_caption(name, image, caption)
        return f"Saved {len(edits)} caption(s)."

    def do_bulk(name: str | None, label: str, text_value: str, old_value: str, new_value: str):
        if not name:
            return gr.skip(), "Choose a dataset first."
        try:
            changed = store.bulk_edit(name, BULK_ACTIONS[label], text=text_value, old=old_value, new=new_value)
        except ValueError as err:  # e.g. "find" left empty: say so beside the button, naming the box
            box = "Find" if BULK_ACTIONS[label] == "replace" else "Text (prefix, suffix or trigger word)"
            return gr.skip(), f'<div class="ls-start-error">\n\n**{box}**: {html.escape(str(err), quote=False)}\n\n</div>'
        return show(name), f"{label}: {changed} caption(s) changed."

    def do_check(name: str | None):
        hidden = gr.update(visible=False)
        if not name:
            return "Choose a dataset first.", hidden, None, ""
        report, problem = dataset_health(store.path(name))
        if report is None:
            return f'<div class="ls-bad">{html.escape(problem)}</div>', hidden, None, ""
        wanted = {"repeats": report.get("suggested_repeats"), "max_steps": report.get("suggested_steps")}
        label = f"Apply repeats = {wanted['repeats']} and max steps = {wanted['max_steps']} to the training form"
        useful = bool(report.get("num_images")) and all(wanted.values())
        return health_table_html(report), gr.update(value=label, visible=useful), wanted if useful else None, ""

    def do_caption(name: str | None, model: str, kind: str, overwrite: bool):
        if not name:
            return gr.skip(), "Choose a dataset first."
        if not model.strip():
            return gr.skip(), "Give the captioning model's folder or hub id."
        message = auto_caption(store.path(name), model.strip(), kind, overwrite)
        return show(name), message

    def do_delete(name: str | None):
        if not name:
            return gr.skip(), "Choose a dataset first."
        store.delete_dataset(name)
        names = store.names()
        return gr.update(choices=names, value=names[0] if names else None), f"Moved **{name}** to the trash folder."

    select.change(show, select, table)
    create.click(do_create, new_name, [select, upload_result])
    upload.upload(do_upload, [upload, select, new_name, replace], [select, upload_result, upload]).then(
        show, select, table
    )
    save.click(do_save, [select, table], captions_message)
    apply.click(do_bulk, [select, action, text, old, new], [table, bulk_message])
    check.click(do_check, select, [report, apply_suggestions, suggestions, suggestion_message])
    caption_run.click(do_caption, [select, caption_model, caption_kind, caption_overwrite], [table, caption_message])
    delete.click(do_delete, select, [select, delete_message])

    def on_load(name: str | None):
        names = store.names()
        name = name if name in names else (names[0] if names else None)
        return gr.update(choices=names, value=name), show(name)

    return DatasetTab(select, table, on_load, apply_suggestions, suggestions, suggestion_message)
