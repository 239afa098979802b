"""Several processes, one run: `accelerate launch` with the default `device = "auto"` distributes (gloo on
CPU), one process records, and two processes train the adapter one process trains with the same batches."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from trainer.checkpoint import LORA_FILE, STATE_FILE, latest_checkpoint
from trainer.distributed import (
    check_launch,
    effective_batch,
    global_micro_batch,
    launched_processes,
    micro_batch_seed,
    resume_position,
    wants_cpu,
)
from trainer.events import read_events
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]
SAMPLE_DATA = REPO / "sample_data"  # 8 images: 8 micro-batches of 1 an epoch, 4 per process with 2
STEPS = 6  # crosses an epoch boundary (4 steps an epoch at an effective batch of 2)

# Both runs: the text encoder trains too, at a learning rate high enough that its adapter visibly moves.
COMMON = {
    "training__max_steps": STEPS, "network__train_text_encoder": True, "optimizer__learning_rate": 1e-3,
    "optimizer__text_encoder_lr": 1e-3, "export__dtype": "fp32", "checkpoint__every_n_steps": 3,
}


def test_auto_device_follows_a_multi_process_launch():
    two = {"WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    assert launched_processes(two) == 2 and launched_processes({}) == 1
    assert wants_cpu("auto", accelerator_available=False, environ=two), "no GPU under a launch of 2: CPU processes (gloo)"
    assert not wants_cpu("auto", accelerator_available=True, environ=two), "with GPUs accelerate picks NCCL itself"
    assert not wants_cpu("auto", accelerator_available=False, environ={}), "a plain run keeps accelerate's own choice"
    assert wants_cpu("cpu", accelerator_available=True, environ={})


def test_a_launch_that_did_not_distribute_is_refused():
    problem = check_launch(1, "DistributedType.NO", {"WORLD_SIZE": "2"})
    assert problem and "started 2 processes" in problem and "training.device" in problem
    assert check_launch(2, "DistributedType.MULTI_CPU", {"WORLD_SIZE": "2"}) is None
    assert check_launch(1, "DistributedType.NO", {}) is None


def test_effective_batch_and_micro_batch_places():
    batch = effective_batch(2, 4, 3)
    assert batch.total == 24 and batch.describe() == "24 (2 per device × 4 processes × 3 accumulation steps)"
    # Process r takes batches r, r+N, ...: its k-th (1-based) micro-batch is global index (k-1)·N + r.
    assert [global_micro_batch(k, 1, 2) for k in (1, 2, 3)] == [1, 3, 5]
    seeds = {micro_batch_seed(42, e, i) for e in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**64 for s in seeds), "every micro-batch its own stream"


def test_resume_with_another_process_count_maps_the_position_and_says_so():
    same = resume_position(3, 2, 2, 1, 1)
    assert same.batch_in_epoch == 3 and same.message is None
    more = resume_position(3, 2, 4, 1, 1)  # 6 of the epoch's batches done: 2 rounds of 4 is 8, 2 skipped
    assert more.batch_in_epoch == 2
    assert "written by 2 process(es)" in more.message and "4 (1 per device × 4 processes" in more.message
    assert "2 batch(es) of this epoch are skipped" in more.message and "--num_processes 2" in more.message
    assert resume_position(2, 2, 1, 1, 1).batch_in_epoch == 4, "6 → 1 process: every batch done stays done"


def test_a_resume_by_another_process_count_warns_in_the_events(make_config):
    cfg = make_config("recount", training__max_steps=4, checkpoint__every_n_steps=2)
    train(cfg, show_progress=False)
    state_path = latest_checkpoint(cfg.run_dir) / STATE_FILE
    state = torch.load(state_path, weights_only=True)
    assert state["progress"]["num_processes"] == 1, "a checkpoint records how many processes trained it"
    state["progress"].update(num_processes=2, batch_in_epoch=2)  # as if two processes had written it
    torch.save(state, state_path)
    cfg.training.max_steps = 6
    assert train(cfg, resume=True, show_progress=False).status == "completed"
    warnings = [e["message"] for e in read_events(cfg.run_dir) if e["type"] == "warning"]
    assert any("written by 2 process(es) and it resumes with 1" in w for w in warnings), warnings


def _settings(out: Path, name: str) -> list[str]:
    values = {
        "run.output_dir": json.dumps(str(out)), "run.name": json.dumps(name), "dataset.path": json.dumps(str(SAMPLE_DATA)),
        "dataset.resolution": "64", "sampling.every_n_steps": "0", "sampling.at_end": "false",
        "export.verify": "false",
        **{k.replace("__", "."): json.dumps(v) if isinstance(v, str) else str(v).lower() for k, v in COMMON.items()},
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _adapter(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = run_dir / f"{run_dir.name}.safetensors"
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    return load_file(path), metadata


@pytest.mark.slow
def test_two_cpu_processes_train_what_one_process_trains_with_the_same_batches(make_config, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` with the default device on a machine without a GPU.

    The reference is one process with batch 1 and 2 accumulation steps: the same two images per optimizer
    step, in the same order, with the same noise (trainer.distributed.micro_batch_seed).
    """
    config = tmp_path / "cfg.toml"
    config.write_text("")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]  # not 29500: other launches may run at the same time
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([*launch, "-m", "trainer", "train", str(config), "--no-progress", *_settings(tmp_path / "runs", "two")],
                          env=env, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    two = tmp_path / "runs" / "two"

    events = read_events(two)
    kinds = [e["type"] for e in events]
    for kind in ("started", "dataset", "export", "finished"):
        assert kinds.count(kind) == 1, f"one process records the run: {kind} appears {kinds.count(kind)} times in {kinds}"
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, STEPS + 1))
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [3, 6]
    started = events[kinds.index("started")]
    assert (started["num_processes"], started["batch_size"], started["effective_batch_size"]) == (2, 1, 2)
    assert started["device"].startswith("cpu"), "device = auto on a machine without a GPU: CPU processes"
    assert sorted(p.name for p in two.glob("*.safetensors")) == ["two.safetensors"], "one export"

    one_cfg = make_config("one", training__gradient_accumulation_steps=2, **COMMON)
    train(one_cfg, show_progress=False)
    one = one_cfg.run_dir
    one_started = [e for e in read_events(one) if e["type"] == "started"][0]
    assert one_started["effective_batch_size"] == 2 and one_started["num_processes"] == 1

    a, meta_a = _adapter(two)
    b, meta_b = _adapter(one)
    assert meta_a["ss_total_batch_size"] == meta_b["ss_total_batch_size"] == "2"
    assert a.keys() == b.keys()
    te_ups = [k for k in a if k.startswith("lora_te") and "lora_up" in k]
    assert te_ups and all(a[k].abs().max() > 1e-4 for k in te_ups), "the text-encoder adapter trained"
    # An fp32 all-reduce over 2 processes vs. a sum of 2 micro-batches in one: at most rounding apart (measured:
    # bitwise equal on CPU/gloo). 1e-6 allows rounding and is far below the ~1e-3 the weights moved.
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{key}: 2 processes vs 1 process")
    moved = max((load_file(latest_checkpoint(one) / LORA_FILE)[k]).abs().max().item() for k in load_file(latest_checkpoint(one) / LORA_FILE) if "lora_B" in k)
    assert moved > 1e-3, "the tolerance is far below how far training moved the weights"


