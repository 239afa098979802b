"""The Test tab's requests as trainer command lines, checked first: every bad field named in one message.

Pure Python (no Gradio, no torch): what the form holds goes in, a ``python -m trainer`` argument list
comes out (``ToolJobs`` adds ``--events``), or ``RequestError`` saying which field to fix. Outputs go
beside the adapter in its run folder (``tools/`` for adapters, ``merged/`` for models), never over an
existing file: a taken name gets ``-2``, ``-3``...
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TOOLS = ("merge", "resize", "convert", "combine", "info")
MERGE_FORMATS = {"diffusers folder": "diffusers", "single file (.safetensors)": "single-file"}
CONVERT_TARGETS = ("kohya", "diffusers", "peft")
GRID_BY = {"all together": "combined", "side by side": "adapter"}


class RequestError(ValueError):
    """A form field the user must fix; the message names it."""


@dataclass(frozen=True)
class Weighted:
    path: Path
    weight: float

    @property
    def arg(self) -> str:
        return f"{self.path}:{self.weight:g}"


def picked_adapters(slots: list[tuple[str | None, float | None]]) -> list[Weighted]:
    """The adapter slots that name a file, with their weights; every unusable slot named in one error."""
    picked, problems = [], []
    for number, (path, weight) in enumerate(slots, 1):
        if not path or not str(path).strip():
            continue
        file = Path(str(path).strip()).expanduser()
        if not file.exists():
            problems.append(f"Adapter {number}: {file} does not exist")
        if weight is None:
            problems.append(f"Adapter {number}: the weight must be a number")
        if not problems:
            picked.append(Weighted(file, float(weight)))
    if problems:
        raise RequestError("; ".join(problems))
    return picked


def parse_strengths(text: str) -> list[float]:
    values = []
    for part in (text or "").replace(",", " ").split():
        try:
            values.append(float(part))
        except ValueError:
            raise RequestError(f"Strengths: {part!r} is not a number; write them like 0, 0.5, 0.75, 1") from None
    if not values:
        raise RequestError("Strengths: give at least one, like 0, 0.5, 0.75, 1")
    return values


def grid_args(
    adapters: list[Weighted], prompts_text: str, strengths_text: str, seed: float | None, steps: float | None,
    grid_by: str, base: str, out: Path,
) -> list[str]:  # fmt: skip
    """``sample --grid`` for the picked adapters, one prompt per line."""
    prompts = [line.strip() for line in (prompts_text or "").splitlines() if line.strip()]
    problems = []
    if not adapters:
        problems.append("Adapters: pick at least one adapter")
    if not prompts:
        problems.append("Prompts: write at least one prompt (one per line)")
    try:
        strengths = parse_strengths(strengths_text)
    except RequestError as err:
        problems.append(str(err))
    if seed is None:
        problems.append("Seed: must be a whole number")
    if steps is None or int(steps) < 1:
        problems.append("Steps: must be 1 or more")
    if problems:
        raise RequestError("; ".join(problems))
    args = ["sample"]
    for adapter in adapters:
        args += ["--lora", adapter.arg]
    for prompt in prompts:
        args += ["--prompt", prompt]
    args += ["--grid", "--strengths", ",".join(f"{s:g}" for s in strengths), "--seed", str(int(seed)),
             "--steps", str(int(steps)), "--grid-by", GRID_BY.get(grid_by, grid_by), "--out", str(out), "--json",
             "--no-progress"]  # fmt: skip
    return args + (["--base", base.strip()] if base and base.strip() else [])


def tool_args(tool: str, adapters: list[Weighted], base: str, merge_format: str, rank: float | None, target: str) -> list[str]:
    """The Tools panel's command: the first adapter for resize/convert/info, all of them for merge/combine."""
    if tool not in TOOLS:
        raise RequestError(f"Tool: pick one of {', '.join(TOOLS)}")
    if not adapters:
        raise RequestError("Adapters: pick the adapter to work on in Adapter 1")
    first = adapters[0]
    if tool == "info":
        return ["info", str(first.path), "--json"]
    if tool == "merge":
        base = (base or "").strip() or run_base(first.path)
        if not base:
            raise RequestError("Base model: name the model to merge into (e.g. builtin:tiny-sd or a folder)")
        fmt = MERGE_FORMATS.get(merge_format, merge_format)
        out = free_path(_run_folder(first.path) / "merged" / (first.path.stem + ("-merged.safetensors" if fmt == "single-file" else "-merged")))
        return ["merge", base, *[a.arg for a in adapters], "--out", str(out), "--format", fmt]
    if tool == "convert":
        if target not in CONVERT_TARGETS:
            raise RequestError(f"Convert to: pick one of {', '.join(CONVERT_TARGETS)}")
        out = free_path(_tools_folder(first.path) / f"{first.path.stem}-{target}.safetensors")
        return ["convert", str(first.path), "--to", target, "--out", str(out)]
    rank = int(rank) if rank else 0  # 0 or empty: none given (combine is then exact)
    if rank < 0:
        raise RequestError("Rank: must be 1 or more (0: none, for combine)")
    if tool == "resize":
        if not rank:
            raise RequestError("Rank: give the rank to resize to")
        out = free_path(_tools_folder(first.path) / f"{first.path.stem}-rank{int(rank)}.safetensors")
        return ["resize", str(first.path), "--rank", str(int(rank)), "--out", str(out)]
    out = free_path(_tools_folder(first.path) / f"{first.path.stem}-combined.safetensors")
    return ["combine", *[a.arg for a in adapters], "--out", str(out), *(["--rank", str(rank)] if rank else [])]


def _run_folder(adapter: Path) -> Path:
    """The run folder an adapter belongs to (its own folder, or the one above ``checkpoints/step_*``/``tools``)."""
    folder = adapter.resolve().parent
    if folder.parent.name == "checkpoints":
        return folder.parent.parent
    return folder.parent if folder.name == "tools" else folder


def run_base(adapter: Path) -> str:
    """The base model of the run an adapter comes from (its ``config.toml``), or "" when unknown."""
    import tomllib

    try:
        config = tomllib.loads((_run_folder(adapter) / "config.toml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return ""
    base = config.get("model", {}).get("base", "") if isinstance(config.get("model"), dict) else ""
    return base if isinstance(base, str) else ""


def _tools_folder(adapter: Path) -> Path:
    return _run_folder(adapter) / "tools"


def free_path(path: Path) -> Path:
    """``path``, or ``name-2.ext``, ``name-3.ext``... whichever does not exist yet: nothing is overwritten."""
    if not path.exists():
        return path
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[: len(path.name) - len(suffix)]
    number = 2
    while (path.parent / f"{stem}-{number}{suffix}").exists():
        number += 1
    return path.parent / f"{stem}-{number}{suffix}"
