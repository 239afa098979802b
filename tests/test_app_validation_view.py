"""The page's view of validation: the curve beside the training loss, checkpoint markers, the best checkpoint."""

from __future__ import annotations

from app.run_view import RunView, best_checkpoint, loss_rows, tracking_hint


def _view(tmp_path) -> RunView:
    view = RunView(tmp_path)
    for step, loss in [(1, 1.0), (2, 0.8), (3, 0.9), (4, 0.7)]:
        view.apply({"type": "step", "step": step, "loss": loss, "lr": 1e-4})
    view.apply({"type": "validation", "step": 2, "loss": 0.5})
    view.apply({"type": "checkpoint", "step": 2, "path": "checkpoints/step_000002", "validation_loss": 0.5})
    view.apply({"type": "validation", "step": 4, "loss": 0.6})
    view.apply({"type": "checkpoint", "step": 4, "path": "checkpoints/step_000004", "validation_loss": 0.6})
    return view


def test_loss_chart_has_validation_and_checkpoint_series(tmp_path):
    rows = loss_rows(_view(tmp_path))
    by_series = {}
    for row in rows:
        by_series.setdefault(row["series"], []).append((row["step"], row["loss"]))
    assert by_series["validation"] == [(2, 0.5), (4, 0.6)]
    assert by_series["checkpoint"] == [(2, 0.5), (4, 0.6)], "markers sit on the validation curve"
    assert len(by_series["raw"]) == 4 and len(by_series["smoothed"]) == 4


def test_checkpoint_marker_without_validation_sits_on_the_smoothed_loss(tmp_path):
    view = RunView(tmp_path)
    view.apply({"type": "step", "step": 1, "loss": 2.0, "lr": 1e-4})
    view.apply({"type": "checkpoint", "step": 1, "path": "checkpoints/step_000001"})
    assert [r for r in loss_rows(view) if r["series"] == "checkpoint"] == [{"step": 1, "loss": 2.0, "series": "checkpoint"}]
    assert best_checkpoint(view) is None, "no validation, no best checkpoint"


def test_best_checkpoint_is_the_lowest_validation_loss_with_its_kohya_adapter(tmp_path):
    folder = tmp_path / "checkpoints" / "step_000002"
    folder.mkdir(parents=True)
    for name in ("lora_state.safetensors", "ema_state.safetensors", "r_diffusers.safetensors", "r.safetensors"):
        (folder / name).write_bytes(b"x")
    best = best_checkpoint(_view(tmp_path))
    assert (best.step, best.validation_loss, best.adapter) == (2, 0.5, folder / "r.safetensors")
    assert best.label == "Best checkpoint: step 2, validation loss 0.5000"


def test_tracking_hint_names_the_folder_and_the_command(tmp_path):
    assert tracking_hint(tmp_path) == ""
    (tmp_path / "logs").mkdir()
    assert f"tensorboard --logdir {tmp_path / 'logs'}" in tracking_hint(tmp_path)
