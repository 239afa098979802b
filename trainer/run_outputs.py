"""What a run writes while it trains, beside the step loop: previews, checkpoints and the adapter files.

``trainer.train`` runs the loop and decides when; this module is what each of those moments writes (on the
main process only), so the loop reads as a loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer import tracking
from trainer.checkpoint import CheckpointExtras, save_checkpoint
from trainer.ema import inference_weights, lora_parameters
from trainer.run_folder import take_sample_request
from trainer.session import Session
from trainer.validation import run_validation


def periodic_work(s: Session) -> None:
    step, cfg = s.progress.step, s.cfg
    epoch_done = s.progress.batch_in_epoch == 0  # this step finished epoch number `s.progress.epoch`
    due = every(cfg.sampling.every_n_steps, step) or (epoch_done and every(cfg.sampling.every_n_epochs, s.progress.epoch))
    # A SAMPLE_NOW file (the UI's "sample now") asks for previews at this step; rank 0 alone takes it.
    if due or (s.accelerator.is_main_process and take_sample_request(s.run_dir)):
        make_previews(s)
    if every(cfg.checkpoint.every_n_steps, step) or (epoch_done and every(cfg.checkpoint.every_n_epochs, s.progress.epoch)):
        make_checkpoint(s)  # validates first
    elif every(cfg.validation.every_n_steps, step):
        run_validation(s)


def every(n: int, count: int) -> bool:
    return bool(n) and count % n == 0


def make_previews(s: Session) -> None:
    if not s.accelerator.is_main_process:
        return
    from trainer.sampling import generate_previews

    with inference_weights(lora_parameters(s.trained), s.optimizer, s.ema):
        results = generate_previews(s.model, s.cfg, s.run_dir, s.progress.step, device=s.device, dtype=s.weight_dtype)
    for result in results:
        s.events.emit(
            "sample", step=result.step, path=str(Path(result.path).relative_to(s.run_dir)), prompt=result.prompt,
            seed=result.seed, index=result.index,
        )
    tracking.log_images(s.accelerator, [(f"preview/{r.index}", Path(r.path)) for r in results], s.progress.step)


def make_checkpoint(s: Session) -> Path | None:
    s.accelerator.wait_for_everyone()
    if not s.accelerator.is_main_process:
        return None
    validation = run_validation(s)
    ema, ema_updates = s.ema.state() if s.ema is not None else (None, 0)
    path = save_checkpoint(
        s.run_dir, s.progress, s.trained, s.optimizer, s.lr_scheduler, s.cfg.checkpoint.keep_last,
        write_adapter=lambda folder: _checkpoint_files(s, folder),
        extras=CheckpointExtras(ema, ema_updates, validation.event_fields() if validation else None),
    )
    s.events.emit(
        "checkpoint", step=s.progress.step, path=str(path.relative_to(s.run_dir)),
        validation_loss=validation.event_fields()["loss"] if validation else None,
    )
    return path


def export_adapters(s: Session, out_dir: Path, verify: bool) -> list[Any]:
    from trainer.export import export_adapter

    with inference_weights(lora_parameters(s.trained), s.optimizer, s.ema):  # EMA / schedule-free weights ship
        return export_adapter(s.model, s.cfg, out_dir, metadata=training_metadata(s), verify=verify)


def training_metadata(s: Session) -> Any:
    from trainer.export import TrainingMetadata

    return TrainingMetadata.from_session(s)


def _checkpoint_files(s: Session, folder: Path) -> None:
    """The adapter files of a checkpoint, and AdaLoRA's allocation state (training state, like the optimizer's)."""
    export_adapters(s, folder, verify=False)
    if s.allocation is not None:
        from trainer.networks.adalora_allocation import save_allocation

        save_allocation(s.allocation, folder)


def report_ranks(s: Session) -> None:
    """The final rank per block of a network with one rank per layer (AdaLoRA, importance): a ``ranks`` event."""
    from trainer.export.metadata import is_dynamic

    if not is_dynamic(s.cfg.network) or not s.accelerator.is_main_process:
        return
    from trainer.networks.rank_report import rank_report

    report = rank_report(s.model)
    method = "adalora" if s.cfg.network.type == "adalora" else s.cfg.network.rank_allocation
    s.events.emit("ranks", step=s.progress.step, method=method, **report.event_fields())
    s.log.info("rank per block: %s (total %d over %d layers)", report.blocks, report.total, report.layers)
