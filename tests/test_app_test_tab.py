"""The Test tab's plumbing without a browser or torch: which adapters it lists, the trainer commands its
forms become, and tool jobs followed through their events (``tests/fake_tool.py`` stands in for the trainer)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from app.adapter_choices import adapter_choices, run_adapters
from app.tool_jobs import ToolJobs
from app.tool_requests import RequestError, Weighted, free_path, grid_args, picked_adapters, tool_args
from app.tool_view import tool_message_html, tool_progress_html

FAKE_TOOL = Path(__file__).resolve().with_name("fake_tool.py")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    """A run folder as the trainer leaves it: exports, two checkpoints with their resume state, a tool output."""
    run_dir = tmp_path / "runs" / "cat"
    (run_dir / "config.toml").parent.mkdir(parents=True)
    (run_dir / "config.toml").write_text('[model]\nbase = "builtin:tiny-sd"\n')
    for name in ("cat.safetensors", "cat_diffusers.safetensors", "tools/cat-rank2.safetensors"):
        _touch(run_dir / name)
    for step in ("step_000010", "step_000020"):
        for name in ("cat.safetensors", "lora_state.safetensors", "ema_state.safetensors"):
            _touch(run_dir / "checkpoints" / step / name)
    _touch(run_dir / "checkpoints" / "step_000030.tmp-1" / "cat.safetensors")  # a checkpoint being written
    return run_dir


def test_lists_exports_tool_outputs_and_checkpoints_not_resume_state(run):
    assert run_adapters(run) == [
        ("cat · final (kohya)", str(run / "cat.safetensors")),
        ("cat · final (diffusers)", str(run / "cat_diffusers.safetensors")),
        ("cat · cat-rank2", str(run / "tools" / "cat-rank2.safetensors")),
        ("cat · step 20", str(run / "checkpoints" / "step_000020" / "cat.safetensors")),
        ("cat · step 10", str(run / "checkpoints" / "step_000010" / "cat.safetensors")),
    ]
    assert adapter_choices([run, run.parent / "empty"]) == run_adapters(run)


def test_grid_form_becomes_a_sample_grid_command(run, tmp_path):
    adapters = picked_adapters([(str(run / "cat.safetensors"), 0.8), (None, 1.0), (str(run / "tools" / "cat-rank2.safetensors"), 1)])
    assert adapters == [Weighted(run / "cat.safetensors", 0.8), Weighted(run / "tools" / "cat-rank2.safetensors", 1.0)]
    args = grid_args(adapters, "sks\n\n  sks, red  \n", "0, 0.5 1", 7, 4, "side by side", "", tmp_path / "out")
    assert args == [
        "sample", "--lora", f"{run / 'cat.safetensors'}:0.8", "--lora", f"{run / 'tools' / 'cat-rank2.safetensors'}:1",
        "--prompt", "sks", "--prompt", "sks, red", "--grid", "--strengths", "0,0.5,1", "--seed", "7", "--steps", "4",
        "--grid-by", "adapter", "--out", str(tmp_path / "out"), "--json", "--no-progress",
    ]  # fmt: skip
    with pytest.raises(RequestError) as err:
        grid_args([], " \n", "0, half", None, 0, "all together", "", tmp_path)
    for field in ("Adapters:", "Prompts:", "Strengths: 'half'", "Seed:", "Steps:"):
        assert field in str(err.value), f"{field} missing from {err.value}"
    with pytest.raises(RequestError, match=r"Adapter 2: .*nope.safetensors does not exist"):
        picked_adapters([(str(run / "cat.safetensors"), 1.0), (str(run / "nope.safetensors"), 1.0)])


def test_tool_forms_write_beside_the_run_and_never_over_a_file(run):
    kohya, step = run / "cat.safetensors", run / "checkpoints" / "step_000010" / "cat.safetensors"
    adapters = [Weighted(step, 0.7), Weighted(kohya, 1.0)]
    merge = tool_args("merge", adapters, "", "single file (.safetensors)", None, "kohya")
    assert merge == ["merge", "builtin:tiny-sd", f"{step}:0.7", f"{kohya}:1", "--out", str(run / "merged" / "cat-merged.safetensors"),
                     "--format", "single-file"], "the base comes from the run's config; output in merged/"  # fmt: skip
    assert tool_args("merge", adapters, "/models/sd15", "diffusers folder", None, "")[1] == "/models/sd15"
    assert tool_args("merge", adapters, "", "diffusers folder", None, "")[-3:] == [str(run / "merged" / "cat-merged"), "--format", "diffusers"]
    assert tool_args("resize", adapters, "", "", 2, "") == ["resize", str(step), "--rank", "2", "--out", str(run / "tools" / "cat-rank2-2.safetensors")]
    assert tool_args("convert", adapters, "", "", None, "peft")[-2:] == ["--out", str(run / "tools" / "cat-peft.safetensors")]
    assert tool_args("combine", adapters, "", "", None, "")[:3] == ["combine", f"{step}:0.7", f"{kohya}:1"]
    assert tool_args("combine", adapters, "", "", 4, "")[-2:] == ["--rank", "4"]
    assert tool_args("info", adapters, "", "", None, "") == ["info", str(step), "--json"]
    with pytest.raises(RequestError, match="Rank: give the rank"):
        tool_args("resize", adapters, "", "", None, "")
    with pytest.raises(RequestError, match="pick the adapter"):
        tool_args("info", [], "", "", None, "")
    _touch(run / "tools" / "cat-rank2-2.safetensors")
    assert free_path(run / "tools" / "cat-rank2.safetensors").name == "cat-rank2-3.safetensors"


def _finish(jobs: ToolJobs, job_id: str):
    deadline = time.monotonic() + 30
    while (status := jobs.status(job_id)).state == "running":
        assert time.monotonic() < deadline, f"tool job {job_id} did not end: {status}"
        time.sleep(0.05)
    return status


def test_tool_jobs_follow_progress_and_outcome(tmp_path):
    jobs = ToolJobs(tmp_path / "runs", command=[sys.executable, str(FAKE_TOOL)])
    out = tmp_path / "merged.safetensors"
    job = jobs.start(["merge", "builtin:tiny-sd", "a.safetensors:0.5", "--out", str(out)])
    assert jobs.job(job.id).tool == "merge"
    status = _finish(jobs, job.id)
    assert (status.state, status.output, status.done, status.total) == ("completed", out, 3, 3)
    assert out.read_bytes() == b"fake output of merge"
    assert 'data-state="completed"' in tool_progress_html(status, "tool-progress", "merge")
    assert str(out) in tool_message_html(status, "tool-message")

    info = _finish(jobs, jobs.start(["info", "a.safetensors", "--json"]).id)
    assert info.state == "completed" and '"format": "kohya"' in info.stdout

    failed = _finish(jobs, jobs.start(["resize", "fail.safetensors", "--rank", "2", "--out", str(tmp_path / "r")]).id)
    assert failed.state == "failed" and failed.message == "fake refusal of fail.safetensors"
    assert 'class="ls-start-error"' in tool_message_html(failed, "tool-message"), "a failure is shown in red"

    crashed = _finish(jobs, jobs.start(["convert", "crash.safetensors", "--out", str(tmp_path / "c")]).id)
    assert crashed.state == "failed"
    assert "ended without reporting (exit code 3): RuntimeError: fake crash in the tool" in crashed.message


def test_test_tab_is_on_the_page(tmp_path):
    from app.datasets import DatasetStore
    from app.jobs import JobManager
    from app.ui import Settings, Studio, build_ui

    settings = Settings(runs_dir=tmp_path / "runs", data_dir=tmp_path / "data")
    page = build_ui(Studio(settings, JobManager(settings.runs_dir), DatasetStore(settings.data_dir)))
    ids = {getattr(block, "elem_id", None) for block in page.blocks.values()}
    assert {"test-adapter-1", "test-prompts", "test-strengths", "test-render", "test-grid", "test-download",
            "tool-pick", "tool-run", "tool-download", "tool-info"} <= ids  # fmt: skip
