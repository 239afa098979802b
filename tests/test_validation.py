"""Validation loss: the held-out split, the fixed timestep grid, determinism, learning, the best checkpoint."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from trainer.checkpoint import best_checkpoint, checkpoint_validation, list_checkpoints
from trainer.data.holdout import held_out_split
from trainer.errors import UserFacingError
from trainer.events import read_events
from trainer.timesteps import TimestepRange, grid_timesteps


@dataclass
class _Record:
    path: Path
    is_regularization: bool = False


@dataclass
class _Dataset:
    records: list


def _dataset(n: int, reg: int = 0) -> _Dataset:
    records = [_Record(Path(f"img/{i:02d}.png")) for i in range(n)]
    records += [_Record(Path(f"reg/{i:02d}.png"), is_regularization=True) for i in range(reg)]
    return _Dataset(records)


def test_held_out_split_is_seeded_sized_and_never_takes_regularization_images():
    data = _dataset(8, reg=3)
    kept, held = held_out_split(data.records, 0.25, seed=0)
    assert len(held) == 2, "round(0.25 x 8) images are held out"
    assert len(kept) == 9 and not set(map(id, kept)) & set(map(id, held))
    assert not any(r.is_regularization for r in held)
    assert held_out_split(data.records, 0.25, seed=0)[1] == held, "the same seed holds out the same images"
    assert any(held_out_split(data.records, 0.25, seed=s)[1] != held for s in range(1, 6)), "another seed, another choice"
    assert len(held_out_split(data.records, 0.01, seed=0)[1]) == 1, "at least one image is held out"


def test_held_out_split_refuses_to_leave_nothing_to_train():
    with pytest.raises(UserFacingError, match="`validation.fraction = 0.9`.*leave none"):
        held_out_split(_dataset(2).records, 0.9, seed=0)


def test_grid_timesteps_are_slice_centres_of_the_trained_range():
    assert grid_timesteps(4, TimestepRange(0, 1000)).tolist() == [125, 375, 625, 875]
    assert grid_timesteps(2, TimestepRange(100, 500)).tolist() == [200, 400]
    assert grid_timesteps(1, TimestepRange(0, 1000)).tolist() == [500]


def _copy_images(tmp_path: Path) -> Path:
    """A validation folder holding the training images: a target the adapter can learn."""
    folder = tmp_path / "val"
    shutil.copytree(Path(__file__).resolve().parents[1] / "sample_data", folder, ignore=shutil.ignore_patterns("*.py"))
    return folder


@pytest.mark.slow
def test_validation_is_deterministic_falls_while_learning_and_marks_the_best_checkpoint(make_config, tmp_path):
    import trainer.train as train_module
    from trainer.train import train

    sessions = []
    original = train_module.run_loop
    train_module.run_loop = lambda s, *a: (sessions.append(s), original(s, *a))[1]
    try:
        cfg = make_config(
            "val", training__max_steps=24, training__batch_size=4, optimizer__learning_rate=1e-2,
            validation__path=str(_copy_images(tmp_path)), validation__every_n_steps=4, validation__timesteps=2,
            checkpoint__every_n_steps=8, checkpoint__keep_last=1,
        )
        train(cfg, show_progress=False)
    finally:
        train_module.run_loop = original
    events = [e for e in read_events(cfg.run_dir) if e["type"] == "validation"]
    assert [e["step"] for e in events] == [4, 8, 12, 16, 20, 24]
    losses = [e["loss"] for e in events]
    assert losses[-1] < losses[0] * 0.98, f"validation loss should fall on images the adapter learns: {losses}"

    s = sessions[0]
    s.validator.last = None
    torch.manual_seed(12345)  # another global RNG state: the score must not depend on it
    again = s.validator.evaluate(s.model, 24, torch.float32, s.accelerator.autocast)
    assert round(again.loss, 6) == events[-1]["loss"], "the same weights score the same, bit for bit"

    checkpoints = {e["step"]: e["validation_loss"] for e in read_events(cfg.run_dir) if e["type"] == "checkpoint"}
    assert checkpoints == {8: losses[1], 16: losses[3], 24: losses[5]}
    best = best_checkpoint(cfg.run_dir)
    kept = [p.name for p in list_checkpoints(cfg.run_dir)]
    assert best is not None and best.name in kept, "pruning keeps the best checkpoint besides the newest"
    assert checkpoint_validation(best)["loss"] == min(checkpoints.values())
    from safetensors import safe_open

    with safe_open(str(best / f"{cfg.run.name}.safetensors"), "pt") as handle:
        header = handle.metadata()
    assert float(header["ss_validation_loss"]) == checkpoint_validation(best)["loss"]


def test_pruning_keeps_the_best_validation_checkpoint(tmp_path):
    from trainer.checkpoint import CheckpointExtras, TrainProgress, save_checkpoint

    class Adapter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lora_A = torch.nn.Parameter(torch.zeros(2))

    modules = {"unet": Adapter()}
    optimizer = torch.optim.SGD(modules["unet"].parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for step, loss in [(1, 0.5), (2, 0.3), (3, 0.4), (4, 0.6)]:
        save_checkpoint(tmp_path, TrainProgress(step), modules, optimizer, scheduler, keep_last=2,
                        extras=CheckpointExtras(validation={"step": step, "loss": loss}))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000002", "step_000003", "step_000004"]
    assert best_checkpoint(tmp_path).name == "step_000002"


def test_preflight_refuses_a_fraction_that_leaves_nothing_to_train(make_config):
    from trainer.preflight import preflight

    report = preflight(make_config("pf", validation__fraction=0.95))
    assert any("`validation.fraction = 0.95` would hold out 8 of 8" in e for e in report.errors), report.errors
    assert preflight(make_config("pf2", validation__fraction=0.25)).ok
