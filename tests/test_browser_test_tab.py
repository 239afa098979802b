"""The Test tab in a real browser: a 2×2 grid of a run's adapter on the builtin model, then the adapter merged
into the builtin base through the Tools panel. Both run as trainer processes started by the UI.

Uses the server and browser fixtures of ``test_browser_e2e`` (same Chromium, same skip without it).
Screenshots go to ``test-artifacts/e2e/3*``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_browser_e2e import _contrast_failures, _set_number, _shot, browser_page, ui_server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]
JOB_TIMEOUT_MS = 300_000


def _make_run(runs: Path, name: str) -> Path:
    """A run folder as training leaves it: config.toml and a kohya LoRA export whose B ≠ 0 (it changes images)."""
    import torch
    from safetensors.torch import save_file

    from trainer.config import Config, ModelConfig
    from trainer.export import kohya_state_dict
    from trainer.models.loading import load_base_model
    from trainer.network import inject_lora

    model = load_base_model(ModelConfig(base="builtin:tiny-sd"))
    inject_lora(model, Config().network, train_text_encoder=True)
    torch.manual_seed(3)
    with torch.no_grad():
        for module in model.component_modules().values():
            for param_name, param in module.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(std=0.5)
    run_dir = runs / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(f'[run]\nname = "{name}"\n\n[model]\nbase = "builtin:tiny-sd"\n')
    save_file(kohya_state_dict(model, dtype=torch.float32), run_dir / f"{name}.safetensors")
    return run_dir


def test_grid_and_merge_in_the_test_tab(ui_server, browser_page):  # noqa: F811
    url, tmp = ui_server
    page = browser_page
    run_dir = _make_run(tmp / "runs", "cat-lora")
    page.goto(url)
    page.get_by_role("tab", name="4 · Test").click()
    # Opening the tab lists the run's adapter and picks it.
    adapter = page.locator("#test-adapter-1 input").first
    page.wait_for_function(
        "() => document.querySelector('#test-adapter-1 input')?.value.includes('cat-lora')", timeout=30_000
    )
    assert "final (kohya)" in adapter.input_value()

    # A refused request says why beside its button, in red, and starts nothing.
    page.locator("#test-strengths textarea, #test-strengths input").first.fill("0, half")
    page.locator("#test-render").click()
    refusal = page.locator("#test-message.ls-start-error")
    refusal.wait_for()
    assert "Strengths: 'half' is not a number" in refusal.inner_text()

    # 2 prompts × (base, strength 1): a 2×2 grid rendered by a trainer process, with a progress bar.
    page.locator("#test-prompts textarea").first.fill("sks\nsks, a red circle")
    page.locator("#test-strengths textarea, #test-strengths input").first.fill("0, 1")
    _set_number(page, "test-steps", 4)
    page.locator("#test-render").click()
    page.locator("#test-progress").wait_for()
    page.locator("#test-progress[data-state=completed]").wait_for(timeout=JOB_TIMEOUT_MS)
    page.locator("#test-grid img").wait_for(timeout=30_000)
    _shot(page, "30-test-grid")
    with page.expect_download() as info:
        page.locator("#test-download").click()
    saved = tmp / "grid.png"
    info.value.save_as(saved)
    from PIL import Image

    grid = Image.open(saved)
    assert grid.text["lora-studio.prompts"] == "sks | sks, a red circle"
    assert grid.text["lora-studio.columns"] == "base (no adapter) | strength 1"
    failures = _contrast_failures(page)
    assert failures == [], "text below WCAG AA contrast on the Test tab:\n" + "\n".join(failures)

    # Tools: merge the adapter into the builtin base as one single-file checkpoint.
    page.locator("#tool-format").get_by_text("single file (.safetensors)").click()
    page.locator("#tool-run").click()
    page.locator("#tool-progress").wait_for()
    page.wait_for_function(
        "() => ['completed', 'failed'].includes(document.querySelector('#tool-progress')?.dataset.state)",
        timeout=JOB_TIMEOUT_MS, polling=500,
    )
    _shot(page, "31-test-merge")
    message = page.locator("#tool-message").inner_text()
    assert page.locator("#tool-progress").get_attribute("data-state") == "completed", f"merge failed: {message}"
    merged = run_dir / "merged" / "cat-lora-merged.safetensors"
    assert str(merged) in message and merged.is_file()
    page.locator("#tool-download").wait_for(state="visible")
    from safetensors import safe_open

    with safe_open(str(merged), framework="pt") as handle:
        keys = list(handle.keys())
    assert any(k.startswith("model.diffusion_model.") for k in keys), "an original-layout checkpoint, as A1111 opens"

    # Info on the same adapter shows the tool's JSON answer.
    page.locator("#tool-pick").get_by_text("info", exact=True).click()
    page.locator("#tool-run").click()
    page.locator("#tool-progress[data-state=completed]").wait_for(timeout=JOB_TIMEOUT_MS)
    info_text = page.locator("#tool-info").inner_text()
    assert '"format": "kohya"' in info_text, info_text[:500]
    assert not page.locator("#tool-download").is_visible(), "info writes no file: nothing to download"
    _shot(page, "32-test-info")
