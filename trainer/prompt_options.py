"""Per-prompt preview options in sd-scripts' prompt-file syntax, so existing prompt files work unchanged.

``a photo of sks dog --n blurry, lowres --w 512 --h 768 --d 42 --s 28 --l 6.5`` (sd-scripts
``library/train_util.py``, ``line_to_prompt_dict``): ``--n`` negative prompt, ``--w``/``--h`` size in pixels,
``--d`` seed, ``--s`` steps, ``--l`` guidance (CFG) scale. An option that is not given falls back to the
``[sampling]`` setting. Unlike sd-scripts, an unknown or malformed option is an error, not silently dropped.
Pure Python: the config check uses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_OPTIONS = {
    "n": ("negative", str, r".*"),
    "w": ("width", int, r"\d+"),
    "h": ("height", int, r"\d+"),
    "d": ("seed", int, r"\d+"),
    "s": ("steps", int, r"\d+"),
    "l": ("guidance", float, r"\d+(\.\d*)?|\.\d+"),
}


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    negative: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None


def parse_prompt(line: str) -> PromptSpec:
    """Split a prompt line into its text and options; raises ValueError naming the bad option."""
    text, *options = line.split(" --")
    values: dict[str, object] = {}
    for option in options:
        key, _, value = option.partition(" ")
        if key.lower() not in _OPTIONS:
            raise ValueError(f"unknown option `--{key}`; known: --n (negative prompt), --w, --h, --d (seed), --s (steps), --l (guidance)")
        name, kind, pattern = _OPTIONS[key.lower()]
        value = value.strip()
        if not re.fullmatch(pattern, value):
            raise ValueError(f"`--{key}` needs {'a number' if kind is float else 'a whole number'}, got {value!r}")
        values[name] = kind(value)
    for name in ("width", "height"):
        size = values.get(name)
        if size is not None and (size <= 0 or size % 8):  # type: ignore[operator]
            raise ValueError(f"`--{name[0]}` must be a positive multiple of 8, got {size}")
    if values.get("steps") == 0:
        raise ValueError("`--s` (steps) must be at least 1")
    return PromptSpec(prompt=text.strip(), **values)  # type: ignore[arg-type]


def prompt_problems(prompts: list[str]) -> list[str]:
    """Config-check messages for bad option syntax, naming the prompt by its position."""
    problems = []
    for i, line in enumerate(prompts, start=1):
        try:
            parse_prompt(line)
        except ValueError as err:
            problems.append(f"`sampling.prompts` entry {i} ({line[:40]!r}): {err}")
    return problems