FSDP_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_sharding_strategy: FULL_SHARD
  fsdp_use_orig_params: true
machine_rank: 0
mixed_precision: 'no'
num_machines: 1
num_processes: 2
use_cpu: true
"""


def test_deepspeed_and_fsdp_configs_are_refused_by_name():
    from trainer.distributed import sharding_problem

    assert sharding_problem({}) is None
    zero = sharding_problem({"ACCELERATE_USE_DEEPSPEED": "true"})
    assert zero and zero.startswith("the accelerate config asks for DeepSpeed") and "--multi_gpu" in zero
    assert "FSDP" in sharding_problem({"ACCELERATE_USE_FSDP": "true"})


@pytest.mark.slow
def test_an_fsdp_accelerate_config_file_is_refused_before_a_run_folder_exists(tmp_path):
    """The pass-through as a user runs it: `accelerate launch --config_file fsdp.yaml -m trainer train ...`.

    (A DeepSpeed config on a machine without the deepspeed package stops in accelerate's own launcher, with
    its "DeepSpeed is not installed" message, before the trainer starts.)
    """
    (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG)
    (tmp_path / "cfg.toml").write_text("")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "fsdp.yaml"),
         "--main_process_port", str(_free_port()), "-m", "trainer", "train", str(tmp_path / "cfg.toml"), "--no-progress",
         *_settings(tmp_path / "runs", "fsdp")],
        env=env, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "error: the accelerate config asks for FSDP" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr.split("error: the accelerate config")[0][-500:]
    assert not (tmp_path / "runs" / "fsdp").exists(), "refused before a run folder is made"


STOP_ON_ONE_RANK = """
import itertools, os, sys
import trainer.run_folder as R
from trainer.cli import main

# Rank 1 alone is asked to stop, at its third step: as when it reads the STOP file a moment before rank 0.
calls = itertools.count()
R.StopRequest.requested = property(
    lambda self: os.environ.get("RANK") == "1" and not self.immediate and next(calls) >= 2
)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_stop_seen_by_one_process_stops_all_at_the_same_step(tmp_path):
    """Every process reads the STOP file on its own. Under the shared decision the run stops at step 3, saved,
    and says so. Without it rank 1 left the loop alone and rank 0 crashed in its next backward ("Connection
    closed by peer"): exit 1, no adapter; a launch that hangs instead fails at the timeout."""
    script = tmp_path / "stop_on_one_rank.py"
    script.write_text(STOP_ON_ONE_RANK)
    config = tmp_path / "cfg.toml"
    config.write_text("")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.Popen([*launch, str(script), "train", str(config), "--no-progress", *_settings(tmp_path / "runs", "stop")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail("the processes did not stop together (hung): " + out[-2000:])
    assert proc.returncode == 0, out[-3000:]
    finished = [e for e in read_events(tmp_path / "runs" / "stop") if e["type"] == "finished"]
    assert [(e["status"], e["step"]) for e in finished] == [("stopped", 3)], finished
    assert (tmp_path / "runs" / "stop" / "stop.safetensors").is_file(), "a stopped run keeps its adapter"
