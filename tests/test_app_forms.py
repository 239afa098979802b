"""The pure parts of the UI: form ↔ config, events → view. No browser, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from app.config_form import (
    apply_preset,
    config_from_toml_text,
    config_to_toml_text,
    config_to_values,
    form_fields,
    settings_for_new_base,
    ui_default_config,
    unique_run_name,
    values_to_config,
)
from app.run_status import outcome_html, run_status
from app.run_view import (
    ACTIVE_POLL_S,
    CHART_INTERVAL_S,
    IDLE_POLL_S,
    MonitorMemo,
    RunFollower,
    RunView,
    gallery_items,
    loss_rows,
    monitor_memo,
    progress_html,
    smoothed,
)
from trainer.config import Config, config_to_dict, field_infos, load_config

REPO = Path(__file__).resolve().parents[1]


def _index(key: str) -> int:
    return [f.key for f in form_fields()].index(key)


def test_every_trainer_setting_has_a_widget_with_its_doc():
    keys = {f.key: f for f in form_fields()}
    for info in field_infos():
        if info.key == "run.output_dir":  # the UI owns it
            assert info.key not in keys
            continue
        assert keys[info.key].help, info.key
        assert keys[info.key].advanced == info.advanced


def test_form_round_trip_reproduces_the_config(tmp_path):
    cfg = ui_default_config(tmp_path / "runs", tmp_path / "data")
    cfg.sampling.prompts = ["sks, a photo", "sks, a drawing"]
    cfg.network.rank, cfg.optimizer.learning_rate = 8, 3e-4
    values = config_to_values(cfg)
    assert values[_index("sampling.prompts")] == "sks, a photo\nsks, a drawing"
    back, problems = values_to_config(values, tmp_path / "runs")
    assert problems == []
    assert config_to_dict(back) == config_to_dict(cfg)


def test_form_values_as_gradio_sends_them_are_coerced(tmp_path):
    values = config_to_values(ui_default_config(tmp_path, REPO / "sample_data"))
    values[_index("network.rank")] = 8.0  # gr.Number sends floats
    values[_index("training.seed")] = "7"
    back, problems = values_to_config(values, tmp_path)
    assert problems == [] and back.network.rank == 8 and back.training.seed == 7


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("network.rank", 0, "`network.rank` must be a positive integer, got 0"),
        ("network.rank", 2.5, "`network.rank` must be a whole number"),
        ("optimizer.learning_rate", None, "`optimizer.learning_rate` needs a number"),
        ("run.name", "a/b", "`run.name` must be a plain folder name"),
    ],
)
def test_form_problems_name_the_field(tmp_path, key, value, message):
    values = config_to_values(ui_default_config(tmp_path, REPO / "sample_data"))
    values[_index(key)] = value
    cfg, problems = values_to_config(values, tmp_path)
    assert any(message in p for p in problems), problems


def test_preset_keeps_the_users_dataset_and_name(tmp_path):
    cfg = ui_default_config(tmp_path, REPO / "sample_data")
    cfg.run.name, cfg.dataset.trigger_word = "mine", "zxc"
    styled = apply_preset(cfg, "style")
    assert styled.network.unet_targets == "kohya" and styled.training.max_steps == 1500
    assert (styled.run.name, styled.dataset.trigger_word, styled.dataset.path) == ("mine", "zxc", cfg.dataset.path)


def test_saved_toml_loads_in_the_cli_and_back_in_the_form(tmp_path):
    cfg = ui_default_config(tmp_path / "runs", REPO / "sample_data")
    text = config_to_toml_text(cfg)
    (tmp_path / "c.toml").write_text(text)
    assert config_to_dict(load_config(tmp_path / "c.toml")) == config_to_dict(cfg)
    loaded, problems = config_from_toml_text(text.replace(str(tmp_path / "runs"), "/elsewhere"), "c.toml", tmp_path / "ui-runs")
    assert problems == [] and loaded.run.output_dir == str(tmp_path / "ui-runs")
    bad, problems = config_from_toml_text("[network]\nrank = 'x'\n", "bad.toml", tmp_path)
    assert bad is None and "bad.toml" in problems[0] and "network.rank" in problems[0]


def test_unique_run_name_skips_existing_and_queued(tmp_path):
    (tmp_path / "my-lora").mkdir()
    assert unique_run_name(tmp_path, "my-lora") == "my-lora-2"
    assert unique_run_name(tmp_path, "my-lora", {"my-lora-2"}) == "my-lora-3"
    assert unique_run_name(tmp_path, "fresh") == "fresh"


def _write_events(run_dir: Path, events: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "events.jsonl", "a") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")


def test_follower_reads_events_incrementally_into_a_view(tmp_path):
    run = tmp_path / "run"
    follower = RunFollower(run)
    assert follower.poll().status == "waiting"
    _write_events(run, [{"type": "started", "time": 1.0, "total_steps": 10, "base_model": "builtin:tiny-sd"}])
    _write_events(run, [{"type": "step", "time": 2.0, "step": s, "total_steps": 10, "loss": 1.0 / s, "lr": 1e-4,
                         "it_per_s": 2.0, "eta_s": 10 - s} for s in range(1, 5)])
    (run / "samples").mkdir()
    (run / "samples" / "a.png").write_bytes(b"png")
    _write_events(run, [{"type": "sample", "time": 3.0, "step": 4, "path": "samples/a.png", "prompt": "sks"}])
    view = follower.poll()
    assert (view.status, view.step, view.total_steps, len(view.losses)) == ("running", 4, 10, 4)
    assert gallery_items(view) == [(str(run / "samples" / "a.png"), "step 4 · sks")]
    html = progress_html(view)
    assert 'data-step="4"' in html and "40.0%" in html and "2.00 it/s" in html
    with open(run / "events.jsonl", "a") as handle:  # a half-written line is not consumed yet
        handle.write('{"type": "finished", "status": "comp')
    assert follower.poll().status == "running"
    with open(run / "events.jsonl", "a") as handle:
        handle.write('leted", "step": 10, "time": 9.0}\n')
    view = follower.poll()
    assert view.status == "completed" and view.step == 10
    assert "completed · step 10 / 10" in outcome_html("run", view, run_status(view))


def test_failed_run_shows_its_error(tmp_path):
    run = tmp_path / "run"
    _write_events(run, [{"type": "started", "time": 1.0, "total_steps": 5},
                        {"type": "finished", "time": 2.0, "status": "failed", "step": 0,
                         "error": "`dataset.path` folder not found: /x"}])
    view = RunFollower(run).poll()
    shown = outcome_html("run", view, run_status(view))
    assert "failed — `dataset.path` folder not found: /x" in shown and 'class="ls-outcome failed"' in shown


def test_monitor_resends_only_what_changed_and_throttles_the_charts():
    view = RunView(Path("r"), status="running", step=1, losses=[(1, 1.0)])

    def seen(memo, now, log=""):
        return memo.updates(monitor_memo("job1", "running", view, [["job1", "r", "running"]], log), now)

    sent, memo = seen(MonitorMemo(), 0.0)
    assert sent == {"progress", "charts", "gallery", "queue", "poll_s"}  # first poll: all (the log is still empty)
    assert memo.poll_s == ACTIVE_POLL_S
    assert seen(memo, 0.5)[0] == set()  # nothing new: nothing re-sent
    view.step, view.losses = 2, [(1, 1.0), (2, 0.9)]
    sent, memo = seen(memo, 1.0, log="step 2")
    assert sent == {"progress", "log"}  # the chart waits for its interval...
    view.step, view.losses = 3, view.losses + [(3, 0.8)]
    sent, memo = seen(memo, CHART_INTERVAL_S + 0.1, log="step 2")
    assert sent == {"progress", "charts"}  # ...then draws every point so far
    view.step, view.losses, view.status = 4, view.losses + [(4, 0.7)], "completed"
    sent, memo = seen(memo, CHART_INTERVAL_S + 0.2, log="step 2")
    assert "charts" in sent  # the end of a run is drawn at once, whatever the interval
    view.previews.append(object())
    sent, memo = seen(memo, CHART_INTERVAL_S + 0.3, log="step 2")
    assert sent == {"gallery"}
    # Nothing running or queued any more: the page slows its polling, once.
    sent, memo = memo.updates(monitor_memo("job1", "completed", view, [], "step 2"), CHART_INTERVAL_S + 1)
    assert sent == {"progress", "queue", "poll_s"} and memo.poll_s == IDLE_POLL_S
    # A job ending (its outcome box) is sent on its own, and not again while it stays the same.
    sent, memo = memo.updates(monitor_memo("job1", "completed", view, [], "step 2", "<div>ended</div>"), CHART_INTERVAL_S + 2)
    assert sent == {"outcome"}
    assert memo.updates(monitor_memo("job1", "completed", view, [], "step 2", "<div>ended</div>"), CHART_INTERVAL_S + 3)[0] == set()


def test_loss_rows_have_raw_and_smoothed_series():
    view = RunView(Path("r"))
    view.losses = [(i, float(v)) for i, v in enumerate([4, 2, 4, 2, 4, 2], start=1)]
    rows = loss_rows(view)
    raw = [r["loss"] for r in rows if r["series"] == "raw"]
    smooth = [r["loss"] for r in rows if r["series"] == "smoothed"]
    assert raw == [4, 2, 4, 2, 4, 2] and len(smooth) == 6
    assert smooth[0] == pytest.approx(4.0)  # debiased: the first point is the first value, not 0.4
    assert max(smooth[1:]) < 4 and min(smooth[1:]) > 2
    assert smoothed([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])


def test_ui_process_never_imports_torch():
    code = "import sys, app.ui, launch; print('torch' in sys.modules, 'diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


@pytest.mark.parametrize(
    ("argv", "refused"),
    [
        ([], None),
        (["--host", "0.0.0.0"], "--auth"),
        (["--host", "0.0.0.0", "--auth", "u:p"], None),
        (["--share"], "--auth"),
        (["--auth", "nopassword"], "USER:PASSWORD"),
        (["--host", "::1"], None),
    ],
)
def test_launch_refuses_exposure_without_auth(argv, refused):
    import launch

    problem = launch.check_exposure(launch.parse_args(argv))
    assert (problem is None) if refused is None else (refused in problem)
    assert launch.parse_args([]).host == "127.0.0.1"


def test_launch_exits_with_message_instead_of_starting(tmp_path):
    out = subprocess.run([sys.executable, "launch.py", "--host", "0.0.0.0"], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 2 and "refusing to start" in out.stderr and "Traceback" not in out.stderr


def test_launch_on_a_busy_port_says_what_to_do(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "launch.py", "--port", str(port), "--runs-dir", str(tmp_path / "runs"),
             "--data-dir", str(tmp_path / "data")], capture_output=True, text=True, cwd=REPO, timeout=120,
        )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and f"--port {port + 1}" in out.stderr


def test_default_config_is_valid(tmp_path):
    cfg: Config = ui_default_config(tmp_path, REPO / "sample_data")
    values = config_to_values(cfg)
    back, problems = values_to_config(values, tmp_path)
    assert problems == [] and back.model.base == "builtin:shapes-sd" and back.export.format == "both"


def test_a_new_base_drops_what_was_made_for_the_shapes_model(tmp_path):
    """Changing the first run's base to a real model clears the demo's regularization folder (which the
    pre-flight check would refuse) and its guidance of 3, and says so; other settings and a base that stays
    builtin:shapes-sd are left alone."""
    from trainer.preflight import demo_regularization_problem

    cfg = ui_default_config(tmp_path / "runs", tmp_path / "data")
    same, none = settings_for_new_base(ui_default_config(tmp_path / "runs", tmp_path / "data"))
    assert none == [] and same.dataset.reg_path.endswith("sample_regularization")
    cfg.model.base = "/models/sd15"
    assert demo_regularization_problem(cfg) is not None
    adjusted, changes = settings_for_new_base(cfg)
    assert adjusted.dataset.reg_path == "" and adjusted.sampling.guidance_scale == 7.5
    assert [c.split(":")[0] for c in changes] == ["dataset.reg_path", "sampling.guidance_scale"]
    assert demo_regularization_problem(adjusted) is None
    assert adjusted.optimizer.learning_rate == 1e-3 and adjusted.dataset.prior_loss_weight == 1.0

    cfg = ui_default_config(tmp_path / "runs", tmp_path / "data")
    cfg.model.base, cfg.dataset.reg_path, cfg.sampling.guidance_scale = "/models/sd15", "/data/dogs", 5.0
    kept, changes = settings_for_new_base(cfg)
    assert changes == [] and kept.dataset.reg_path == "/data/dogs" and kept.sampling.guidance_scale == 5.0
