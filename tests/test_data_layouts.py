"""Dataset layouts: kohya `N_name class` folders and Hugging Face `metadata.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from trainer.config import DatasetConfig
from trainer.data import DatasetError, build_train_dataset
from trainer.data.scan import kohya_folder, scan_folder


def img(path: Path, caption: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def test_kohya_folder_names():
    assert kohya_folder("10_sks dog", "cfg") == (10, "sks", "dog")
    assert kohya_folder("3_dog", "cfg") == (3, "cfg", "dog")
    assert kohya_folder("0_dog", "cfg") is None and kohya_folder("dogs", "cfg") is None


def test_kohya_subfolders_set_repeats_and_uncaptioned_caption(tmp_path):
    img(tmp_path / "10_ohwx man" / "a.png")
    img(tmp_path / "10_ohwx man" / "b.png", caption="a photo")
    img(tmp_path / "2_woman" / "c.png")
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path), repeats=5), seed=0)
    by_name = {r.path.name: r for r in ds.records}
    assert by_name["a.png"].repeats == 10 and by_name["c.png"].repeats == 2
    assert len(ds) == 22
    assert ds.static_caption(ds.records.index(by_name["a.png"])) == "ohwx man"
    assert ds.static_caption(ds.records.index(by_name["b.png"])) == "ohwx, a photo"
    assert ds.static_caption(ds.records.index(by_name["c.png"])) == "sks woman"


def test_dataset_path_itself_a_kohya_folder(tmp_path):
    img(tmp_path / "4_sks cat" / "a.png")
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path / "4_sks cat")), seed=0)
    assert len(ds) == 4 and ds[0]["caption"] == "sks cat"


def test_kohya_regularization_folder(tmp_path):
    img(tmp_path / "img" / "5_sks dog" / "a.png")
    img(tmp_path / "reg" / "1_dog" / "r1.png")
    img(tmp_path / "reg" / "1_dog" / "r2.png")
    ds = build_train_dataset(DatasetConfig(path=str(tmp_path / "img"), reg_path=str(tmp_path / "reg")), seed=0)
    assert len(ds) == 10
    assert [ds[i]["caption"] for i in range(5, 10)] == ["dog"] * 5
    assert [ds[i]["record_index"] for i in range(5, 10)] == [1, 2, 1, 2, 1]


def test_metadata_jsonl_captions(tmp_path):
    img(tmp_path / "a.png")
    img(tmp_path / "b.png", caption="from txt")
    img(tmp_path / "sub" / "c.png")
    lines = [{"file_name": "a.png", "text": "from metadata"}, {"file_name": "b.png", "text": "other"},
             {"file_name": "sub/c.png", "caption": "nested"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    scan = scan_folder(tmp_path)
    captions = {r.path.name: r.caption for r in scan.records}
    assert captions == {"a.png": "from metadata", "b.png": "from txt", "c.png": "nested"}
    assert any("b.png" in w and "using b.txt" in w for w in scan.warnings)


def test_bad_metadata_lines_are_numbered(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\nnot json\n{"text": "x"}\n{"file_name": "gone.png"}\n')
    with pytest.raises(DatasetError) as err:
        build_train_dataset(DatasetConfig(path=str(tmp_path)), seed=0)
    message = str(err.value)
    assert "line 2: not valid JSON" in message and "line 3: needs a \"file_name\"" in message
    assert "line 4: image 'gone.png' not found" in message and "line 1" not in message


def test_no_images_error_explains_ignored_and_nested_folders(tmp_path):
    img(tmp_path / "dogs" / "a.png")
    img(tmp_path / "img" / "10_sks dog" / "b.png")
    with pytest.raises(DatasetError) as err:
        build_train_dataset(DatasetConfig(path=str(tmp_path)), seed=0)
    message = str(err.value)
    assert "no usable images" in message
    assert "dogs: subfolder ignored; name it `N_name class`" in message
    assert f"point the dataset path at {tmp_path / 'img'}" in message


def test_orphan_caption_is_a_warning(tmp_path):
    img(tmp_path / "a.png", caption="x")
    (tmp_path / "renamed.txt").write_text("lost caption")
    scan = scan_folder(tmp_path)
    assert len(scan.records) == 1 and scan.warnings == [f"{tmp_path / 'renamed.txt'}: caption file without an image of the same name (renamed image?)"]
