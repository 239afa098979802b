"""What the page says, as pure functions: run-name suffixes, the queue in run names, section titles for
people, the health report as a table. No browser, no torch."""

from __future__ import annotations

from pathlib import Path

from app.config_form import form_fields, section_title, unique_run_name
from app.health_view import health_rows, health_table_html
from app.jobs import Job
from app.queue_view import job_name, queue_choices, queue_rows


def test_run_names_do_not_pile_up_suffixes(tmp_path):
    for name in ("my-lora", "my-lora-2", "sdxl-1024"):
        (tmp_path / name).mkdir()
    # The form reopens with the newest run's name, my-lora-2: the next is my-lora-3, not my-lora-2-2.
    assert unique_run_name(tmp_path, "my-lora-2") == "my-lora-3"
    assert unique_run_name(tmp_path, "my-lora-2", {"my-lora-3"}) == "my-lora-4"
    # A name that merely ends in a number keeps it when its stem is no run of ours.
    assert unique_run_name(tmp_path, "sdxl-1024") == "sdxl-1024-2"
    assert unique_run_name(tmp_path, "my-lora-7") == "my-lora-7"


def _job(job_id: str, name: str, state: str) -> Job:
    return Job(id=job_id, name=name, run_dir=Path("/runs") / name, config_path=Path("/runs/.jobs") / job_id / "c.toml",
               state=state, created=0.0)


def test_queue_lists_run_names_and_places_not_job_ids():
    running = _job("20261130-120000-000001-abcd", "dog-lora", "running")
    queued = [_job("20261130-120001-000002-ef01", "cat-lora", "queued"), _job("20261130-120002-000003-2345", "owl", "queued")]
    assert queue_rows(running, queued) == [["now", "dog-lora", "running"], ["1", "cat-lora", "queued"], ["2", "owl", "queued"]]
    assert queue_rows(None, []) == []
    assert queue_choices(queued) == [("1 · cat-lora", queued[0].id), ("2 · owl", queued[1].id)]
    assert job_name([running, *queued], queued[1].id) == "owl" and job_name([], "gone-id") == "gone-id"


def test_every_section_has_a_title_for_people():
    sections = {field.info.section for field in form_fields()}
    titles = {section: section_title(section) for section in sections}
    assert titles["model"] == "Model" and titles["dataset"] == "Dataset" and titles["sampling"] == "Previews"
    assert all(title[0].isupper() and "_" not in title and "." not in title for title in titles.values()), titles
    assert section_title("new_section") == "New section", "a section added later still reads as words"


REPORT = {
    "path": "/data/dogs",
    "ok": False,
    "num_images": 5,
    "num_captioned": 4,
    "resolution_histogram": {"512x512": 4, "640x480": 1},
    "problems": ["/data/dogs: two images named a (a.png, a.jpg)"],
    "unreadable": ["/data/dogs/broken.png: cannot identify image file"],
    "missing_captions": ["/data/dogs/sub/very_long_file_name_that_used_to_be_cut_at_the_edge.png"],
    "small_images": [],
    "extreme_aspect": [],
    "near_duplicates": [["/data/dogs/a.png", "/data/dogs/a_copy.jpg"]],
    "long_captions": [{"path": "/data/dogs/b.txt", "tokens": 90, "limit": 77}],
    "token_limit": 77,
    "tag_frequency": [["dog", 5], ["<script>", 1]],
    "suggested_repeats": 30,
    "suggested_steps": 1500,
    "warnings": [],
    "notes": ["caption lengths not checked"],
}


def test_health_rows_name_files_relative_to_the_dataset():
    rows = {row.finding: row for row in health_rows(REPORT)}
    missing = rows["Missing captions (trained as trigger + class word)"]
    assert missing.items == ["sub/very_long_file_name_that_used_to_be_cut_at_the_edge.png"] and not missing.bad
    assert rows["Problems that stop training"].bad and rows["Unreadable images"].bad
    assert rows["Unreadable images"].items == ["broken.png: cannot identify image file"]
    assert rows["Near duplicates"].count == 1 and rows["Near duplicates"].groups == REPORT["near_duplicates"]
    assert rows["Suggested"].items == ["repeats = 30", "max steps = 1500"]
    assert "Smaller than the training size (upscaled)" not in rows, "empty findings are left out"


def test_health_table_shows_duplicates_as_thumbnails_and_escapes_text():
    shown = health_table_html(REPORT)
    assert shown.count("<tr") == 1 + len(health_rows(REPORT)), "a header row and one row per finding"
    assert 'data-ok="false"' in shown and "Not OK: fix the red rows" in shown
    assert '<img src="/gradio_api/file=/data/dogs/a.png"' in shown and "<figcaption>a_copy.jpg</figcaption>" in shown
    assert "&lt;script&gt; (1)" in shown and "<script>" not in shown
    assert 'class="ls-bad" data-finding="Unreadable images"' in shown
    assert "/data/dogs/sub/" not in shown, "file names are relative to the dataset folder named once above"


def test_a_preset_says_which_settings_it_changed():
    from app.config_form import apply_preset, preset_changes
    from trainer.config import Config

    cfg = Config()
    cfg.network.rank = 32  # already what the preset sets: not a change
    changes = preset_changes(cfg, apply_preset(cfg, "character"))
    assert "network.train_text_encoder: False → True" in changes and "training.max_steps: 100 → 2000" in changes
    assert not any(change.startswith("network.rank") for change in changes), changes
    assert preset_changes(cfg, cfg) == []


def test_captions_edited_beside_their_images_are_saved_by_name(tmp_path):
    from app.datasets import DatasetStore
    from app.tabs.dataset import caption_edits, image_label, thumbnail_html

    store = DatasetStore(tmp_path / "data")
    name = store.create("dogs")
    sample = Path(__file__).resolve().parents[1] / "sample_data"
    store.add_files(name, [(p.name, p) for p in sorted(sample.glob("cross_0[01].*"))])
    items = store.items(name)
    labels = [image_label(item) for item in items]
    assert labels[0] == "cross_00.png (128×128)"
    edited = [items[0].caption, "a new caption for the second"]
    assert caption_edits(items, labels, edited) == {items[1].image: "a new caption for the second"}
    assert caption_edits(items, labels, [item.caption for item in items]) == {}
    shown = thumbnail_html(items[0].path, "a <b> dog")
    assert "object-fit:contain" in shown and "a &lt;b&gt; dog" in shown, "thumbnails keep their aspect ratio"
