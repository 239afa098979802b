"""The pre-flight check: each problem it must find before a run folder exists, and what it must not build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from preflight_files import U, _errors_about, _file, _sd1, _zeros

from trainer.config import Config
from trainer.models.builtin import builtin_model_path
from trainer.models.probe import FAMILY_NAMES
from trainer.preflight import preflight

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Defaults, order, side effects


def test_default_config_passes_fast_and_creates_nothing(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_STUDIO_CACHE", str(tmp_path / "cache"))  # an empty cache: builtins must not be built
    cfg = make_config()
    report = preflight(cfg)
    assert report.ok, report.errors
    # The UI calls it in-process on Start, which must answer in under 2 s; 2 shared CPU cores leave headroom.
    assert report.seconds < 2.0, report.seconds
    assert not Path(cfg.run.output_dir).exists(), "pre-flight created the runs folder"
    assert not (tmp_path / "cache").exists(), "pre-flight built (or began to build) the builtin model"


def test_validation_problems_come_first_and_file_checks_still_run(make_config):
    cfg = make_config(network__rank=0, model__base="/no/such/model")
    report = preflight(cfg)
    assert report.errors[0].startswith("`network.rank`"), report.errors
    assert _errors_about(report, "`model.base` folder not found: /no/such/model"), report.errors


def test_a_setting_refused_by_validation_is_reported_once(make_config, tmp_path):
    cfg = make_config(model__vae=str(tmp_path / "missing.safetensors"))
    report = preflight(cfg)
    assert len(_errors_about(report, "`model.vae`")) == 1, report.errors


def test_ui_process_can_run_it_without_torch(tmp_path):
    code = (
        "import sys; from trainer.config import Config; from trainer.preflight import preflight; "
        f"c = Config(); c.run.output_dir = {str(tmp_path / 'runs')!r}; r = preflight(c); "
        "print(r.ok, 'torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["True", "False", "False"], out.stdout + out.stderr


# ---------------------------------------------------------------------------------------------
# model.base: folders


@pytest.fixture(scope="module")
def tiny_sdxl() -> Path:
    return builtin_model_path("builtin:tiny-sdxl")


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


def test_model_folder_that_is_complete_passes(make_config, tiny_sd):
    assert preflight(make_config(model__base=str(tiny_sd))).ok


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model_index.json").write_text("{ not json"), "model_index.json is not valid JSON"),
        (lambda f: (f / "model_index.json").write_text("[1, 2]"), "model_index.json must hold a JSON object"),
        (lambda f: (f / "unet" / "config.json").write_text('{"a": '), "unet/config.json is not valid JSON"),
        (lambda f: shutil.rmtree(f / "text_encoder"), "lacks text_encoder/"),
        (lambda f: [p.unlink() for p in (f / "unet").glob("*.safetensors")], "has no .safetensors weights file"),
        (lambda f: [p.rename(p.with_suffix(".bin")) for p in (f / "unet").glob("*.safetensors")], "only loads safetensors"),
        (lambda f: [(f / "model_index.json").unlink(), shutil.rmtree(f / "unet")], "not a diffusers model folder"),
    ],
)
def test_damaged_model_folder_is_named(make_config, tiny_sd, tmp_path, damage, message):
    folder = _copy(tiny_sd, tmp_path / "model")
    damage(folder)
    errors = _errors_about(preflight(make_config(model__base=str(folder))), "`model.base`")
    assert len(errors) == 1 and message in errors[0], errors
    assert str(folder) in errors[0], "the message must name the folder or file"


def test_missing_model_path(make_config, tmp_path):
    report = preflight(make_config(model__base=str(tmp_path / "nowhere")))
    assert _errors_about(report, "`model.base` folder not found"), report.errors
    report = preflight(make_config(model__base=str(tmp_path / "nowhere.safetensors")))
    assert _errors_about(report, "`model.base` file not found"), report.errors


# ---------------------------------------------------------------------------------------------
# model.base: single files, from the safetensors header


def _sd2() -> dict[str, np.ndarray]:
    return {U + "input_blocks.0.0.weight": _zeros(8, 4, 1, 1), U + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight":
            _zeros(8, 1024), "cond_stage_model.model.ln_final.weight": _zeros(1), "first_stage_model.x": _zeros(1)}


def _sdxl() -> dict[str, np.ndarray]:
    return {U + "input_blocks.0.0.weight": _zeros(8, 4, 1, 1), "conditioner.embedders.0.transformer.text_model.x": _zeros(1),
            "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": _zeros(1), "first_stage_model.x": _zeros(1)}


STATES = {
    "sd1": _sd1(),
    "sd2": _sd2(),
    "sdxl": _sdxl(),
    "inpainting": {**_sd1(), U + "input_blocks.0.0.weight": _zeros(8, 9, 1, 1)},
    "inpainting_v2": {**_sd2(), U + "input_blocks.0.0.weight": _zeros(8, 9, 1, 1)},
    "xl_refiner": {U + "input_blocks.0.0.weight": _zeros(8, 4, 1, 1),
                   "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": _zeros(1)},
    "pix2pix": {**_sd1(), U + "input_blocks.0.0.weight": _zeros(8, 8, 1, 1)},
    "upscale": {**_sd1(), U + "input_blocks.10.0.skip_connection.bias": _zeros(1)},
    "playground": {**_sdxl(), "edm_mean": _zeros(1)},
}


@pytest.mark.parametrize("name", list(STATES))
def test_model_type_rule_agrees_with_diffusers(name):
    """checkpoint_keys.infer_model_type is diffusers' rule for SD checkpoints, on shapes instead of tensors."""
    import torch
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    from trainer.models.checkpoint_keys import infer_model_type

    state = STATES[name]
    expected = infer_diffusers_model_type({k: torch.from_numpy(v) for k, v in state.items()})
    assert infer_model_type({k: v.shape for k, v in state.items()}) == expected


