"""Block-wise settings as sd-scripts has them: ``block_dims`` / ``block_alphas`` and the learning-rate weights.

sd-scripts (``networks/lora.py``: ``get_block_index``, ``parse_block_dims_and_alphas``,
``get_block_lr_weight``) numbers a UNet's blocks by the original LDM layout:

- SD 1.x/2.x, 25 blocks: ``IN00``–``IN11`` (``input_blocks.N``; IN00 is ``conv_in`` and never gets an
  adapter), ``MID`` (the whole ``middle_block``), ``OUT00``–``OUT11`` (``output_blocks.N``).
- SDXL, 23 blocks: ``BASE`` (time/label embeddings, no adapter), ``IN00``–``IN08``, ``MID0``–``MID2``
  (``middle_block.0/1/2``), ``OUT00``–``OUT08``, ``OUT`` (``conv_out``, no adapter).

The LDM index of a diffusers layer is what ``export.keys.sgm_unet_path`` computes, so one rule serves
SD 1.x and SDXL and any ``layers_per_block``: with L layers per block and D down blocks there are
D·(L+1) input and output blocks (12 for SD 1.5, 9 for SDXL; the tiny builtins have 6).
The learning-rate weights are sd-scripts' ``down_lr_weight`` (one per input block), ``mid_lr_weight``
and ``up_lr_weight`` (one per output block), each a comma list or a named curve (``cosine``, ``sine``,
``linear``, ``reverse_linear``, ``zeros``, optionally ``+base``); a short list is padded with 1, a
weight of 0 removes the block's adapter (sd-scripts' ``remove_block_dims_and_alphas``).

This module imports no torch: the config's validation uses the parsers.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

CURVES = ("cosine", "sine", "linear", "reverse_linear", "zeros")
_LDM_BLOCK = re.compile(r"^(input_blocks|output_blocks|middle_block)\.(\d+)\.")


@dataclass(frozen=True)
class BlockLayout:
    """The block list of one UNet: ``names[i]`` is block i as sd-scripts counts it."""

    sdxl: bool
    in_blocks: int  # D·(L+1)

    @property
    def names(self) -> list[str]:
        ins = [f"IN{i:02d}" for i in range(self.in_blocks)]
        outs = [f"OUT{i:02d}" for i in range(self.in_blocks)]
        if self.sdxl:
            return ["BASE", *ins, "MID0", "MID1", "MID2", *outs, "OUT"]
        return [*ins, "MID", *outs]

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        names = self.names
        family = "SDXL" if self.sdxl else "SD 1.x/2.x"
        return f"{len(names)} values for this {family} UNet ({names[0]}, {names[1]}, …, {names[-1]})"

    def index(self, sgm_path: str | None) -> int | None:
        """Block index of a UNet layer given its LDM path; None for layers outside every block."""
        if sgm_path is None:
            return None
        if self.sdxl and sgm_path.startswith(("time_embed.", "label_emb.")):
            return 0
        if self.sdxl and sgm_path.startswith("out."):
            return len(self) - 1
        match = _LDM_BLOCK.match(sgm_path)
        if match is None:
            return None
        kind, n = match[1], int(match[2])
        base = 1 if self.sdxl else 0
        if kind == "input_blocks":
            return base + n
        if kind == "middle_block":
            return base + self.in_blocks + (n if self.sdxl else 0)
        return base + self.in_blocks + (3 if self.sdxl else 1) + n

    def lr_weights(self, down: list[float] | None, mid: list[float] | None, up: list[float] | None) -> list[float] | None:
        """One learning-rate weight per block, or None when no weight is set (sd-scripts' ``get_block_lr_weight``)."""
        if down is None and mid is None and up is None:
            return None
        mids = 3 if self.sdxl else 1
        down = _padded(down, self.in_blocks)
        mid = _padded(mid, mids)
        up = _padded(up, self.in_blocks)
        weights = down + mid + up
        return [1.0, *weights, 1.0] if self.sdxl else weights


def _padded(values: list[float] | None, n: int) -> list[float]:
    values = list(values or [])[:n]
    return values + [1.0] * (n - len(values))


def parse_ints(text: str) -> list[int] | None:
    """``"4,4,8"`` -> [4, 4, 8]; empty -> None; ValueError with the bad item."""
    if not text.strip():
        return None
    return [int(item) for item in _items(text)]


def parse_floats(text: str) -> list[float] | None:
    if not text.strip():
        return None
    values = [float(item) for item in _items(text)]
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{bad[0]} is not a finite number")
    return values


def parse_lr_weight(text: str, blocks: int) -> list[float] | None:
    """A comma list of weights, or a named curve over ``blocks`` values (``cosine+0.1``: curve plus 0.1)."""
    text = text.strip()
    if not text:
        return None
    name, _, base_text = text.partition("+")
    if name in CURVES:
        base = float(base_text) if base_text else 0.0
        steps = [i / max(blocks - 1, 1) for i in range(blocks)]
        curve = {
            "cosine": [math.sin(math.pi * s / 2) for s in reversed(steps)],
            "sine": [math.sin(math.pi * s / 2) for s in steps],
            "linear": steps,
            "reverse_linear": list(reversed(steps)),
            "zeros": [0.0] * blocks,
        }[name]
        return [v + base for v in curve]
    values = parse_floats(text)
    if values is not None and any(v < 0 for v in values):
        raise ValueError("weights must be 0 or more")
    return values


def _items(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if any(not item for item in items):
        raise ValueError("empty item")
    return items


def block_list_problems(key: str, text: str, integer: bool) -> list[str]:
    """Syntax problems of a block list setting (lengths need the model: see ``layout_problem``)."""
    try:
        values = parse_ints(text) if integer else parse_floats(text)
    except ValueError as err:
        kind = "integers" if integer else "numbers"
        return [f"`{key}` must be a comma-separated list of {kind}, one per block, e.g. \"4,4,8\" ({err})"]
    if values is None:
        return []
    if integer and any(v < 0 for v in values):
        return [f"`{key}` values must be 0 (no adapter in that block) or positive, got {text!r}"]
    if not integer and any(v <= 0 for v in values):
        return [f"`{key}` values must be positive, got {text!r}"]
    return []


def lr_weight_problems(key: str, text: str) -> list[str]:
    try:
        parse_lr_weight(text, 12)
    except ValueError as err:
        return [
            f"`{key}` must be a comma-separated list of weights (0 or more) or one of {', '.join(CURVES)} "
            f"(optionally `+base`, e.g. \"cosine+0.1\"), got {text!r} ({err})"
        ]
    return []


def layout_problem(key: str, values: list | None, layout: BlockLayout) -> str | None:
    if values is None or len(values) == len(layout):
        return None
    return f"`{key}` must have {layout.describe()}, got {len(values)}"
