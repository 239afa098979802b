"""The Runs tab's pure parts: actions on a run (resume, delete, sample now), its detail view, the table.

Run folders are written by hand in the trainer's format; a live trainer is stood in for by holding the
run lock as the engine does, and a resumed job runs tests/fake_trainer.py. No torch, no browser.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from app.datasets import DatasetStore
from app.jobs import JobManager
from app.run_actions import delete_run, request_sample, resume_run, run_actions
from app.run_detail import preview_grid, preview_grid_html, run_facts, try_it_prompt
from app.run_status import RunStatus
from app.run_view import load_view
from app.studio import Settings, Studio
from app.tabs.runs import runs_table
from trainer.config import Config, dumps_config
from trainer.run_folder import SAMPLE_NOW_FILE
from trainer.run_lock import RunLock

REPO = Path(__file__).resolve().parents[1]
FAKE_TRAINER = REPO / "tests" / "fake_trainer.py"


def _studio(tmp_path: Path) -> Studio:
    settings = Settings(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    jobs = JobManager(settings.runs_dir, trainer_command=[sys.executable, str(FAKE_TRAINER)])
    return Studio(settings, jobs, DatasetStore(settings.data_dir))


def _run(studio: Studio, name: str, events: list[dict], base: str = "builtin:tiny-sd") -> Path:
    """A run folder as the trainer leaves it: its config, and the given events."""
    cfg = Config()
    cfg.run.name, cfg.run.output_dir = name, str(studio.settings.runs_dir)
    cfg.model.base, cfg.dataset.path, cfg.training.max_steps = base, str(REPO / "sample_data"), 20
    run_dir = studio.settings.runs_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(dumps_config(cfg), encoding="utf-8")
    with open(run_dir / "events.jsonl", "w") as handle:
        for event in events:
            handle.write(json.dumps({"time": 100.0, **event}) + "\n")
    return run_dir


STARTED = {"type": "started", "total_steps": 20, "resumed_from_step": 0, "base_model": "builtin:tiny-sd"}


def _steps(n: int) -> list[dict]:
    return [{"type": "step", "step": s, "total_steps": 20, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, n + 1)]


def test_which_actions_a_run_offers():
    def actions(state: str, queued: bool = False) -> tuple[bool, bool, bool]:
        a = run_actions(RunStatus(state, state), queued)
        return a.resume, a.delete, a.sample_now

    assert actions("stopped") == (True, True, False)
    assert actions("failed") == (True, True, False)
    assert actions("interrupted") == (True, True, False)
    assert actions("completed") == (False, True, False)
    assert actions("running") == (False, False, True)
    assert actions("waiting") == (False, False, False)
    assert actions("stopping") == (False, False, False)
    assert actions("stopped", queued=True) == (False, False, False), "a queued resume is neither resumed again nor deleted"


def test_resume_queues_the_runs_own_config_with_resume(tmp_path):
    studio = _studio(tmp_path)
    _run(studio, "done", [STARTED, *_steps(20), {"type": "finished", "status": "completed", "step": 20}])
    stopped = _run(studio, "halted", [STARTED, *_steps(4), {"type": "finished", "status": "stopped", "step": 4}])
    refused = resume_run(studio, "done")
    assert not refused.ok and "only a stopped, failed or interrupted run can be resumed" in refused.message
    assert studio.jobs.jobs() == [], "a refused resume queues nothing"

    (stopped / "checkpoints" / "step_000004").mkdir(parents=True)  # what --resume continues from
    result = resume_run(studio, "halted")
    assert result.ok and "**halted** from its checkpoint at step 4" in result.message, result.message
    (job,) = studio.jobs.jobs()
    assert job.resume and job.run_dir.resolve() == stopped.resolve()
    assert 'name = "halted"' in job.config_path.read_text()
    again = resume_run(studio, "halted")
    assert not again.ok, "a run being resumed is not resumed twice"
    # The fake trainer refuses a folder with a run unless it got --resume: completing proves it did.
    deadline = time.monotonic() + 20
    while studio.jobs.get(job.id).state not in ("completed", "failed", "died") and time.monotonic() < deadline:
        studio.jobs.tick()
        time.sleep(0.05)
    assert studio.jobs.get(job.id).state == "completed", studio.jobs.log_tail(job.id)


def test_resume_is_refused_beside_the_button_when_the_dataset_is_gone(tmp_path):
    studio = _studio(tmp_path)
    run_dir = _run(studio, "orphan", [STARTED, {"type": "finished", "status": "stopped", "step": 0}])
    text = (run_dir / "config.toml").read_text().replace(str(REPO / "sample_data"), str(tmp_path / "gone"))
    (run_dir / "config.toml").write_text(text)
    result = resume_run(studio, "orphan")
    assert not result.ok and "dataset.path" in result.message and "ls-start-error" in result.message, result.message
    assert studio.jobs.jobs() == []


def test_delete_moves_to_the_trash_but_never_a_running_run(tmp_path):
    studio = _studio(tmp_path)
    live = _run(studio, "live", [STARTED, *_steps(3)])
    _run(studio, "old", [STARTED, {"type": "finished", "status": "stopped", "step": 0}])
    lock = RunLock(live).acquire()  # a trainer training in it
    try:
        refused = delete_run(studio, "live")
        assert not refused.ok and "stop it first" in refused.message and live.is_dir()
    finally:
        lock.release()
    result = delete_run(studio, "old")
    assert result.ok, result.message
    trash = studio.settings.runs_dir / ".trash" / "old"
    assert (trash / "config.toml").is_file() and not (studio.settings.runs_dir / "old").exists()
    assert [run_dir.name for run_dir, _, _ in studio.runs()] == ["live"], "the trash is not listed as a run"
    _run(studio, "old", [STARTED])  # the same name again: the trash keeps both
    assert delete_run(studio, "old").ok and len(list((studio.settings.runs_dir / ".trash").iterdir())) == 2
    assert not delete_run(studio, "../runs").ok and not delete_run(studio, None).ok


def test_sample_now_asks_a_running_trainer_only(tmp_path):
    studio = _studio(tmp_path)
    live = _run(studio, "live", [STARTED, *_steps(3)])
    stopped = _run(studio, "stopped", [STARTED, {"type": "finished", "status": "stopped", "step": 0}])
    refused = request_sample(studio, "stopped")
    assert not refused.ok and "while it trains" in refused.message and not (stopped / SAMPLE_NOW_FILE).exists()
    assert not request_sample(studio, "live").ok, "no trainer holds the lock: interrupted, nothing to ask"
    lock = RunLock(live).acquire()
    try:
        result = request_sample(studio, "live")
    finally:
        lock.release()
    assert result.ok and (live / SAMPLE_NOW_FILE).is_file(), result.message


def test_preview_grid_rows_are_prompts_and_columns_steps(tmp_path):
    studio = _studio(tmp_path)
    samples = []
    for step in (10, 20, 37):
        for index, prompt in enumerate(["sks dog", "sks <b>cat</b>"]):
            samples.append({"type": "sample", "step": step, "path": f"samples/step_{step:06d}_{index:02d}.png",
                            "prompt": prompt, "index": index})
    run_dir = _run(studio, "grid", [STARTED, *samples])
    (run_dir / "samples").mkdir()
    for event in samples:
        if event["path"] != "samples/step_000020_01.png":  # one preview missing on disk: an empty cell
            (run_dir / event["path"]).write_bytes(b"png")
    grid = preview_grid(load_view(run_dir))
    assert grid.prompts == ["sks dog", "sks <b>cat</b>"] and grid.steps == [10, 20, 37]
    assert grid.cells[1][1] is None and grid.cells[0][2] == run_dir / "samples/step_000037_00.png"
    shown = preview_grid_html(grid)
    assert 'data-rows="2" data-columns="3"' in shown and shown.count("<img ") == 5
    assert "sks &lt;b&gt;cat&lt;/b&gt;" in shown and "<b>cat</b>" not in shown
    assert "/gradio_api/file=" + str(run_dir / "samples/step_000010_00.png") in shown
    assert "No previews yet" in preview_grid_html(preview_grid(load_view(tmp_path / "nothing")))


def test_a_run_that_failed_before_its_first_event_shows_start_and_base_model(tmp_path):
    studio = _studio(tmp_path)
    run_dir = _run(studio, "early-fail", [], base="/models/sd15")
    facts = run_facts(run_dir, load_view(run_dir))
    assert facts.base_model == "/models/sd15" and facts.started.startswith(time.strftime("%Y-"))
    frame = runs_table(studio.runs()).data
    row = frame[frame["run"] == "early-fail"].iloc[0]
    assert row["base model"] == "/models/sd15" and row["started"] == facts.started


def test_try_it_starts_from_the_runs_preview_prompt(tmp_path):
    """The first run's Try it prompt is the scene its previews showed, not the bare trigger word (for which
    builtin:shapes-sd draws its default scene and no cross); sd-scripts options are not part of a prompt."""
    from trainer.presets import DEMO_PRESET, preset_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(dumps_config(preset_config(DEMO_PRESET)), encoding="utf-8")
    assert try_it_prompt(run) == "a large red sks in the center on a white background"

    cfg = Config()
    cfg.dataset.trigger_word = "ohwx"
    cfg.sampling.prompts = ["photo of {trigger} dog --n blurry --s 30 --d 7", "second"]
    (run / "config.toml").write_text(dumps_config(cfg), encoding="utf-8")
    assert try_it_prompt(run) == "photo of ohwx dog"

    cfg.sampling.prompts = []
    (run / "config.toml").write_text(dumps_config(cfg), encoding="utf-8")
    assert try_it_prompt(run) == "ohwx"
    (run / "config.toml").write_text("not [ toml", encoding="utf-8")
    assert try_it_prompt(run) == "sks"
