"""The UI's dataset store (app/datasets.py): uploads, zips, rejections, captions, bulk edits, trash. No torch."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from app.datasets import DatasetStore, UploadResult

REPO = Path(__file__).resolve().parents[1]


def png_bytes(tmp_path: Path, size=(96, 80), color=(200, 30, 30), noise: bool = False) -> bytes:
    path = tmp_path / f"_gen_{size[0]}x{size[1]}_{noise}.png"
    image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)) if noise else Image.new("RGB", size, color)
    image.save(path)
    return path.read_bytes()


def upload_file(tmp_path: Path, name: str, data: bytes | str) -> tuple[str, Path]:
    """(name as the browser sent it, temp file) like Gradio hands them over."""
    folder = tmp_path / "uploads"
    folder.mkdir(exist_ok=True)
    path = folder / f"u{len(list(folder.iterdir()))}"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return name, path


def make_zip(tmp_path: Path, name: str, members: dict[str, bytes | str], symlinks: dict[str, str] | None = None):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in members.items():
            zf.writestr(zipfile.ZipInfo(member), data)
        for member, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(member)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return name, path


def reasons(result: UploadResult) -> dict[str, str]:
    return {r.name: r.reason for r in result.rejected}


@pytest.fixture
def store(tmp_path):
    return DatasetStore(tmp_path / "datasets")


def test_upload_images_and_captions(tmp_path, store):
    name = store.create("cats")
    files = [
        upload_file(tmp_path, "holiday/a.png", png_bytes(tmp_path)),
        upload_file(tmp_path, "a.txt", "sks cat, sofa"),
        upload_file(tmp_path, "C:\\Users\\me\\b photo é.jpg", b""),
        upload_file(tmp_path, ".DS_Store", b"junk"),
    ]
    Image.new("RGB", (128, 70)).save(files[2][1], format="JPEG")
    result = store.add_files(name, files)
    assert sorted(result.added) == ["a.png", "a.txt", "b photo é.jpg"]
    assert result.rejected == [] and result.conflicts == []
    items = store.items(name)
    assert [(i.image, i.caption, i.width, i.height) for i in items] == [
        ("a.png", "sks cat, sofa", 96, 80), ("b photo é.jpg", "", 128, 70)]
    assert items[0].caption_file == store.path(name) / "a.txt"
    assert result.summary().startswith("Added 2 images and 1 caption.")
    assert store.names() == ["cats"]


def test_zip_keeps_kohya_subfolder_and_skips_junk(tmp_path, store):
    name = store.create("person")
    png = png_bytes(tmp_path)
    zip_file = make_zip(tmp_path, "set.zip", {
        "set/10_sks person/a.png": png,
        "set/10_sks person/a.txt": "sks person, smiling",
        "set/b.png": png,
        "set/b.caption": "b caption",
        "set/misc/c.png": png,
        "__MACOSX/set/._b.png": b"\0\5junk",
        "set/.DS_Store": b"junk",
        "set/.git/config": "x",
    })
    result = store.add_files(name, [zip_file])
    assert result.rejected == []
    assert sorted(result.added) == ["10_sks person/a.png", "10_sks person/a.txt", "b.png", "b.txt", "c.png"]
    root = store.path(name)
    assert (root / "10_sks person" / "a.png").read_bytes() == png
    assert not (root / "set").exists() and not (root / "misc").exists() and not (root / "__MACOSX").exists()
    assert {i.image: i.caption for i in store.items(name)} == {
        "10_sks person/a.png": "sks person, smiling", "b.png": "b caption", "c.png": ""}


def test_zip_slip_and_links_rejected(tmp_path, store):
    name = store.create("safe")
    zip_file = make_zip(tmp_path, "evil.zip", {
        "../evil.txt": "escaped",
        "/tmp/abs_evil.txt": "escaped",
        "ok/../../evil2.txt": "escaped",
        "good.png": png_bytes(tmp_path),
    }, symlinks={"link.png": "/etc/passwd"})
    result = store.add_files(name, [zip_file])
    assert result.added == ["good.png"]
    found = reasons(result)
    assert "outside" in found["evil.zip/../evil.txt"]
    assert "outside" in found["evil.zip/ok/../../evil2.txt"]
    assert "absolute" in found["evil.zip//tmp/abs_evil.txt"]
    assert "symbolic link" in found["evil.zip/link.png"]
    assert not list(tmp_path.rglob("evil*.txt")) and not Path("/tmp/abs_evil.txt").exists()
    assert sorted(p.name for p in store.path(name).iterdir()) == ["good.png"]


def test_zip_limits_and_damaged_zip(tmp_path):
    store = DatasetStore(tmp_path / "d", max_zip_members=2, max_zip_bytes=10_000)
    name = store.create("x")
    png = png_bytes(tmp_path)
    many = make_zip(tmp_path, "many.zip", {"a.png": png, "b.png": png, "c.png": png})
    big = make_zip(tmp_path, "big.zip", {"a.txt": "x" * 20_000})
    broken = upload_file(tmp_path, "broken.zip", b"PK\3\4 not really a zip")
    result = store.add_files(name, [many, big, broken])
    assert result.added == []
    found = reasons(result)
    assert "more than the limit of 2" in found["many.zip"]
    assert "unpacks to" in found["big.zip"] and "split it" in found["big.zip"]
    assert "not a readable zip" in found["broken.zip"]
    assert store.items(name) == []


def test_bad_files_rejected_with_reasons_rest_added(tmp_path, store):
    name = store.create("mixed")
    noisy = png_bytes(tmp_path, (128, 128), noise=True)
    gif = tmp_path / "still.gif"
    Image.new("P", (80, 80)).save(gif)
    files = [
        upload_file(tmp_path, "good.png", png_bytes(tmp_path)),
        upload_file(tmp_path, "truncated.png", noisy[: len(noisy) // 2]),
        upload_file(tmp_path, "notes.png", "this is a text file, renamed"),
        upload_file(tmp_path, "empty.jpg", b""),
        upload_file(tmp_path, "tiny.png", png_bytes(tmp_path, (20, 20))),
        upload_file(tmp_path, "still.gif", gif.read_bytes()),
        upload_file(tmp_path, "setup.exe", b"MZ\x90\x00"),
        upload_file(tmp_path, "binary.txt", b"\x01\x02\x03\x04 data \x05"),
    ]
    result = store.add_files(name, files)
    assert result.added == ["good.png", "still.gif"], "a still GIF is accepted, as the trainer accepts it"
    found = reasons(result)
    assert set(found) == {"truncated.png", "notes.png", "empty.jpg", "tiny.png", "setup.exe", "binary.txt"}
    assert "truncated" in found["truncated.png"] or "corrupt" in found["truncated.png"]
    assert "not an image" in found["notes.png"]
    assert "empty" in found["empty.jpg"]
    assert found["tiny.png"].startswith("too small (20×20 px; at least 64 px per side)")
    assert found["setup.exe"].startswith("unsupported type .exe")
    assert "not text" in found["binary.txt"]
    assert sorted(p.name for p in store.path(name).iterdir()) == ["good.png", "still.gif"]  # no temp files left
    summary = result.summary()
    assert "Added 2 images." in summary and "6 files rejected" in summary and "`tiny.png`" in summary


def test_animated_and_decompression_bomb_rejected(tmp_path, store, monkeypatch):
    name = store.create("x")
    frames = [Image.new("RGB", (80, 80), c) for c in ((255, 0, 0), (0, 0, 255))]
    apng = tmp_path / "anim.png"
    frames[0].save(apng, save_all=True, append_images=frames[1:])
    big = png_bytes(tmp_path, (300, 300))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    result = store.add_files(name, [upload_file(tmp_path, "anim.png", apng.read_bytes()),
                                    upload_file(tmp_path, "big.png", big)])
    found = reasons(result)
    assert result.added == [] and found["anim.png"].startswith("animated PNG (2 frames)")
    assert found["big.png"].startswith("too large") and "downscale" in found["big.png"]


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_upload_gives_the_trainers_reason(tmp_path, store, fmt):
    # The same 2-frame file the trainer's scan skips (tests/test_data_images.py): one rule, one reason.
    name = store.create("x")
    path = tmp_path / f"anim.{fmt.lower()}"
    frames = [Image.new("RGB", (80, 80), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    result = store.add_files(name, [upload_file(tmp_path, path.name, path.read_bytes())])
    found = reasons(result)
    assert result.added == [] and store.items(name) == []
    kind = {"GIF": "GIF", "WEBP": "WebP"}[fmt]
    assert found[path.name] == (
        f"animated {kind} (2 frames): training uses single frames; export the frame you want as PNG"
    )


def test_conflicts_keep_original_unless_overwrite(tmp_path, store):
    name = store.create("c")
    first, second = png_bytes(tmp_path, color=(1, 1, 1)), png_bytes(tmp_path, (100, 100), color=(2, 2, 2))
    store.add_files(name, [upload_file(tmp_path, "a.png", first), upload_file(tmp_path, "a.txt", "old")])
    result = store.add_files(name, [upload_file(tmp_path, "a.png", second), upload_file(tmp_path, "a.txt", "new")])
    assert result.added == [] and sorted(result.conflicts) == ["a.png", "a.txt"]
    assert "2 already existed and were kept (tick 'Replace existing files' to overwrite)" in result.summary()
    root = store.path(name)
    assert (root / "a.png").read_bytes() == first and (root / "a.txt").read_text() == "old\n"
    result = store.add_files(name, [upload_file(tmp_path, "a.png", second), upload_file(tmp_path, "a.txt", "new")],
                             overwrite=True)
    assert sorted(result.replaced) == ["a.png", "a.txt"] and result.conflicts == []
    assert (root / "a.png").read_bytes() == second and store.items(name)[0].caption == "new"


def test_same_stem_and_duplicate_names_rejected(tmp_path, store):
    name = store.create("s")
    png = png_bytes(tmp_path)
    store.add_files(name, [upload_file(tmp_path, "a.png", png)])
    result = store.add_files(name, [
        upload_file(tmp_path, "a.jpg", png),  # would share a.txt with a.png: the trainer refuses that
        upload_file(tmp_path, "x/b.png", png),
        upload_file(tmp_path, "y/b.png", png),
    ])
    found = reasons(result)
    assert result.added == ["b.png"]
    assert "'a.png' already has the name 'a'" in found["a.jpg"]
    assert "same name as 'x/b.png' in this upload" in found["y/b.png"]


@pytest.mark.parametrize(("raw", "expected"), [
    ("My Dataset/../x", "My_Dataset_x"),
    ("../../etc", "etc"),
    ("..", "dataset"),
    ("", "dataset"),
    (".hidden", "hidden"),
    ("a\\b\x00c\n", "a_bc"),
    ("Café 猫", "Café_猫"),
    ("2024_photos", "2024-photos"),
])
def test_safe_names(store, raw, expected):
    assert store.safe_name(raw) == expected
    assert store.safe_name(expected) == expected


def test_create_and_path_validation(tmp_path, store):
    name = store.create("My Dataset/../x")
    assert name == "My_Dataset_x" and store.path(name).is_dir()
    store.add_files(name, [upload_file(tmp_path, "a.png", png_bytes(tmp_path))])
    assert store.create("My_Dataset_x") == name and (store.path(name) / "a.png").exists()  # no wipe
    for bad in ("../x", "a/b", ".trash", "", ".."):
        with pytest.raises(ValueError, match="not a valid dataset name"):
            store.path(bad)
    with pytest.raises(ValueError, match="no dataset named"):
        store.path("missing")
    with pytest.raises(ValueError, match="no dataset named"):
        store.add_files("missing", [])
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(tmp_path))
    (store.path(name) / "link.png").symlink_to(outside)
    for bad in ("../x.png", "/etc/passwd", "link.png", "C:\\x.png", "nothere.png"):
        with pytest.raises(ValueError):
            store.set_caption(name, bad, "x")
    assert not outside.with_suffix(".txt").exists()


def test_set_caption_and_bulk_edits(tmp_path, store):
    name = store.create("edit")
    png = png_bytes(tmp_path)
    store.add_files(name, [
        upload_file(tmp_path, "a.png", png), upload_file(tmp_path, "a.txt", "cat, sofa, cat"),
        upload_file(tmp_path, "b.png", png), upload_file(tmp_path, "b.txt", "sks, dog"),
        upload_file(tmp_path, "c.png", png),
    ])

    def captions():
        return {i.image: i.caption for i in store.items(name)}

    store.set_caption(name, "c.png", "  a red\nball ")
    assert captions()["c.png"] == "a red, ball"
    assert (store.path(name) / "c.txt").read_text(encoding="utf-8") == "a red, ball\n"
    assert store.bulk_edit(name, "trigger", text="sks") == 2  # b.png already has it
    assert captions() == {"a.png": "sks, cat, sofa, cat", "b.png": "sks, dog", "c.png": "sks, a red, ball"}
    assert store.bulk_edit(name, "trigger", text="sks") == 0  # idempotent
    assert store.bulk_edit(name, "dedupe") == 1
    assert captions()["a.png"] == "sks, cat, sofa"
    assert store.bulk_edit(name, "replace", old="sofa", new="couch") == 1
    assert store.bulk_edit(name, "suffix", text="photo") == 3
    assert store.bulk_edit(name, "prefix", text="best") == 3
    assert captions() == {"a.png": "best, sks, cat, couch, photo", "b.png": "best, sks, dog, photo",
                          "c.png": "best, sks, a red, ball, photo"}
    assert store.bulk_edit(name, "prefix", text="best") == 0
    assert store.bulk_edit(name, "replace", old="best", new="", whole_tag=True) == 3
    store.set_caption(name, "b.png", "sks, photo, dog")
    assert store.bulk_edit(name, "sort") == 1  # the first tag (trigger) stays first
    assert captions() == {"a.png": "sks, cat, couch, photo", "b.png": "sks, dog, photo",
                          "c.png": "sks, a red, ball, photo"}
    with pytest.raises(ValueError, match="unknown caption action"):
        store.bulk_edit(name, "shout")
    with pytest.raises(ValueError, match="enter the text"):
        store.bulk_edit(name, "prefix", text=" ")


def test_delete_moves_to_trash(tmp_path, store):
    name = store.create("d")
    png = png_bytes(tmp_path)
    store.add_files(name, [upload_file(tmp_path, "a.png", png), upload_file(tmp_path, "a.txt", "one")])
    store.delete_image(name, "a.png")
    trash = store.data_dir / ".trash" / name
    assert (trash / "a.png").read_bytes() == png and (trash / "a.txt").read_text() == "one\n"
    assert store.items(name) == []
    store.add_files(name, [upload_file(tmp_path, "a.png", png), upload_file(tmp_path, "a.txt", "two")])
    store.delete_image(name, "a.png")  # a second deletion of the same name keeps both
    assert (trash / "a (2).png").exists() and (trash / "a (2).txt").read_text() == "two\n"
    with pytest.raises(ValueError):
        store.delete_image(name, "a.png")
    store.delete_dataset(name)
    assert store.names() == [] and not (store.data_dir / name).exists()
    moved = [p for p in (store.data_dir / ".trash").iterdir() if p.name != name]
    assert len(moved) == 1 and moved[0].name.startswith(name) and moved[0].is_dir()


def test_caption_encodings_stored_as_utf8(tmp_path, store):
    name = store.create("enc")
    png = png_bytes(tmp_path)
    result = store.add_files(name, [
        upload_file(tmp_path, "a.png", png), upload_file(tmp_path, "a.txt", "café, crème".encode("latin-1")),
        upload_file(tmp_path, "b.png", png), upload_file(tmp_path, "b.TXT", "\ufeffnaïve, 猫".encode()),
        upload_file(tmp_path, "c.png", png), upload_file(tmp_path, "c.caption", "“quoted”\r\nsecond line".encode("cp1252")),
        upload_file(tmp_path, "orphan.txt", "no image"),
    ])
    root = store.path(name)
    assert (root / "a.txt").read_bytes() == "café, crème\n".encode()
    assert (root / "b.txt").read_bytes() == "naïve, 猫\n".encode()
    assert (root / "c.txt").read_text(encoding="utf-8") == "“quoted”, second line\n"
    assert not (root / "c.caption").exists()
    assert "without an image of the same name" in result.summary() and "`orphan.txt`" in result.summary()


def test_import_pulls_no_torch():
    code = "import sys, app.datasets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
