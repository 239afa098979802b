"""What watching a run in the browser costs it: the page's default run, started from the page, against
the very same config run headless with ``python -m trainer train``, in one go on this machine.

On a small CPU machine the trainer shares its cores with the UI process (polling once a second) and the
browser (drawing progress, charts and previews); this prints the page run's wall time as a ratio of the
headless one, and the CPU seconds the UI process and the browser spent meanwhile.

    python bench/page_overhead.py                  # builtin model, sample data, the page's defaults
    python bench/page_overhead.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.page_driver import (  # noqa: E402  (the repo root must be importable first)
    CHROMIUM_ARGS,
    free_port,
    open_train_tab,
    start_and_wait_for_completion,
    wait_until_up,
)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children), from /proc; 0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def run_seconds(run_dir: Path) -> float:
    """First to last event of a run (model loaded and dataset read → finished)."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    if events[-1].get("type") != "finished" or events[-1].get("status") != "completed":
        raise SystemExit(f"{run_dir} did not complete: {events[-1]}")
    return events[-1]["time"] - events[0]["time"]


def page_run(tmp: Path, steps: int | None, chromium: str) -> tuple[Path, float, float, float]:
    """Start the page's default run from headless Chromium; its run dir, wall time, UI and browser CPU-s."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    log = tmp / "ui.log"
    ui = subprocess.Popen(
        [sys.executable, "launch.py", "--port", str(port), "--runs-dir", str(tmp / "runs"), "--data-dir", str(tmp / "data")],
        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, ui, lambda: log.read_text()[-3000:])
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_train_tab(page, url)
            if steps:
                box = page.locator("#cfg-training-max_steps input").first
                box.fill(str(steps))
                box.press("Tab")
            browser_pids = [p for p in descendants(os.getpid()) if p != ui.pid and p not in descendants(ui.pid)]
            ui_before = cpu_seconds(ui.pid)
            browser_before = sum(cpu_seconds(p) for p in browser_pids)
            start_and_wait_for_completion(page)
            ui_cpu = cpu_seconds(ui.pid) - ui_before
            browser_cpu = sum(cpu_seconds(p) for p in browser_pids) - browser_before
            browser.close()
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)
    run_dir = next(p for p in (tmp / "runs").iterdir() if (p / "events.jsonl").exists())
    return run_dir, run_seconds(run_dir), ui_cpu, browser_cpu


def headless_run(tmp: Path, page_run_dir: Path) -> float:
    """The page run's own config.toml, run again by the CLI in a new run folder."""
    config = tmp / "headless.toml"
    shutil.copy(page_run_dir / "config.toml", config)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's own default: all cores
    subprocess.run(
        [sys.executable, "-m", "trainer", "train", str(config), "--no-progress", "--set", "run.name=headless"],
        cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return run_seconds(page_run_dir.parent / "headless")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="max_steps to type into the form (default: the page's)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run_dir, page_s, ui_cpu, browser_cpu = page_run(tmp, args.steps, args.chromium)
        headless_s = headless_run(tmp, run_dir)
    print(f"headless run (python -m trainer train, same config): {headless_s:6.1f} s")
    print(f"run started and watched from the page              : {page_s:6.1f} s  ({page_s / headless_s:.2f}x)")
    print(f"CPU meanwhile: UI process {ui_cpu:.1f} s, browser {browser_cpu:.1f} s")


if __name__ == "__main__":
    main()
