"""After a run ran out of memory (its ``finished`` event says ``reason = "out_of_memory"``): the restarts the
Train tab offers, each a copy of the run's config with one memory setting changed. Pure helpers, no Gradio."""

from __future__ import annotations

import copy

from trainer.config import Config

OFFERS = {
    "checkpointing": "Restart with gradient checkpointing",
    "half_batch": "Restart with half the batch (same effective batch)",
}


def restart_offers(cfg: Config) -> list[str]:
    """Which restarts would change anything: checkpointing when it is off, half the batch above batch 1."""
    offers = []
    if not cfg.training.gradient_checkpointing:
        offers.append("checkpointing")
    if cfg.training.batch_size > 1:
        offers.append("half_batch")
    return offers


def restart_config(cfg: Config, kind: str) -> Config:
    """``cfg`` with the memory setting of ``kind`` changed; half the batch doubles the accumulation steps."""
    out = copy.deepcopy(cfg)
    if kind == "checkpointing":
        out.training.gradient_checkpointing = True
    elif kind == "half_batch":
        out.training.batch_size = max(1, cfg.training.batch_size // 2)
        out.training.gradient_accumulation_steps = cfg.training.gradient_accumulation_steps * 2
    else:
        raise ValueError(f"unknown restart {kind!r}; known: {', '.join(OFFERS)}")
    return out
