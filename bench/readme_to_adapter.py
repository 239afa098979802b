"""Time a new user's path: README one-liner on a fresh clone → UI → Start training → downloaded adapter.

Clones this repository into a temporary folder, runs the README's install-and-start line in it (a new
venv, ``pip install torch==2.13.0``, ``pip install -e .``, ``python launch.py``), then drives the page in
headless Chromium the way a newcomer would: open it, press *Start training* with the defaults (builtin
model, sample data), wait for the run to complete, download the kohya adapter from *Runs*. Prints the
time of each phase. pip's download cache makes a second run faster; pass ``--no-cache`` for a cold one.

The result must be visible, not only on disk: the run's first preview (the base model, before step 1) and
its last (the adapter) are saved to ``--artifacts`` side by side, with what the shapes analyser reads in
each (the default run teaches the built-in model a cross).

    python bench/readme_to_adapter.py [--artifacts bench/results/readme_to_adapter]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
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


def readme_start_line() -> str:
    """The README's first fenced command (install and start the UI), verbatim."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return block.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-cache", action="store_true", help="disable pip's cache (a cold install)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--artifacts", type=Path, default=REPO / "bench" / "results" / "readme_to_adapter",
                        help="where the before/after previews go")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    line = readme_start_line().replace("python launch.py", f"python launch.py --port {port}")
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "lora-studio"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
        env["LORA_STUDIO_CACHE"] = str(Path(tmp) / "cache")  # the builtin model is built afresh, as for a new user
        if args.no_cache:
            env["PIP_NO_CACHE_DIR"] = "1"
        log = open(Path(tmp) / "ui.log", "w")  # noqa: SIM115 (open for the server's lifetime)
        t0 = time.monotonic()
        server = subprocess.Popen(["bash", "-c", line], cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_until_up(url, server, lambda: (Path(tmp) / "ui.log").read_text()[-3000:])
            t_ui = time.monotonic()
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
                open_train_tab(page, url)
                start_and_wait_for_completion(page)
                t_trained = time.monotonic()
                page.get_by_role("tab", name="3 · Runs").click()
                page.locator("#download-kohya").wait_for(state="visible")
                with page.expect_download() as info:
                    page.locator("#download-kohya").click()
                info.value.save_as(Path(tmp) / "adapter.safetensors")
                t_done = time.monotonic()
                browser.close()
            readings = save_before_after(clone / "runs", args.artifacts)
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
    print(f"install + start (README line until the page answers): {t_ui - t0:6.1f} s")
    print(f"press Start → run completed (the page's defaults)       : {t_trained - t_ui:6.1f} s")
    print(f"download the adapter                                   : {t_done - t_trained:6.1f} s")
    print(f"README line → adapter on disk                          : {t_done - t0:6.1f} s")
    print(f"before / after (saved in {args.artifacts}): {readings}")


def save_before_after(runs: Path, artifacts: Path) -> str:
    """Copy the run's first and last preview to ``artifacts`` with a side-by-side; say what each shows."""
    from PIL import Image

    from trainer.shapes.analyser import read_scene

    samples = sorted(runs.glob("*/samples/step_*_00.png"))  # the one run (runs/ also holds .jobs/)
    before, after = Image.open(samples[0]).convert("RGB"), Image.open(samples[-1]).convert("RGB")
    artifacts.mkdir(parents=True, exist_ok=True)
    before.save(artifacts / "before.png")
    after.save(artifacts / "after.png")
    pair = Image.new("RGB", (before.width * 2, before.height), "white")
    pair.paste(before, (0, 0))
    pair.paste(after, (before.width, 0))
    pair.save(artifacts / "before_after.png")
    return f"{samples[0].name}: {read_scene(before).shape}, {samples[-1].name}: {read_scene(after).shape}"


if __name__ == "__main__":
    sys.exit(main())
