"""Experiment tracking through accelerate's trackers: TensorBoard and, when installed, Weights & Biases.

Off by default (``[tracking]``). TensorBoard event files go to ``RUN/logs/NAME/`` (open them with
``tensorboard --logdir RUN/logs``); the scalars are ``train/loss``, ``train/lr`` and ``validation/loss``
(plus ``validation/loss_t{T}`` per grid timestep), previews are images named ``preview/{index}``, and the
config is stored as hyperparameters (``section.field`` keys).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from trainer.config import Config, config_to_dict
from trainer.errors import UserFacingError

LOGS_DIR = "logs"


def tracker_names(cfg: Config) -> list[str]:
    names = []
    if cfg.tracking.tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            raise UserFacingError(
                "`tracking.tensorboard = true` needs the tensorboard package: pip install tensorboard "
                "(or pip install 'lora-studio[tracking]')"
            )
        names.append("tensorboard")
    if cfg.tracking.wandb:
        if importlib.util.find_spec("wandb") is None:
            raise UserFacingError("`tracking.wandb = true` needs the wandb package: pip install wandb, then wandb login")
        names.append("wandb")
    return names


def accelerator_kwargs(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """``log_with`` and ``project_dir`` for ``Accelerator(...)``; empty when tracking is off."""
    names = tracker_names(cfg)
    return {"log_with": names, "project_dir": str(run_dir / LOGS_DIR)} if names else {}


def hyperparameters(cfg: Config) -> dict[str, Any]:
    """The config flattened to ``section.field`` scalars (TensorBoard's hparams take no lists)."""
    flat: dict[str, Any] = {}
    for section, values in config_to_dict(cfg).items():
        if not isinstance(values, dict):
            flat[section] = values
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = ", ".join(value) if isinstance(value, list) else value
    return flat


def start(accelerator: Any, cfg: Config) -> None:
    if accelerator.trackers or not accelerator.log_with:
        return
    init_kwargs = {"wandb": {"name": cfg.run.name}} if cfg.tracking.wandb else {}
    project = cfg.tracking.project if cfg.tracking.wandb else cfg.run.name
    accelerator.init_trackers(project, config=hyperparameters(cfg), init_kwargs=init_kwargs)


def log_scalars(accelerator: Any, values: dict[str, float], step: int) -> None:
    if accelerator.trackers:
        accelerator.log(values, step=step)


def log_images(accelerator: Any, paths: list[tuple[str, Path]], step: int) -> None:
    """Preview PNGs by tag; TensorBoard gets (H, W, 3) arrays, W&B its own image objects."""
    if not accelerator.trackers:
        return
    import numpy as np
    from PIL import Image

    images = {tag: np.asarray(Image.open(path).convert("RGB")) for tag, path in paths}
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for tag, array in images.items():
                tracker.writer.add_image(tag, array, global_step=step, dataformats="HWC")
            tracker.writer.flush()
        else:
            tracker.log_images({tag: [array] for tag, array in images.items()}, step=step)


def end(accelerator: Any) -> None:
    if accelerator.trackers:
        accelerator.end_training()
