"""The builtin-model cache is complete or absent (concurrent first uses, kills and damage never brick it),
and the 2-process accelerate launch that first exposed it trains one adapter."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.cache_folder import MANIFEST, CacheBuildError, CacheFolder
from trainer.config import ModelConfig
from trainer.events import read_events
from trainer.models.builtin import builtin_cache, builtin_model_path
from trainer.models.loading import load_base_model

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORA_STUDIO_CACHE", str(cache))
    return cache


def _slow_build(counter: Path):
    def build(folder: Path) -> None:
        with open(counter, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        (folder / "part").mkdir()
        (folder / "part" / "weights.bin").write_bytes(b"x" * 1000)
        time.sleep(1.0)  # long enough that the second process arrives while the first builds
        (folder / "model_index.json").write_text("{}")

    return build


def _ensure_in_child(folder: str, counter: str) -> None:
    entry = CacheFolder(Path(folder), "test entry", _slow_build(Path(counter)))
    path = entry.ensure()
    assert entry.problem() is None and (path / "model_index.json").is_file()


def test_concurrent_first_uses_build_once(tmp_path):
    folder, counter = tmp_path / "cache" / "entry", tmp_path / "builds.txt"
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_ensure_in_child, args=(str(folder), str(counter))) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0], "both processes must get a complete folder"
    assert len(counter.read_text().splitlines()) == 1, "the second process must wait for the first build, not race it"
    assert CacheFolder(folder, "test entry", _slow_build(counter)).problem() is None


def test_failed_build_names_the_folder_and_leaves_nothing(tmp_path):
    folder = tmp_path / "cache" / "entry"

    def full_disk(tmp: Path) -> None:
        (tmp / "half").write_bytes(b"x")
        raise OSError(28, "No space left on device")

    with pytest.raises(CacheBuildError) as err:
        CacheFolder(folder, "test entry", full_disk).ensure()
    assert str(folder) in str(err.value) and "can be deleted" in str(err.value)
    assert not folder.exists(), "a failed build must not leave a folder a later run trusts"
    assert not list(folder.parent.glob(".entry.*.tmp")), "the temporary build folder must be removed"


def _damage_missing_marker(folder: Path) -> None:
    # The state the issue found: a half-written folder (empty text_encoder/) from an older lora-studio.
    (folder / MANIFEST).unlink()
    for f in (folder / "text_encoder").iterdir():
        f.unlink()


def _damage_missing_file(folder: Path) -> None:
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()


def _damage_truncated_file(folder: Path) -> None:
    path = folder / "text_encoder" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [_damage_missing_marker, _damage_missing_file, _damage_truncated_file])
def test_incomplete_builtin_is_rebuilt_with_a_notice(empty_cache, capsys, damage):
    folder = builtin_model_path("builtin:tiny-sd")
    damage(folder)
    entry = builtin_cache("builtin:tiny-sd")
    assert entry.problem() is not None, "the damage must be detected before anything loads the folder"
    capsys.readouterr()
    model = load_base_model(ModelConfig(base="builtin:tiny-sd"))
    assert model.unet is not None
    err = capsys.readouterr().err
    assert "incomplete" in err and str(folder) in err, f"the rebuild must be announced, got: {err!r}"
    assert entry.problem() is None


def test_builtin_that_fails_to_load_is_rebuilt(empty_cache, capsys):
    folder = builtin_model_path("builtin:tiny-sd")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\xff" * 8  # the JSON header is garbage now; the size is unchanged, so only loading can tell
    weights.write_bytes(bytes(data))
    assert builtin_cache("builtin:tiny-sd").problem() is None
    capsys.readouterr()
    model = load_base_model(ModelConfig(base="builtin:tiny-sd"))
    assert model.unet is not None
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "rebuilding" in err, err


def test_kill_during_build_leaves_no_folder_a_later_run_loads(empty_cache):
    env = {**os.environ, "LORA_STUDIO_CACHE": str(empty_cache), "PYTHONPATH": str(REPO)}
    builder = subprocess.Popen(
        [sys.executable, "-c", "from trainer.models.builtin import builtin_model_path as b; b('builtin:tiny-sd')"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    builtin_dir = empty_cache / "builtin"
    deadline = time.monotonic() + 120
    while not list(builtin_dir.glob(".tiny-sd-v1.*.tmp")) and builder.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert builder.poll() is None, "the builder ended before it could be killed mid-build"
    time.sleep(0.5)  # let it write part of the model
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait()
    folder = builtin_dir / "tiny-sd-v1"
    assert not folder.exists(), "a killed build must leave no folder under the final name"
    assert list(builtin_dir.glob(".tiny-sd-v1.*.tmp")), "the test must have killed the builder mid-build"

    assert load_base_model(ModelConfig(base="builtin:tiny-sd")).unet is not None
    assert not list(builtin_dir.glob(".tiny-sd-v1.*.tmp")), "the killed builder's leftovers must be removed"


def _train_command(cache: Path, tmp: Path, name: str) -> list[str]:
    return [
        "-m", "trainer", "train", str(tmp / "cfg.toml"), "--no-progress",
        "--set", f"run.name={name!r}".replace("'", '"'), "--set", f'run.output_dir="{tmp / "runs"}"',
        "--set", f'dataset.path="{SAMPLE_DATA}"', "--set", "training.max_steps=2", "--set", 'training.device="cpu"',
        "--set", "sampling.every_n_steps=0", "--set", "sampling.at_end=false", "--set", "export.verify=false",
    ]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "LORA_STUDIO_CACHE": str(cache), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_two_trainers_started_at_once_on_an_empty_cache_both_train(empty_cache, tmp_path):
    (tmp_path / "cfg.toml").write_text("")
    procs = [
        subprocess.Popen([sys.executable, *_train_command(empty_cache, tmp_path, f"run{i}")], env=_env(empty_cache),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    for i in range(2):
        assert (tmp_path / "runs" / f"run{i}" / f"run{i}.safetensors").is_file()


@pytest.mark.slow
def test_accelerate_two_processes_on_an_empty_cache(empty_cache, tmp_path):
    """The README's multi-process line on a fresh machine (CPU processes over gloo)."""
    (tmp_path / "cfg.toml").write_text("")
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
    ]
    proc = subprocess.run([*launch, *_train_command(empty_cache, tmp_path, "dist")], env=_env(empty_cache),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (tmp_path / "runs" / "dist" / "dist.safetensors").is_file()
    assert builtin_cache("builtin:tiny-sd").problem() is None
    kinds = [e["type"] for e in read_events(tmp_path / "runs" / "dist")]
    assert kinds.count("started") == 1 and kinds.count("finished") == 1, f"rank 0 alone records the run: {kinds}"


RANK_STATE_SCRIPT = """
import os, sys
from safetensors.torch import save_file
import trainer.train as T
from trainer.checkpoint import lora_state
from trainer.commands.train import apply_overrides
from trainer.config import Config

original_finish = T.finish

def finish(s, status, last_loss):  # each process's own LoRA weights, before rank 0 exports
    save_file(lora_state(s.trained), os.path.join(sys.argv[1], f"rank{s.accelerator.process_index}.safetensors"))
    return original_finish(s, status, last_loss)

T.finish = finish
cfg = Config()
apply_overrides(cfg, sys.argv[2:])
T.train(cfg, show_progress=False)
"""


@pytest.mark.slow
def test_two_processes_train_one_text_encoder_adapter(empty_cache, tmp_path):
    """Only the UNet runs through DDP's wrapper: the text-encoder LoRA gradients must be averaged too."""
    from safetensors.torch import load_file

    script = tmp_path / "ranks.py"
    script.write_text(RANK_STATE_SCRIPT)
    settings = [
        f'run.output_dir="{tmp_path / "runs"}"', 'run.name="te"', f'dataset.path="{SAMPLE_DATA}"',
        "training.max_steps=4", 'training.device="cpu"', "sampling.every_n_steps=0", "sampling.at_end=false",
        "export.verify=false", "network.train_text_encoder=true", "optimizer.learning_rate=0.001",
    ]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = subprocess.run([*launch, str(script), str(tmp_path), *settings], env=_env(empty_cache),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rank0, rank1 = (load_file(tmp_path / f"rank{i}.safetensors") for i in range(2))
    te_ups = [k for k in rank0 if k.startswith("text_encoder.") and "lora_B" in k]
    assert te_ups and any(rank0[k].abs().max() > 0 for k in te_ups), "the text-encoder LoRA must have trained"
    for key in rank0:
        torch.testing.assert_close(rank1[key], rank0[key], rtol=1e-6, atol=1e-9, msg=f"{key} differs between processes")
