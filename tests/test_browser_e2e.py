"""End to end in a real browser: upload sample_data, train on the builtin model, watch, download.

Playwright (from PyPI) drives Debian's Chromium through its executable path (Playwright's own browser
download cannot work here). ``.ci/install_browser.sh`` installs Chromium in CI; on a developer machine
without it the test is skipped with the command to run. Screenshots of each step go to
``test-artifacts/e2e/`` so a failure can be looked at.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "e2e"
CHROMIUM = os.environ.get("LORA_STUDIO_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Flags that work on this network-less machine (without the networking ones Chromium retries its
# background connections many times over and looks up Google's hosts at every start).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TRAIN_TIMEOUT_MS = 300_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"launch.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the UI did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def ui_server(tmp_path):
    """``python launch.py`` exactly as the README says, on a free port and temporary folders."""
    port = _free_port()
    log = tmp_path / "launch.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "launch.py", "--port", str(port), "--runs-dir", str(tmp_path / "runs"),
             "--data-dir", str(tmp_path / "data"), "--grace-seconds", "20"],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_http(url, process, log)
        yield url, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        # A trainer the UI started outlives the UI by design; end any left from this test.
        for job_file in (tmp_path / "runs" / ".jobs").glob("*/job.json"):
            _kill_group_from(job_file)


def _kill_group_from(job_file: Path) -> None:
    import json
    import signal

    try:
        record = json.loads(job_file.read_text())
        if record.get("state") in ("running", "stopping") and record.get("pid"):
            os.killpg(int(record["pid"]), signal.SIGKILL)
    except (OSError, ValueError, TypeError):
        pass


@pytest.fixture
def browser_page():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Chromium not found at {CHROMIUM}: .ci/run should have installed it (.ci/install_browser.sh)")
        pytest.skip(f"no Chromium at {CHROMIUM}; install it with: bash .ci/install_browser.sh")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            context.close()
            browser.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")  # Gradio commits a number on blur


def test_upload_train_watch_download(ui_server, browser_page):
    url, tmp = ui_server
    page = browser_page
    page.goto(url)
    page.get_by_role("tab", name="1 · Dataset").click()
    page.locator("#caption-table").wait_for()
    _shot(page, "01-opened")
    # A newcomer reads, before anything else, what the built-in model is and what to expect from it.
    note = page.locator("#builtin-model-note").inner_text()
    assert "builtin:shapes-sd" in note and "never seen a cross" in note

    # Upload sample_data's images and captions into a new dataset.
    page.locator("#new-dataset-name textarea, #new-dataset-name input").first.fill("e2e set")
    files = sorted(str(p) for p in (REPO / "sample_data").iterdir() if p.suffix in (".png", ".txt"))
    not_an_image = tmp / "upload" / "notes.png"  # a text file renamed .png: listed as rejected, not a traceback
    not_an_image.parent.mkdir()
    not_an_image.write_text("this is not a picture")
    page.locator("#dataset-upload input[type=file]").set_input_files([*files, str(not_an_image)])
    page.locator("#upload-result").get_by_text("Added 8 images").wait_for()
    assert "notes.png" in page.locator("#upload-result").inner_text()
    _shot(page, "02-uploaded")
    stored = tmp / "data" / "e2e_set"
    assert len(list(stored.glob("*.png"))) == 8 and len(list(stored.glob("*.txt"))) == 7

    # A short run on the builtin model, previews every 10 steps.
    page.get_by_role("tab", name="2 · Train").click()
    path_box = page.locator("#cfg-dataset-path textarea, #cfg-dataset-path input").first
    assert path_box.input_value() == str(stored)
    page.locator("#cfg-run-name textarea, #cfg-run-name input").first.fill("e2e-run")
    _set_number(page, "cfg-training-max_steps", 30)
    _set_number(page, "cfg-sampling-every_n_steps", 10)
    _set_number(page, "cfg-sampling-steps", 4)
    # A non-default adapter type, end to end: LoHa trains, exports with LyCORIS keys, passes the self-check
    # and is applied by "Try it" (which merges it: diffusers cannot load LoHa).
    page.locator("#cfg-network-type input").first.click()
    page.get_by_role("option", name="loha", exact=True).click()
    assert page.locator("#cfg-network-type input").first.input_value() == "loha"
    page.locator("#start-btn").click()
    page.locator("#start-message").get_by_text("e2e-run").wait_for()
    _shot(page, "03-started")

    # The progress bar moves, then a preview and the loss chart appear, then the run completes.
    page.wait_for_function(
        "() => { const p = document.querySelector('#run-progress'); return p && Number(p.dataset.step) > 0; }",
        timeout=TRAIN_TIMEOUT_MS, polling=250,
    )
    _shot(page, "04-training")
    # Reloading the page re-attaches to the running job: the monitor shows it again, still moving.
    step_before = int(page.locator("#run-progress").get_attribute("data-step"))
    page.reload()
    page.get_by_role("tab", name="2 · Train").click()
    page.wait_for_function(
        "(before) => { const p = document.querySelector('#run-progress');"
        " return p && (Number(p.dataset.step) > before || p.dataset.status === 'completed'); }",
        arg=step_before, timeout=TRAIN_TIMEOUT_MS, polling=250,
    )
    _shot(page, "04b-reloaded")
    # ...and the form still holds the settings it was started with, not the first-start defaults.
    assert page.locator("#cfg-run-name textarea, #cfg-run-name input").first.input_value() == "e2e-run"
    assert page.locator("#cfg-training-max_steps input").first.input_value() == "30"
    page.locator("#preview-gallery img").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
    page.locator("#loss-plot canvas, #loss-plot svg").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
    page.wait_for_function(
        "() => document.querySelector('#run-progress')?.dataset.status === 'completed'", timeout=TRAIN_TIMEOUT_MS, polling=250,
    )
    _shot(page, "05-completed")

    # Download the kohya adapter from the Runs tab and check it is a real kohya-format safetensors file.
    page.get_by_role("tab", name="3 · Runs").click()
    page.wait_for_function("() => document.querySelector('#runs-table')?.innerText.includes('e2e-run')")
    download_button = page.locator("#download-kohya")
    download_button.wait_for(state="visible")
    _shot(page, "06-runs")
    # The run's detail: its previews as a grid, one row per prompt, one column per step (0: the base, 10, 20, 30).
    grid = page.locator("#run-previews")
    grid.wait_for()
    assert (grid.get_attribute("data-rows"), grid.get_attribute("data-columns")) == ("1", "4")
    assert grid.locator("img").count() == 4
    with page.expect_download() as info:
        download_button.click()
    saved = tmp / "downloaded.safetensors"
    info.value.save_as(saved)

    from safetensors import safe_open

    with safe_open(str(saved), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata()
    assert any(k.startswith("lora_unet_") and k.endswith(".hada_w1_a") for k in keys)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert metadata["ss_network_module"] == "lycoris.kohya" and '"algo": "loha"' in metadata["ss_network_args"]

    # "Try it": base and adapted images side by side, rendered by a trainer process. It starts from the run's
    # preview prompt (what the previews showed), not the bare trigger word.
    page.wait_for_function(
        "() => document.querySelector('#try-prompt textarea').value === 'a large red sks in the center on a white background'"
    )
    page.locator("#try-prompt textarea, #try-prompt input").first.fill("sks, a red circle")
    page.locator("#try-generate").click()
    page.wait_for_function("() => document.querySelectorAll('#try-gallery img').length >= 2", timeout=TRAIN_TIMEOUT_MS)
    _shot(page, "07-try-it")


def test_bad_model_path_is_refused_beside_start(ui_server, browser_page):
    """The pre-flight check on Start: a model path that does not exist is refused in red beside the button
    within 2 s, and no job or run folder is created (it used to fail in the trainer ~40 s later)."""
    url, tmp = ui_server
    page = browser_page
    page.goto(url)
    page.get_by_role("tab", name="2 · Train").click()
    missing = tmp / "no-such-model"
    base = page.locator("#cfg-model-base input").first
    base.fill(str(missing))
    base.press("Enter")  # a custom value of the model dropdown is committed on Enter
    # What was made for the built-in shapes model goes with it, and the page says so.
    message = page.locator("#config-message")
    message.get_by_text("dataset.reg_path").wait_for()
    assert "sampling.guidance_scale" in message.inner_text()
    page.get_by_text("More dataset settings").click()
    assert page.locator("#cfg-dataset-reg_path textarea, #cfg-dataset-reg_path input").first.input_value() == ""
    page.locator("#cfg-run-name textarea, #cfg-run-name input").first.fill("refused-run")
    clicked = time.monotonic()
    page.locator("#start-btn").click()
    error = page.locator("#start-message .ls-start-error")
    error.wait_for(timeout=10_000)
    elapsed = time.monotonic() - clicked
    _shot(page, "10-refused-before-start")
    text = error.inner_text()
    assert "model.base" in text and str(missing) in text, text
    colors = error.evaluate("e => [e, ...e.querySelectorAll('*')].map(c => getComputedStyle(c).color)")
    assert set(colors) == {"rgb(180, 35, 24)"}, f"the refusal must be red (#b42318), every line of it: {colors}"
    assert elapsed < 2.0, f"Start took {elapsed:.2f} s to refuse a missing model"
    runs = tmp / "runs"
    assert [p.name for p in runs.iterdir() if not p.name.startswith(".")] == [], "a refused Start left a run folder"
    assert not list((runs / ".jobs").glob("*/job.json")), "a refused Start queued a job"


# ---------------------------------------------------------------------------------------------
# Trust: the page says what the processes did, keeps what the user typed, and loads nothing remote.


def _external_requests(page, url: str) -> list[str]:
    """Every request the page makes to anywhere but the UI itself, collected from now on."""
    origin = url.rstrip("/")
    seen: list[str] = []
    page.on("request", lambda request: None if request.url.startswith((origin, "data:", "blob:")) else seen.append(request.url))
    return seen


def _text_box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _start(page, name: str, max_steps: int, expect: str) -> None:
    _text_box(page, "cfg-run-name").fill(name)
    _set_number(page, "cfg-training-max_steps", max_steps)
    page.locator("#start-btn").click()
    page.locator("#start-message").get_by_text(f"{expect} {name}").wait_for()


def _job_record(tmp: Path, name: str) -> tuple[Path, dict]:
    import json

    for job_file in (tmp / "runs" / ".jobs").glob("*/job.json"):
        record = json.loads(job_file.read_text())
        if record["name"] == name:
            return job_file.parent, record
    raise AssertionError(f"no job record named {name}")


def test_typing_while_the_page_opens_is_kept(ui_server, browser_page):
    url, tmp = ui_server
    page = browser_page
    external = _external_requests(page, url)
    page.goto(url)
    page.get_by_role("tab", name="2 · Train").click()
    _set_number(page, "cfg-sampling-every_n_steps", 0)
    _start(page, "first", 3, "Started")  # the newest job: a reopened page brings its settings back

    # Reopen the page and type at once. The page's own on-open answers are held back until the typing is
    # done, as on a slow machine, so the test is deterministic rather than a race won 2 times in 4.
    held: list = []
    releasing = False

    def hold(route) -> None:
        if releasing:
            route.continue_()
        else:
            held.append(route)

    page.route("**/queue/join*", hold)
    page.reload()
    page.get_by_role("tab", name="2 · Train").click()
    _text_box(page, "cfg-run-name").fill("typed-while-opening")
    deadline = time.monotonic() + 30
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the page sent no on-open request"
    releasing = True
    for route in held:
        route.continue_()
    # The untouched field takes the newest job's value (so the answer has arrived); the typed one stays.
    page.wait_for_function(
        "() => document.querySelector('#cfg-training-max_steps input')?.value === '3'", timeout=30_000, polling=100
    )
    page.wait_for_timeout(1000)  # a late overwrite would land within this
    _shot(page, "10-typed-while-opening")
    assert _text_box(page, "cfg-run-name").input_value() == "typed-while-opening"
    page.locator("#start-btn").click()
    page.locator("#start-message").get_by_text("typed-while-opening").wait_for()
    _, record = _job_record(tmp, "typed-while-opening")
    assert record["state"] in ("queued", "running")
    assert external == [], f"the page loaded assets from outside the UI: {external}"


def test_killed_run_is_failed_in_runs_while_the_queued_job_runs(ui_server, browser_page):
    import json
    import signal

    url, tmp = ui_server
    page = browser_page
    external = _external_requests(page, url)
    page.goto(url)
    page.get_by_role("tab", name="2 · Train").click()
    _set_number(page, "cfg-sampling-every_n_steps", 0)
    _start(page, "doomed", 200, "Started")
    _start(page, "next-job", 20, "Queued")
    page.wait_for_function(
        "() => { const p = document.querySelector('#run-progress'); return p && Number(p.dataset.step) > 0; }",
        timeout=TRAIN_TIMEOUT_MS, polling=250,
    )
    job_dir, _ = _job_record(tmp, "doomed")
    os.kill(json.loads((job_dir / "runner.json").read_text())["trainer_pid"], signal.SIGKILL)

    # The monitor moves on to the queued job and keeps the killed one's outcome beside it, in red.
    page.wait_for_function(
        "() => document.querySelector('#run-progress')?.innerText.includes('next-job')", timeout=60_000, polling=250
    )
    outcome = page.locator("#last-outcome")
    outcome.wait_for(timeout=30_000)
    assert outcome.get_attribute("data-run") == "doomed" and outcome.get_attribute("data-state") == "failed"
    assert "failed — killed by SIGKILL (exit -9" in outcome.inner_text()
    assert "ls-outcome failed" in outcome.get_attribute("class")
    _shot(page, "11-killed-monitor")

    # Runs: the dead run is failed with its exit code (not "running" forever), in red.
    page.get_by_role("tab", name="3 · Runs").click()
    page.locator("#runs-refresh").click()
    cell = page.locator("#runs-table").get_by_text("failed — killed by SIGKILL (exit -9").locator("visible=true").first
    cell.wait_for(timeout=30_000)
    assert cell.evaluate("c => getComputedStyle(c).color") == "rgb(180, 35, 24)"  # #b42318: red
    # Clicking a row picks that run and shows its detail.
    deadline = time.monotonic() + 60
    while not (tmp / "runs" / "next-job" / "config.toml").exists() and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    page.locator("#runs-refresh").click()
    page.locator("#runs-table").get_by_text("next-job", exact=True).locator("visible=true").first.click()
    page.locator("#run-summary").get_by_text("next-job").wait_for()
    assert page.locator("#run-pick input").first.input_value() == "next-job"
    page.locator("#runs-table").get_by_text("doomed", exact=True).locator("visible=true").first.click()
    page.locator("#run-summary").get_by_text("doomed").wait_for()
    assert page.locator("#run-pick input").first.input_value() == "doomed"
    page.locator("#run-resume").wait_for()  # a failed run can be resumed
    _shot(page, "12-killed-runs")
    _, record = _job_record(tmp, "next-job")
    assert record["state"] == "running", "the queued job should be running while the dead one is shown failed"
    assert external == [], f"the page loaded assets from outside the UI: {external}"


# ---------------------------------------------------------------------------------------------
# The page itself: messages where you look, text you can read, runs you can act on.

# Every text on the page against the background it is drawn on (alpha-composited up the tree), by
# WCAG 2.1's contrast formula; large text (24 px, or 18.66 px bold) needs 3:1, the rest 4.5:1 (AA).
CONTRAST_JS = """(root) => {
  const parse = (c) => { const m = c.match(/rgba?\\(([^)]+)\\)/); if (!m) return null;
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; };
  const over = (top, under) => { const a = top[3]; return [0, 1, 2].map(i => top[i] * a + under[i] * (1 - a)).concat([1]); };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]); };
  const background = (el) => { const layers = []; for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor); if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; } }
    return layers.reverse().reduce((acc, c) => over(c, acc), [255, 255, 255, 1]); };
  const failures = []; const seen = new Set();
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement; const text = node.textContent.trim();
    if (!el || !text || seen.has(el)) continue; seen.add(el);
    if (el.closest('[disabled], [aria-hidden="true"], svg, canvas, .hidden, [hidden]')) continue;
    const style = getComputedStyle(el); const rect = el.getBoundingClientRect();
    if (style.visibility !== 'visible' || rect.width === 0 || rect.height === 0) continue;
    let opacity = 1; for (let e = el; e; e = e.parentElement) opacity *= Number(getComputedStyle(e).opacity);
    if (opacity < 0.1) continue;
    const fg = parse(style.color); if (!fg) continue;
    const bg = background(el); const fgOn = over([fg[0], fg[1], fg[2], fg[3] * opacity], bg);
    const [hi, lo] = [lum(fgOn), lum(bg)].sort((a, b) => b - a); const ratio = (hi + 0.05) / (lo + 0.05);
    const size = parseFloat(style.fontSize); const bold = Number(style.fontWeight) >= 700;
    const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    if (ratio < need) failures.push(`${ratio.toFixed(2)} < ${need}: "${text.slice(0, 60)}" ${style.color} on rgb(${bg.slice(0, 3).map(Math.round)})`);
  }
  return failures;
}"""


def _contrast_failures(page) -> list[str]:
    # A focused dropdown opens its options, fading in: measured mid-fade they read as faint text.
    page.evaluate("() => document.activeElement?.blur()")
    page.wait_for_timeout(600)
    return page.locator("body").evaluate(CONTRAST_JS)


def _near(page, message: str, button: str, within: float = 200) -> float:
    """Vertical distance (px) between a message and the button that caused it."""
    m, b = page.locator(message).bounding_box(), page.locator(button).bounding_box()
    gap = max(0.0, m["y"] - (b["y"] + b["height"]), b["y"] - (m["y"] + m["height"]))
    assert gap < within, f"{message} is {gap:.0f} px away from {button}"
    return gap


def test_runs_you_can_act_on_and_text_you_can_read(ui_server, browser_page):
    """Sample now, Stop, Resume and Delete from the Runs tab on one run; messages beside their buttons;
    the health report as a table with its one-click suggestions; contrast AA on every tab; a phone-wide
    Train tab keeps Start in reach. Screenshots of each tab go to test-artifacts/e2e/2*."""
    url, tmp = ui_server
    page = browser_page
    page.goto(url)
    page.locator("#caption-table img").locator("visible=true").first.wait_for()

    # Dataset: a bulk edit that cannot work says why beside its button, in red.
    page.get_by_text("Bulk caption edits").click()
    page.locator("#bulk-apply").click()  # "add prefix" with no text
    error = page.locator("#bulk-message .ls-start-error")
    error.wait_for()
    assert "Text (prefix, suffix or trigger word)" in error.inner_text(), error.inner_text()
    _near(page, "#bulk-message", "#bulk-apply")
    # The health report is a table (file names, not cut absolute paths) with a one-click apply.
    page.locator("#check-dataset").click()
    table = page.locator("#dataset-report table")
    table.wait_for(timeout=60_000)
    assert table.locator('tr[data-finding="Missing captions (trained as trigger + class word)"]').inner_text().endswith(
        "cross_07.png"
    )
    apply = page.locator("#apply-suggestions")
    label = apply.inner_text()
    apply.click()
    page.locator("#suggestion-message").get_by_text("dataset.repeats").wait_for()
    repeats = label.split("repeats = ")[1].split(" ")[0]
    failures = _contrast_failures(page)
    _shot(page, "20-dataset-tab")
    assert failures == [], "text below WCAG AA contrast on the Dataset tab:\n" + "\n".join(failures)

    # Train: a run without scheduled previews.
    page.get_by_role("tab", name="2 · Train").click()
    assert page.locator("#cfg-dataset-repeats input").first.input_value() == repeats
    _set_number(page, "cfg-dataset-repeats", 1)
    _set_number(page, "cfg-sampling-every_n_steps", 0)
    _set_number(page, "cfg-sampling-steps", 4)
    failures = _contrast_failures(page)
    _shot(page, "21-train-tab")
    assert failures == [], "text below WCAG AA contrast on the Train tab:\n" + "\n".join(failures)
    _start(page, "story", 200, "Started")
    page.wait_for_function(
        "() => Number(document.querySelector('#run-progress')?.dataset.step) > 0", timeout=TRAIN_TIMEOUT_MS, polling=250,
    )

    # Runs: click its row; "Sample now" makes a preview at the next step, and the grid shows it.
    page.get_by_role("tab", name="3 · Runs").click()
    page.locator("#runs-table").get_by_text("story", exact=True).locator("visible=true").first.click()
    page.locator("#run-sample-now").click()
    page.locator("#run-action-message").get_by_text("Asked story for previews").wait_for()
    _near(page, "#run-action-message", "#run-sample-now")
    page.locator("#run-previews img").first.wait_for(timeout=TRAIN_TIMEOUT_MS)

    # Stop it from the Train tab: the message there becomes the outcome, not a stale "Stopping…".
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#stop-btn").click()
    page.locator("#start-message").get_by_text("stopped at step").wait_for(timeout=60_000)
    assert "Stopping" not in page.locator("#start-message").inner_text()

    # Resume it from the Runs tab; it runs to its end.
    page.get_by_role("tab", name="3 · Runs").click()
    page.locator("#runs-refresh").click()
    page.locator("#run-summary[data-state=stopped]").wait_for()
    page.locator("#run-resume").click()
    page.locator("#run-action-message").get_by_text("Resumed story from its checkpoint at step").wait_for()
    page.locator("#run-summary[data-state=completed]").wait_for(timeout=TRAIN_TIMEOUT_MS)
    grid = page.locator("#run-previews")
    assert int(grid.get_attribute("data-columns")) == 3, "the base's (step 0), the asked-for preview and the final one"
    page.locator("#run-config").get_by_text('name = "story"').first.wait_for()
    page.locator("#run-health table").wait_for()
    failures = _contrast_failures(page)
    _shot(page, "22-runs-tab")
    assert failures == [], "text below WCAG AA contrast on the Runs tab:\n" + "\n".join(failures)

    # Delete: the run goes to the trash and leaves the list.
    page.locator("#run-delete").click()
    page.locator("#run-action-message").get_by_text("Moved story to the trash").wait_for()
    assert (tmp / "runs" / ".trash" / "story" / "config.toml").is_file()
    assert not (tmp / "runs" / "story").exists()
    page.wait_for_function("() => !document.querySelector('#runs-table')?.innerText.includes('story')")

    # A phone-wide screen: Start and the progress come before the form, not below all of it.
    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_role("tab", name="2 · Train").click()
    start, form = page.locator("#start-btn").bounding_box(), page.locator("#section-run").bounding_box()
    _shot(page, "23-train-390px")
    assert start["y"] < form["y"], f"Start at y={start['y']:.0f} is below the form (y={form['y']:.0f})"
