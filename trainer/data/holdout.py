"""Which training images are held out for validation (``validation.fraction``); pure Python, so the
pre-flight check can apply the same rule without loading torch."""

from __future__ import annotations

import random
from typing import Any

from trainer.errors import UserFacingError


def held_out_split(records: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """(training records, held-out records): ``round(fraction·N)`` of the N training images (at least one),
    chosen by ``seed`` from the images sorted by path; regularization images always stay in training."""
    records = list(records)
    candidates = sorted((i for i, r in enumerate(records) if not r.is_regularization), key=lambda i: str(records[i].path))
    count = max(1, round(fraction * len(candidates)))
    if count >= len(candidates):
        raise UserFacingError(
            f"`validation.fraction = {fraction}` would hold out {count} of {len(candidates)} training image(s) and "
            "leave none to train on; lower it or use `validation.path`"
        )
    held = set(random.Random(f"lora-studio-validation:{seed}").sample(candidates, count))
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]
