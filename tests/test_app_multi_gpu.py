"""The UI's side of several GPUs and of running out of memory: the accelerate command a job starts with, the
restarts offered after an out-of-memory stop, the effective batch and the estimate beside Start."""

from __future__ import annotations

import sys

import app.jobs as jobs_module
from app.jobs import JobManager
from app.multi_gpu import gpu_choices, launch_command, picked_gpu_ids
from app.oom_restart import restart_config, restart_offers
from app.run_view import RunView
from app.start_check import estimate_markdown, start_check
from trainer.config import Config, config_to_dict, dumps_config
from trainer.gpus import Gpu

TRAINER = [sys.executable, "-m", "trainer", "train"]
GPUS = [Gpu(0, "NVIDIA H100", 81559), Gpu(1, "NVIDIA H100", 81559), Gpu(2, "NVIDIA A10", 23028)]


def test_two_or_more_gpus_run_under_accelerate_launch():
    assert launch_command(TRAINER, []) == TRAINER and launch_command(TRAINER, [1]) == TRAINER
    command = launch_command(TRAINER, [0, 2], port=29999)
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    joined = " ".join(command)
    assert "--multi_gpu --num_processes 2" in joined and "--gpu_ids 0,2" in joined and "--main_process_port 29999" in joined
    assert command[-3:] == ["-m", "trainer", "train"], "accelerate runs the trainer module, arguments follow"
    labels = gpu_choices(GPUS)
    assert picked_gpu_ids([labels[2], labels[0]], GPUS) == [0, 2], "in the machine's order"


def test_a_job_on_two_gpus_is_started_through_accelerate(tmp_path, monkeypatch):
    started = []

    class Recorder:
        pid = 12345

        def __init__(self, command, **kwargs):
            started.append(command)

        def poll(self):
            return None

    monkeypatch.setattr(jobs_module.subprocess, "Popen", Recorder)
    manager = JobManager(tmp_path / "runs", trainer_command=TRAINER)
    cfg = Config()
    job = manager.submit(dumps_config(cfg), "two-gpus", gpus=[0, 1])
    assert manager.get(job.id).gpus == [0, 1], "the choice is kept with the job"
    command = started[-1]
    trainer_part = command[command.index("--") + 1 :]
    assert trainer_part[1:3] == ["-m", "accelerate.commands.launch"] and "--gpu_ids" in trainer_part
    assert str(job.config_path) in trainer_part


def test_out_of_memory_restarts_change_one_setting_each():
    cfg = Config()
    cfg.training.batch_size, cfg.training.gradient_accumulation_steps = 4, 1
    assert restart_offers(cfg) == ["checkpointing", "half_batch"]
    gc = restart_config(cfg, "checkpointing")
    assert gc.training.gradient_checkpointing and not cfg.training.gradient_checkpointing, "a copy is changed"
    half = restart_config(cfg, "half_batch")
    assert (half.training.batch_size, half.training.gradient_accumulation_steps) == (2, 2), "the effective batch stays 4"
    changed = {k for k, v in config_to_dict(half)["training"].items() if config_to_dict(cfg)["training"][k] != v}
    assert changed == {"batch_size", "gradient_accumulation_steps"}
    cfg.training.batch_size, cfg.training.gradient_checkpointing = 1, True
    assert restart_offers(cfg) == [], "nothing left to offer"


def test_the_run_view_knows_the_batch_and_an_out_of_memory_stop(tmp_path):
    view = RunView(tmp_path)
    view.apply({"type": "started", "total_steps": 10, "batch_size": 2, "num_processes": 4, "gradient_accumulation_steps": 3})
    assert view.batch == "24 (2 per device × 4 processes × 3 accumulation steps)"
    view.apply({"type": "finished", "status": "failed", "error": "out of GPU memory ...", "reason": "out_of_memory"})
    assert view.failure_reason == "out_of_memory"
    old = RunView(tmp_path)
    old.apply({"type": "started", "total_steps": 10})
    assert old.batch == "", "runs recorded before the batch was logged show none"


def test_the_estimate_beside_start(make_config):
    from trainer.config import ModelConfig
    from trainer.models.loading import load_base_model

    load_base_model(ModelConfig(base="builtin:tiny-sd"))  # the pre-flight reads a builtin's configs once built
    cfg = make_config("estimate", training__batch_size=2)
    check = start_check(cfg)
    assert check.ok
    text = estimate_markdown(check.report, cfg, processes=2)
    assert text.startswith("**Estimate** on each GPU: peak ") and "4 (2 per device × 2 processes" in text
