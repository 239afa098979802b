"""Start → first step: how long the page says "loading the model and dataset…" after *Start training*,
and where that time goes. Builtin model, sample data, the page's defaults, headless Chromium.

    python bench/start_to_first_step.py                      # the page as it ships (a warm trainer waits)
    python bench/start_to_first_step.py --no-warm-trainer    # each Start starts and imports a new trainer
    python bench/start_to_first_step.py --no-bytecode        # PYTHONDONTWRITEBYTECODE=1, as in some sandboxes
    python bench/start_to_first_step.py --runs 3

Phases, from the click: the job's process starts (``job.json`` ``started``) → the trainer has imported
torch/diffusers, built or loaded the model and read the dataset (the ``started`` event) → the first
optimizer step is logged (the first ``step`` event) → the page shows step > 0. The builtin model's cache
is warmed once before timing (a first-ever start also builds it, once per machine). The page is given
``WARM_WAIT_S`` after it opens, as a user spends on the Dataset tab, before Start is pressed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.page_driver import CHROMIUM_ARGS, free_port, open_train_tab, wait_until_up  # noqa: E402

WARM_WAIT_S = 15.0


def one_run(tmp: Path, chromium: str, env: dict[str, str], warm: bool) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    port = free_port()
    log = tmp / "ui.log"
    ui = subprocess.Popen(
        [sys.executable, "launch.py", "--port", str(port), "--runs-dir", str(tmp / "runs"), "--data-dir", str(tmp / "data"),
         *([] if warm else ["--no-warm-trainer"])],
        cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, ui, lambda: log.read_text()[-3000:])
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            open_train_tab(page, url)
            page.locator("#start-btn").wait_for()
            time.sleep(WARM_WAIT_S)
            clicked = time.time()
            page.locator("#start-btn").click()
            page.wait_for_function(
                "() => Number(document.querySelector('#run-progress')?.dataset.step) > 0", timeout=600_000, polling=100,
            )
            shown = time.time()
            page.locator("#stop-btn").click()
            browser.close()
    finally:
        time.sleep(1)
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)
    job = json.loads(next((tmp / "runs" / ".jobs").glob("*/job.json")).read_text())
    events = [json.loads(line) for line in (Path(job["run_dir"]) / "events.jsonl").read_text().splitlines()]
    started = next(e["time"] for e in events if e["type"] == "started")
    first_step = next(e["time"] for e in events if e["type"] == "step")
    return {
        "click → job start": job["started"] - clicked,
        "job start → started event (imports, model, dataset)": started - job["started"],
        "started event → first step": first_step - started,
        "first step → page shows it": shown - first_step,
        "click → page shows step 1": shown - clicked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-bytecode", action="store_true", help="PYTHONDONTWRITEBYTECODE=1 for the UI and trainer")
    parser.add_argument("--no-warm-trainer", action="store_true", help="start the page with --no-warm-trainer")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()
    env = dict(os.environ)
    if args.no_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    # The builtin model's cache, built once per machine, is not what this measures.
    subprocess.run([sys.executable, "-c", "from trainer.models.builtin import builtin_model_path; builtin_model_path('builtin:tiny-sd')"],
                   cwd=REPO, env=env, check=False, capture_output=True)
    for n in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp_name:
            phases = one_run(Path(tmp_name), args.chromium, env, warm=not args.no_warm_trainer)
        notes = [*(["PYTHONDONTWRITEBYTECODE=1"] if args.no_bytecode else []), *(["--no-warm-trainer"] if args.no_warm_trainer else [])]
        print(f"run {n + 1}" + (f" ({', '.join(notes)})" if notes else ""))
        for phase, seconds in phases.items():
            print(f"  {phase:<52} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
