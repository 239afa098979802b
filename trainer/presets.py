"""Presets: settings a style or a character LoRA starts from, applied over the config defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import Config, ConfigError, config_from_dict, config_to_dict
from trainer.models.builtin import RECOMMENDED_GUIDANCE

DEMO_PRESET = "shapes-demo"  # what a new user starts from, in the UI and with `init-config`
DEMO_BASE = "builtin:shapes-sd"
# The first run's regularization images (circles, squares and triangles captioned with their names), in the
# folder of this name beside sample_data/; made by sample_data/make_sample_data.py.
DEMO_REGULARIZATION = "sample_regularization"
PRESETS: dict[str, dict[str, Any]] = {
    # The first run (the UI's first start and `init-config`): builtin:shapes-sd learns sample_data/'s cross in
    # about a minute on a CPU. 8 images and 400 steps need a higher rate, the text encoder and kohya's modules.
    # Without regularization images the adapter drew the new shape for every shape word; with each cross's
    # scene as a circle, square and triangle at the full loss weight, "sks" draws a cross and "circle" a
    # circle (at half the weight, "circle" still drew a cross at 4 of 12 seeds). The cosine decay settles the
    # last steps: at a constant rate the result depended on the seed (one in three drew orange, not red).
    # Caption dropout keeps the unconditional prediction, which guidance amplifies, from drifting; previews
    # use the model's own guidance, 3 (SD's 7.5 over-drives it).
    "shapes-demo": {
        "model": {"base": DEMO_BASE},
        "dataset": {"reg_path": DEMO_REGULARIZATION, "prior_loss_weight": 1.0, "caption_dropout": 0.1},
        "network": {"unet_targets": "kohya", "train_text_encoder": True},
        "optimizer": {"learning_rate": 1e-3, "text_encoder_lr": 1e-3, "scheduler": "cosine", "warmup_steps": 20},
        "training": {"max_steps": 400, "batch_size": 2},
        "sampling": {
            "prompts": ["a large red {trigger} in the center on a white background"],
            "every_n_steps": 100,
            "guidance_scale": RECOMMENDED_GUIDANCE[DEMO_BASE],
        },
    },
    "style": {
        "network": {"rank": 16, "alpha": 8.0, "unet_targets": "kohya"},
        "optimizer": {"learning_rate": 1e-4, "scheduler": "cosine", "warmup_steps": 50},
        "dataset": {"flip": True, "shuffle_captions": True, "keep_tokens": 1, "caption_dropout": 0.05},
        "training": {"max_steps": 1500},
    },
    "character": {
        "network": {"rank": 32, "alpha": 16.0, "unet_targets": "attention", "train_text_encoder": True},
        "optimizer": {"learning_rate": 1e-4, "text_encoder_lr": 5e-5, "scheduler": "constant_with_warmup", "warmup_steps": 100},
        "dataset": {"flip": False, "repeats": 10},
        "training": {"max_steps": 2000},
    },
    # LoCon for styles: sd-scripts' conv_dim/conv_alpha recipe (conv rank half the linear one).
    "style-locon": {
        "network": {"type": "locon", "rank": 16, "alpha": 8.0, "conv_rank": 8, "conv_alpha": 4.0, "unet_targets": "kohya"},
        "optimizer": {"learning_rate": 1e-4, "scheduler": "cosine", "warmup_steps": 50},
        "dataset": {"flip": True, "shuffle_captions": True, "keep_tokens": 1, "caption_dropout": 0.05},
        "training": {"max_steps": 1500},
    },
    # LoHa for styles: LyCORIS's guidance (rank r acts like r^2, so a low rank; conv layers included).
    "style-loha": {
        "network": {"type": "loha", "rank": 8, "alpha": 4.0, "conv_rank": 4, "conv_alpha": 2.0, "unet_targets": "kohya"},
        "optimizer": {"learning_rate": 2e-4, "scheduler": "cosine", "warmup_steps": 50},
        "dataset": {"flip": True, "shuffle_captions": True, "keep_tokens": 1, "caption_dropout": 0.05},
        "training": {"max_steps": 1500},
    },
    # Full-matrix LoKr for characters: LyCORIS's recipe (a rank above every factor keeps both Kronecker
    # factors whole, trained at scale 1; factor 8 keeps the file small).
    "character-lokr": {
        "network": {"type": "lokr", "rank": 10000, "alpha": 1.0, "lokr_factor": 8, "unet_targets": "kohya"},
        "optimizer": {"learning_rate": 2e-4, "scheduler": "constant_with_warmup", "warmup_steps": 100},
        "dataset": {"flip": False, "repeats": 10},
        "training": {"max_steps": 2000},
    },
}


def uses_demo_regularization(cfg: Config) -> bool:
    """Whether ``dataset.reg_path`` is the first run's folder (made for ``DEMO_BASE`` only), by folder name:
    the UI names it by absolute path, ``init-config`` relative to the repository."""
    return Path(cfg.dataset.reg_path.strip()).name == DEMO_REGULARIZATION


def preset_config(name: str) -> Config:
    """A Config with a preset applied over the defaults."""
    if name not in PRESETS:
        raise ConfigError([f"unknown preset {name!r}; presets: {', '.join(PRESETS)}"])
    data = config_to_dict(Config())
    for section, values in PRESETS[name].items():
        data[section].update(values)
    return config_from_dict(data)