@pytest.mark.parametrize(("family", "native", "off"), [("sd1", 512, 64), ("sd2", 512, 256), ("sdxl", 1024, 512)])
def test_single_file_family_and_native_size(make_config, tmp_path, family, native, off):
    path = _file(tmp_path, STATES[family])
    at_native = preflight(make_config(model__base=str(path), dataset__resolution=native))
    assert at_native.ok and not at_native.warnings, at_native.errors + at_native.warnings
    assert f"model.base: file, {FAMILY_NAMES[family]}" in at_native.notes, at_native.notes
    far = preflight(make_config(model__base=str(path), dataset__resolution=off))
    assert far.ok, far.errors
    assert any(w.startswith("`dataset.resolution` is") and f"{native}" in w for w in far.warnings), far.warnings


def test_builtins_are_not_warned_about_their_64_px(make_config):
    for base in ("builtin:tiny-sd", "builtin:tiny-sdxl"):
        report = preflight(make_config(model__base=base, dataset__resolution=64))
        assert not [w for w in report.warnings if "dataset.resolution" in w], report.warnings


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"lora_unet_down_blocks_0.lora_down.weight": _zeros(1)}, "is a LoRA adapter"),
        ({"conv_in.weight": _zeros(1), "down_blocks.0.x": _zeros(1)}, "diffusers-layout component"),
        ({"foo.bar": _zeros(1)}, "no known Stable Diffusion architecture"),
        (STATES["inpainting"], "'inpainting' checkpoint"),
        (STATES["xl_refiner"], "'xl_refiner' checkpoint"),
        ({k: v for k, v in _sdxl().items() if "embedders.1" not in k}, "no text-encoder weights"),
        ({k: v for k, v in _sd1().items() if not k.startswith("first_stage")}, "no VAE weights"),
    ],
)
def test_single_file_that_is_not_a_trainable_checkpoint(make_config, tmp_path, state, message):
    path = _file(tmp_path, state)
    errors = _errors_about(preflight(make_config(model__base=str(path))), "`model.base`")
    assert len(errors) == 1 and message in errors[0] and str(path) in errors[0], errors


def test_single_file_without_vae_passes_with_model_vae(make_config, tmp_path):
    path = _file(tmp_path, {k: v for k, v in _sd1().items() if not k.startswith("first_stage")})
    vae = _file(tmp_path, {"encoder.conv_in.weight": _zeros(1)}, "vae.safetensors")
    assert preflight(make_config(model__base=str(path), model__vae=str(vae), dataset__resolution=512)).ok


