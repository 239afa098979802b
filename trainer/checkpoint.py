"""Resumable checkpoints: LoRA weights, optimizer, LR schedule, RNG states and the data position.

Layout: ``checkpoints/step_000100/`` holding ``lora_state.safetensors`` (exact fp32 adapter weights by
module name), ``training_state.pt`` (optimizer, scheduler, RNG, counters; loaded with
``weights_only=True``, never a full unpickle), a usable kohya adapter and, when on, ``ema_state.safetensors``
(the EMA average) and ``validation.json`` (the checkpoint's validation loss). Each directory is built
under a temporary name and renamed into place, so a kill never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trainer.atomic import atomic_dir
from trainer.errors import UserFacingError
from trainer.networks import is_adapter_param

CHECKPOINTS_DIR = "checkpoints"
LORA_FILE = "lora_state.safetensors"
STATE_FILE = "training_state.pt"
EMA_FILE = "ema_state.safetensors"
VALIDATION_FILE = "validation.json"


@dataclass
class CheckpointExtras:
    """What a checkpoint holds besides the training state: the EMA average and the validation result."""

    ema: dict[str, torch.Tensor] | None = None
    ema_updates: int = 0
    validation: dict[str, Any] | None = None


@dataclass
class TrainProgress:
    """Where training is: optimizer steps done, current epoch, micro-batches consumed in that epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # counted by each process (see ``num_processes``)
    num_processes: int = 1  # processes that trained it; a resume with another count maps the position (trainer.distributed)


def lora_state(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{comp}.{name}": p.detach().to("cpu", torch.float32).contiguous()
        for comp, module in modules.items()
        for name, p in module.named_parameters()
        if is_adapter_param(name)
    }


def load_lora_state(modules: dict[str, torch.nn.Module], state: dict[str, torch.Tensor], source: Path) -> None:
    for comp, module in modules.items():
        params = {n: p for n, p in module.named_parameters() if is_adapter_param(n)}
        for name, param in params.items():
            key = f"{comp}.{name}"
            if key not in state:
                raise UserFacingError(
                    f"checkpoint {source} has no weights for {key}: it was made with other `[network]` settings; "
                    "resume with the config the run started with"
                )
            if state[key].shape != param.shape:
                raise UserFacingError(
                    f"checkpoint {source}: {key} has shape {tuple(state[key].shape)}, the model expects "
                    f"{tuple(param.shape)}; `network.rank` or targets changed since the checkpoint"
                )
            with torch.no_grad():
                param.copy_(state[key].to(param.device, param.dtype))


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path,
    progress: TrainProgress,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: Any,
    keep_last: int,
    write_adapter=None,
    extras: CheckpointExtras | None = None,
) -> Path:
    """Write ``checkpoints/step_NNNNNN`` atomically and delete all but the newest ``keep_last`` (and the one
    with the lowest validation loss, which the user may want to export)."""
    extras = extras or CheckpointExtras()
    root = run_dir / CHECKPOINTS_DIR
    path = root / f"step_{progress.step:06d}"
    with atomic_dir(path) as tmp:
        save_file(lora_state(modules), tmp / LORA_FILE)
        torch.save(
            {
                "progress": asdict(progress),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_scheduler.state_dict(),
                "rng": rng_state(),
                "ema_updates": extras.ema_updates,
            },
            tmp / STATE_FILE,
        )
        if extras.ema is not None:
            save_file(extras.ema, tmp / EMA_FILE)
        if extras.validation is not None:
            (tmp / VALIDATION_FILE).write_text(json.dumps(extras.validation), encoding="utf-8")
        if write_adapter is not None:
            write_adapter(tmp)
    best = best_checkpoint(run_dir)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        if old != best:
            shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoint_validation(path: Path) -> dict[str, Any] | None:
    """The validation result saved with a checkpoint, or None (validation off, or an unreadable file)."""
    try:
        data = json.loads((path / VALIDATION_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("loss"), (int, float)) else None


def best_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the lowest validation loss (the earliest on a tie), or None without validation."""
    scored = [(v["loss"], p.name, p) for p in list_checkpoints(run_dir) if (v := checkpoint_validation(p)) is not None]
    return min(scored)[2] if scored else None


def load_checkpoint_extras(path: Path) -> CheckpointExtras:
    """The EMA average (None when the run had no EMA) and validation result saved beside the training state."""
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        ema = load_file(path / EMA_FILE) if (path / EMA_FILE).is_file() else None
    except Exception as err:  # torch and safetensors raise many types for damaged files
        raise UserFacingError(f"checkpoint {path} cannot be read ({err}); delete it to resume from an older one") from None
    return CheckpointExtras(ema=ema, ema_updates=int(state.get("ema_updates", 0)), validation=checkpoint_validation(path))


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file() and (p / LORA_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(
    path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, lr_scheduler: Any
) -> TrainProgress:
    """Restore everything saved by ``save_checkpoint``; RNG last, so nothing after it draws first."""
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        lora = load_file(path / LORA_FILE)
    except Exception as err:  # torch and safetensors raise many types for damaged files
        raise UserFacingError(f"checkpoint {path} cannot be read ({err}); delete it to resume from an older one") from None
    load_lora_state(modules, lora, path)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    set_rng_state(state["rng"])
    return TrainProgress(**state["progress"])
