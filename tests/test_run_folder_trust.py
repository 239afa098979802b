"""Run folders a user can trust: nothing of theirs overwritten, one trainer per folder, resumes that change
nothing when they fail, a full disk said in words, a stop honoured before training begins, and an export
that fails its check is a failed run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import trainer.checkpoint as checkpoint_module
from trainer.caches import LatentCache
from trainer.checkpoint import latest_checkpoint
from trainer.cli import main as cli_main
from trainer.config import dumps_config
from trainer.disk_full import DiskFullError
from trainer.errors import UserFacingError
from trainer.events import read_events
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]


def _finished(run_dir: Path) -> dict:
    return [e for e in read_events(run_dir) if e["type"] == "finished"][-1]


def test_a_folder_that_is_not_a_run_is_never_written(make_config):
    cfg = make_config("mine")
    cfg.run_dir.mkdir(parents=True)
    precious = cfg.run_dir / "mine.safetensors"  # e.g. an adapter the user keeps there
    precious.write_bytes(b"user data")
    with pytest.raises(UserFacingError, match="not a lora-studio run.*mine.safetensors"):
        train(cfg, show_progress=False)
    assert precious.read_bytes() == b"user data"
    assert sorted(p.name for p in cfg.run_dir.iterdir()) == ["mine.safetensors"], "nothing may be added either"


def test_a_second_trainer_in_the_same_folder_is_refused_with_the_holders_pid(make_config):
    cfg = make_config("busy")
    train(cfg, show_progress=False)
    before = (cfg.run_dir / "events.jsonl").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from trainer.run_lock import RunLock; "
         f"lock = RunLock({str(cfg.run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserFacingError, match=f"in use by another trainer \\(pid {holder.pid}\\)"):
            train(cfg, resume=True, show_progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert (cfg.run_dir / "events.jsonl").read_bytes() == before, "the refused trainer must write nothing"


def test_a_resume_with_changed_network_settings_changes_nothing(make_config):
    cfg = make_config("resume", training__max_steps=4)
    train(cfg, show_progress=False)
    config_before = (cfg.run_dir / "config.toml").read_bytes()
    events_before = (cfg.run_dir / "events.jsonl").read_bytes()
    cfg.network.rank = cfg.network.rank * 2
    cfg.training.max_steps = 6
    with pytest.raises(UserFacingError, match=r"network\.rank 16 -> 32"):
        train(cfg, resume=True, show_progress=False)
    assert (cfg.run_dir / "config.toml").read_bytes() == config_before, "config.toml must not be rewritten"
    assert (cfg.run_dir / "events.jsonl").read_bytes() == events_before
    assert _finished(cfg.run_dir)["status"] == "completed", "a completed run must stay completed"


def test_a_resume_that_fails_while_setting_up_leaves_the_record_as_it_was(make_config, tmp_path):
    cfg = make_config("resume2", training__max_steps=4)
    train(cfg, show_progress=False)
    events_before = (cfg.run_dir / "events.jsonl").read_bytes()
    (tmp_path / "empty").mkdir()
    cfg.dataset.path = str(tmp_path / "empty")  # fails in set-up, after the run folder checks passed
    cfg.training.max_steps = 6
    with pytest.raises(UserFacingError):
        train(cfg, resume=True, show_progress=False)
    assert (cfg.run_dir / "events.jsonl").read_bytes() == events_before
    assert "empty" not in (cfg.run_dir / "config.toml").read_text()


def test_a_full_disk_is_said_in_words_and_keeps_the_last_checkpoint(make_config, monkeypatch):
    cfg = make_config("full", training__max_steps=6, checkpoint__every_n_steps=2)
    real_save = checkpoint_module.torch.save
    calls = []

    def save_until_full(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) >= 2:  # what torch.save raises when the disk fills mid-write
            Path(path).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1472 vs 1364")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_full)
    with pytest.raises(DiskFullError, match=r"no space left on .*full: about [\d.,]+ MB needed, [\d.,]+ MB free"):
        train(cfg, show_progress=False)
    assert _finished(cfg.run_dir)["error"].startswith("no space left on")
    assert latest_checkpoint(cfg.run_dir).name == "step_000002", "the last good checkpoint is kept"
    assert not [p for p in cfg.run_dir.rglob("*.tmp")], "a failed write leaves no temporary files"


def test_leftovers_of_killed_writers_are_removed_on_resume(make_config):
    cfg = make_config("left", training__max_steps=2, checkpoint__every_n_steps=2)
    train(cfg, show_progress=False)
    leftovers = [
        cfg.run_dir / "checkpoints" / ".step_000004.k2j3.tmp",  # a checkpoint folder being built at the kill
        cfg.run_dir / ".left.safetensors.x8d1.tmp",  # an adapter being written
        cfg.run_dir / "samples" / ".s_0001.png.aa.tmp",
    ]
    leftovers[0].mkdir()
    (leftovers[0] / "lora_state.safetensors").write_bytes(b"half")
    for path in leftovers[1:]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    cfg.training.max_steps = 4
    train(cfg, resume=True, show_progress=False)
    assert not [p for p in leftovers if p.exists()]


def _encode_calling(monkeypatch, on_first) -> list[int]:
    """Make latent caching call ``on_first`` while it encodes the first image; returns the encode calls."""
    real_encode = LatentCache._encode
    encoded: list[int] = []

    def encode(*args, **kwargs):
        encoded.append(1)
        if len(encoded) == 1:
            on_first()
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(LatentCache, "_encode", staticmethod(encode))
    return encoded


def test_sigterm_during_latent_caching_stops_at_once(make_config, monkeypatch):
    cfg = make_config("term", dataset__cache_latents="memory")
    encoded = _encode_calling(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    result = train(cfg, show_progress=False)
    assert result.status == "stopped" and result.step == 0
    assert len(encoded) == 1, f"caching must stop at the signal, encoded {len(encoded)} of 8 images"
    assert _finished(cfg.run_dir)["status"] == "stopped"


def test_stop_file_during_latent_caching_is_honoured(make_config, monkeypatch):
    cfg = make_config("stopfile", dataset__cache_latents="memory")
    encoded = _encode_calling(monkeypatch, lambda: (cfg.run_dir / "STOP").touch())  # what the UI's Stop writes
    result = train(cfg, show_progress=False)
    assert result.status == "stopped" and len(encoded) == 1


def test_sigterm_while_the_model_loads_stops_at_once(make_config, monkeypatch):
    import trainer.models.loading as loading

    def slow_load(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # a big model; the stop must not wait for it
        raise AssertionError("the stop was not honoured during loading")

    monkeypatch.setattr(loading, "load_base_model", slow_load)
    started = time.monotonic()
    result = train(make_config("loadterm"), show_progress=False)
    assert result.status == "stopped" and time.monotonic() - started < 20


def test_an_export_that_fails_its_check_fails_the_run(make_config, monkeypatch, tmp_path, capsys):
    import trainer.export.verify as verify

    def failing_check(path, model):
        return SimpleNamespace(verified=False, max_abs_diff=0.5, message="diffusers dropped 132 of 156 layers")

    monkeypatch.setattr(verify, "verify_adapter", failing_check)
    cfg = make_config("badexport", export__verify=True)
    config_path = tmp_path / "c.toml"
    config_path.write_text(dumps_config(cfg))
    code = cli_main(["train", str(config_path), "--no-progress"])
    assert code == 1, "a failed export check is a non-zero exit"
    assert "export check failed" in capsys.readouterr().err
    finished = _finished(cfg.run_dir)
    assert finished["status"] == "failed" and "dropped 132 of 156" in finished["error"]
    exports = [e for e in read_events(cfg.run_dir) if e["type"] == "export"]
    assert exports and exports[0]["verified"] is False
    assert json.loads(json.dumps(finished))["adapter"], "the file stays for inspection"


def test_a_run_folder_that_cannot_be_made_is_said_before_anything_starts(make_config, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    cfg = make_config("x", run__output_dir=str(blocker / "runs"))
    with pytest.raises(UserFacingError, match=r"cannot make run folder .*not-a-folder is a file; set `run.output_dir`"):
        train(cfg, show_progress=False)
    config_path = tmp_path / "c.toml"
    config_path.write_text(dumps_config(cfg))
    assert cli_main(["train", str(config_path), "--dry-run"]) == 2, "the pre-flight check refuses it too"