def test_truncated_or_garbage_single_file(make_config, tmp_path):
    path = _file(tmp_path, {**_sd1(), U + "big": np.zeros(4096, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:-100])  # an interrupted download
    errors = _errors_about(preflight(make_config(model__base=str(path))), "`model.base`")
    assert errors and "truncated" in errors[0] and "download it again" in errors[0], errors
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    errors = _errors_about(preflight(make_config(model__base=str(path))), "`model.base`")
    assert errors and "not a valid safetensors file" in errors[0], errors


def test_ckpt_is_only_checked_to_exist(make_config, tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"pickled bytes are never opened here")
    assert preflight(make_config(model__base=str(path))).ok
    path.unlink()
    assert _errors_about(preflight(make_config(model__base=str(path))), "`model.base` file not found")


# ---------------------------------------------------------------------------------------------
# model.base: hub ids


def _fake_hub_cache(root: Path, repo: str, source: Path | None = None) -> Path:
    """The layout huggingface_hub's cache uses: refs/main names a snapshot folder."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("abc123")
    snapshot = repo_dir / "snapshots" / "abc123"
    if source is not None:
        shutil.copytree(source, snapshot)
    else:
        snapshot.mkdir(parents=True)
        (snapshot / "model_index.json").write_text("{}")
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


def test_hub_id_offline_and_not_cached_says_to_pass_a_local_folder(make_config, hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    errors = _errors_about(preflight(make_config(model__base="someone/some-model")), "`model.base`")
    assert len(errors) == 1 and "HF_HUB_OFFLINE" in errors[0] and "local folder" in errors[0], errors


def test_hub_id_offline_but_cached_points_at_the_cached_folder(make_config, hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _fake_hub_cache(hub_cache, "someone/some-model")
    errors = _errors_about(preflight(make_config(model__base="someone/some-model")), "`model.base`")
    assert len(errors) == 1 and str(snapshot) in errors[0], errors


def test_hub_id_online(make_config, hub_cache, monkeypatch, tiny_sd):
    import trainer.models.probe as probe

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(probe, "_ask_hub", lambda repo, revision: "missing")
    errors = _errors_about(preflight(make_config(model__base="someone/typo")), "`model.base`")
    assert len(errors) == 1 and "not found on the Hugging Face hub" in errors[0], errors
    monkeypatch.setattr(probe, "_ask_hub", lambda repo, revision: "ConnectError")
    unreachable = preflight(make_config(model__base="someone/typo"))
    assert unreachable.ok and any("could not be reached (ConnectError)" in w for w in unreachable.warnings), unreachable.warnings
    monkeypatch.setattr(probe, "_ask_hub", lambda repo, revision: pytest.fail("a cached model needs no request"))
    _fake_hub_cache(hub_cache, "someone/cached", source=tiny_sd)
    cached = preflight(make_config(model__base="someone/cached"))
    assert cached.ok and "model.base: hub, SD 1.x" in cached.notes, cached.errors + cached.notes


def test_hub_request_never_holds_start_longer_than_its_timeout(monkeypatch):
    import huggingface_hub

    import trainer.models.probe as probe

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **k: time.sleep(10))
    begin = time.monotonic()
    assert probe._ask_hub("someone/slow", None) == "no answer"
    # A hung name lookup is not covered by the HTTP timeout; the thread is left behind instead.
    assert time.monotonic() - begin < probe.HUB_TIMEOUT_S + 0.5


# ---------------------------------------------------------------------------------------------
# model.vae


def test_vae_folder_and_file(make_config, tmp_path, tiny_sd):
    assert preflight(make_config(model__vae=str(tiny_sd / "vae"))).ok
    assert preflight(make_config(model__vae=str(tiny_sd))).ok, "a model folder with vae/ is accepted"
    empty = tmp_path / "vae-folder"
    empty.mkdir()
    errors = _errors_about(preflight(make_config(model__vae=str(empty))), "`model.vae`")
    assert len(errors) == 1 and "no config.json" in errors[0], errors
    not_vae = _file(tmp_path, {"lora_unet_x.lora_down.weight": _zeros(1)}, "vae.safetensors")
    errors = _errors_about(preflight(make_config(model__vae=str(not_vae))), "`model.vae`")
    assert len(errors) == 1 and "holds no VAE weights" in errors[0], errors


# ---------------------------------------------------------------------------------------------
# Datasets


def _image_folder(tmp_path: Path, name: str = "data", count: int = 2) -> Path:
    from PIL import Image

    folder = tmp_path / name
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(folder / f"img{i}.png")
    return folder


def test_dataset_folder_missing_or_empty(make_config, tmp_path):
    errors = _errors_about(preflight(make_config(dataset__path=str(tmp_path / "nope"))), "`dataset.path`")
    assert len(errors) == 1 and "folder not found" in errors[0], errors
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("a caption without an image")
    errors = _errors_about(preflight(make_config(dataset__path=str(tmp_path / "empty"))), "`dataset.path`")
    assert len(errors) == 1 and "holds no usable images" in errors[0], errors


def test_unreadable_image_is_an_error_unless_skipped(make_config, tmp_path):
    folder = _image_folder(tmp_path)
    (folder / "notes.png").write_text("this is not a picture")
    errors = _errors_about(preflight(make_config(dataset__path=str(folder))), "`dataset.path`")
    assert len(errors) == 1 and "notes.png" in errors[0] and "skip_bad_images" in errors[0], errors
    skipped = preflight(make_config(dataset__path=str(folder), dataset__skip_bad_images=True))
    assert skipped.ok and any("notes.png" in w for w in skipped.warnings), skipped.warnings


def test_a_file_system_error_is_a_message_naming_the_setting(make_config, monkeypatch):
    import trainer.preflight as pf

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/locked")

    monkeypatch.setattr(pf, "scan_folder", denied)
    errors = _errors_about(preflight(make_config()), "`dataset.path`")
    assert errors == ["`dataset.path`: cannot read (/data/locked): Permission denied; check the path and its permissions"]


def test_reg_path_must_exist_unless_class_images_fill_it(make_config, tmp_path):
    errors = _errors_about(preflight(make_config(dataset__reg_path=str(tmp_path / "reg"))), "`dataset.reg_path`")
    assert len(errors) == 1 and "folder not found" in errors[0], errors
    generated = make_config(dataset__reg_path=str(tmp_path / "reg"), dataset__class_images=2, dataset__class_word="dog")
    assert preflight(generated).ok
    assert preflight(make_config(dataset__reg_path=str(_image_folder(tmp_path, "reg2")))).ok


# ---------------------------------------------------------------------------------------------
# Disk space and the run folder


def test_not_enough_disk_space(make_config, monkeypatch):
    import trainer.preflight as pf

    cfg = make_config(checkpoint__every_n_steps=2)
    full = preflight(cfg).disk.total
    assert full > 0
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
    errors = _errors_about(preflight(cfg), "not enough disk space")
    assert len(errors) == 1, errors
    assert "MB needed, 0.0 MB free on " in errors[0] and "checkpoint.keep_last" in errors[0], errors


def test_disk_estimate_grows_with_what_is_kept(make_config):
    few = preflight(make_config(training__max_steps=100, checkpoint__every_n_steps=10, checkpoint__keep_last=1)).disk
    many = preflight(make_config(training__max_steps=100, checkpoint__every_n_steps=10, checkpoint__keep_last=5)).disk
    assert many.parts["checkpoints"] == 3 * few.parts["checkpoints"], "keep_last + 1 exist while the newest is saved"
    cached = preflight(make_config(dataset__cache_latents="disk")).disk
    assert cached.parts["latent cache"] > 0 and few.parts["latent cache"] == 0


def test_run_folder_that_holds_a_run(make_config):
    cfg = make_config()
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "events.jsonl").write_text(json.dumps({"type": "started"}) + "\n")
    errors = _errors_about(preflight(cfg), "already holds a run")
    assert len(errors) == 1 and "--resume" in errors[0], errors
    assert preflight(cfg, resume=True).ok


# ---------------------------------------------------------------------------------------------
# The CLI


def _write_config(cfg: Config, path: Path) -> Path:
    from trainer.config import dumps_config

    path.write_text(dumps_config(cfg))
    return path


def test_dry_run_reports_and_creates_nothing(make_config, tmp_path, capsys):
    from trainer.cli import main

    good = _write_config(make_config(), tmp_path / "good.toml")
    assert main(["train", str(good), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pre-flight check passed" in out and "disk: about" in out
    bad = _write_config(make_config(model__base=str(tmp_path / "no-model")), tmp_path / "bad.toml")
    assert main(["train", str(bad), "--dry-run"]) == 2
    assert "`model.base` folder not found" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_train_refuses_before_creating_the_run_folder(make_config, tmp_path, capsys):
    from trainer.cli import main

    bad = _write_config(make_config(dataset__path=str(tmp_path / "no-data")), tmp_path / "bad.toml")
    assert main(["train", str(bad), "--no-progress"]) == 2
    assert "`dataset.path` folder not found" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists(), "a refused run must leave no run folder behind (it would block the name)"


def test_the_demo_regularization_images_are_refused_for_another_base(make_config, tmp_path):
    """The first run's regularization images are circles, squares and triangles for builtin:shapes-sd: kept in a
    config whose base was changed, they would teach that model a wrong prior, silently. A missing model is
    reported first (the check waits for a base that exists)."""
    demo_reg = str(Path(__file__).resolve().parents[1] / "sample_regularization")
    assert preflight(make_config(model__base="builtin:shapes-sd", dataset__reg_path=demo_reg)).ok
    report = preflight(make_config(dataset__reg_path=demo_reg))  # builtin:tiny-sd
    assert [e for e in report.errors if "`dataset.reg_path`" in e and "builtin:tiny-sd" in e], report.errors
    missing = preflight(make_config(model__base=str(tmp_path / "nothing"), dataset__reg_path=demo_reg))
    assert not [e for e in missing.errors if "`dataset.reg_path`" in e] and any("model.base" in e for e in missing.errors)
    assert preflight(make_config(dataset__reg_path="")).ok
