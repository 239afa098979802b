"""Every adapter file in the runs folder, labelled for a dropdown: each run's export, its checkpoints, its tools' outputs.

Pure Python (no Gradio, no torch). A run's checkpoints hold the adapter as it was at that step
(``checkpoints/step_000100/NAME.safetensors``) beside the resume state (``lora_state.safetensors``,
``ema_state.safetensors``), which is not an adapter and is left out; ``tools/`` holds what the Tools
panel made (resized, converted, combined adapters), so those can be tested in a grid too.
"""

from __future__ import annotations

from pathlib import Path

NOT_ADAPTERS = {"lora_state.safetensors", "ema_state.safetensors"}


def run_adapters(run_dir: Path) -> list[tuple[str, str]]:
    """(label, path) for one run: the final export first, then its tools' outputs, then checkpoints newest first."""
    name = run_dir.name
    found = []
    for path in sorted(run_dir.glob("*.safetensors")):
        kind = "diffusers" if path.stem.endswith("_diffusers") else "kohya"
        found.append((f"{name} · final ({kind})", str(path)))
    for path in sorted((run_dir / "tools").glob("*.safetensors")):
        found.append((f"{name} · {path.stem}", str(path)))
    checkpoints = sorted((p for p in (run_dir / "checkpoints").glob("step_*") if p.name[5:].isdigit()), reverse=True)
    for folder in checkpoints:
        step = folder.name.removeprefix("step_").lstrip("0") or "0"
        files = [p for p in sorted(folder.glob("*.safetensors")) if p.name not in NOT_ADAPTERS]
        kohya = [p for p in files if not p.stem.endswith("_diffusers")]
        for path in kohya or files:
            found.append((f"{name} · step {step}", str(path)))
    return found


def adapter_choices(run_dirs: list[Path]) -> list[tuple[str, str]]:
    """(label, path) for every run, in the order given (the Studio lists runs newest first)."""
    return [choice for run_dir in run_dirs for choice in run_adapters(run_dir)]
