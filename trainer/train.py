"""The training run: the run folder's lifecycle around a step loop that reads top to bottom (nanoGPT style).

``train(cfg)`` turns a validated config into a run folder: events, log, samples, checkpoints and the
exported adapter. It raises user-facing errors after recording them as a ``finished``/``failed`` event.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import tracking
from trainer.caches import encode_latents
from trainer.checkpoint import (
    latest_checkpoint,
)
from trainer.conditioning import TextEmbeddings, encode_text, unet_conditioning
from trainer.config import Config, ConfigError, validate
from trainer.disk_full import DiskFullError, disk_full_error, folder_size, looks_like_disk_full
from trainer.distributed import agree_to_stop, global_micro_batch, micro_batch_seed
from trainer.errors import UserFacingError
from trainer.events import EventWriter
from trainer.networks import is_adapter_param
from trainer.run_folder import (
    StopRequest,
    StopRequested,
    prepare_run_dir,
    run_dir_problem,
    setup_logging,
    write_run_config,
)
from trainer.run_lock import RunLock
from trainer.run_outputs import (
    export_adapters,
    make_checkpoint,
    make_previews,
    periodic_work,
    report_ranks,
)
from trainer.session import Session, setup
from trainer.speed import to_device
from trainer.step_report import (  # noqa: F401  (TrainingDiverged: callers import it from here)
    RateMeter,
    TrainingDiverged,
    check_finite,
    loss_due,
    mean_loss,
    report_step,
)

_CPU = torch.device("cpu")


class OutOfMemory(UserFacingError):
    """The device ran out of memory; the message names the settings that shrink the run (trainer.estimate)."""

    reason = "out_of_memory"  # the `finished` event carries it: the UI offers a restart with those settings


def looks_like_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's "can't allocate memory"."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass
class TrainResult:
    status: str  # completed | stopped | failed
    step: int
    run_dir: Path
    adapter_paths: list[Path] = field(default_factory=list)
    final_loss: float | None = None
    error: str | None = None


def train(cfg: Config, resume: bool = False, show_progress: bool = True) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring.

    The run folder is checked before anything is created in it, then held with an exclusive lock for the
    whole run (a second trainer in the same folder is refused with the holder's pid).
    """
    problems = validate(cfg)
    if problems:
        raise ConfigError(problems)
    if not is_main_launch_process():  # other accelerate ranks: rank 0 checks, locks, cleans and records
        return _train_in(cfg, cfg.run_dir, resume, show_progress, main=False)
    if (problem := run_dir_problem(cfg, resume)) is not None:
        raise UserFacingError(problem)
    lock = RunLock(cfg.run_dir).acquire()
    try:
        return _train_in(cfg, prepare_run_dir(cfg, resume), resume, show_progress, main=True)
    finally:
        lock.release()


def is_main_launch_process() -> bool:
    """Rank 0 of an ``accelerate launch`` (or the only process); read before any Accelerator exists."""
    return os.environ.get("RANK", "0") == "0"


def _train_in(cfg: Config, run_dir: Path, resume: bool, show_progress: bool, main: bool) -> TrainResult:
    if main and not resume:
        write_run_config(cfg)
    # A resume writes nothing (config, events) until its set-up succeeded: a failed or stopped attempt
    # leaves the run's record — and a completed run's "completed" — as it was. Only rank 0 records events.
    events = EventWriter(run_dir, hold=resume or not main)
    log = setup_logging(run_dir)
    stop = StopRequest(run_dir, immediate=True).install()
    session: Session | None = None
    try:
        session = setup(cfg, run_dir, events, log, resume, stop)
        stop.check()  # a STOP file written while the model loaded
        if resume and main:
            write_run_config(cfg)
            events.release()
        stop.immediate = False
        return run_loop(session, stop, show_progress)
    except StopRequested as request:
        step = session.progress.step if session else 0
        log.info("stopped (%s) before training began; nothing was trained in this session", request)
        if not events.holding:
            events.emit("finished", status="stopped", step=step, error=None, adapter=None)
        return TrainResult(status="stopped", step=step, run_dir=run_dir)
    except BaseException as err:
        step = session.progress.step if session else 0
        if looks_like_disk_full(err):
            err = disk_full_error(run_dir, _bytes_needed(run_dir, session), kept=_kept_checkpoint(run_dir))
        elif looks_like_out_of_memory(err):
            from trainer.estimate import out_of_memory_message

            device = str(session.device) if session else cfg.training.device
            err = OutOfMemory(out_of_memory_message(cfg, step, device))
        message = str(err) if isinstance(err, (UserFacingError, ConfigError)) else f"{type(err).__name__}: {err}"
        if not isinstance(err, (UserFacingError, ConfigError)):
            log.error("training failed:\n%s", traceback.format_exc())
        else:
            log.error("training failed: %s", message)
        if events.holding:
            log.error("the resume did not start; the run's record is unchanged")
        else:
            events.emit("finished", status="failed", step=step, error=message, adapter=None,
                        reason=getattr(err, "reason", None))
        if isinstance(err, (DiskFullError, OutOfMemory)):
            raise err from None
        raise
    finally:
        stop.uninstall()


def _bytes_needed(run_dir: Path, session: Session | None) -> int:
    """What one more checkpoint takes: the size of the last one, or the LoRA weights with AdamW's two moments."""
    if (last := latest_checkpoint(run_dir)) is not None:
        return folder_size(last)
    if session is None:
        return 0
    return sum(p.numel() * 4 * 3 for m in session.trained.values() for n, p in m.named_parameters() if is_adapter_param(n))


def _kept_checkpoint(run_dir: Path) -> str:
    last = latest_checkpoint(run_dir)
    return f"the last good checkpoint ({last.name}) is kept" if last else "no checkpoint was written yet"


# ---------------------------------------------------------------------------------------------
# The loop


def epoch_loader(s: Session, epoch: int, skip: int) -> torch.utils.data.DataLoader:
    """This process's micro-batches of ``epoch``, from micro-batch ``skip`` on (resume mid-epoch)."""
    from trainer.data import epoch_batches

    s.dataset.set_epoch(epoch)
    batches = epoch_batches(s.dataset, s.cfg.training.batch_size, s.cfg.training.seed, epoch)
    n = s.accelerator.num_processes
    # Shard whole batches across processes; every process gets the same count so DDP stays in step.
    mine = batches[s.accelerator.process_index : s.micro_batches_per_epoch * n : n][skip:]
    # A private generator: worker seeding must not draw from the global RNG we checkpoint.
    generator = torch.Generator().manual_seed(s.cfg.training.seed + epoch)
    return torch.utils.data.DataLoader(
        s.dataset, batch_sampler=mine, collate_fn=collate, num_workers=s.cfg.dataset.num_workers, generator=generator
    )


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixel_values": torch.stack([i["pixel_values"] for i in items]),
        "caption": [i["caption"] for i in items],
        "record_index": [int(i["record_index"]) for i in items],
        "loss_weight": torch.tensor([float(i.get("loss_weight", 1.0)) for i in items]),
        "original_size": torch.tensor([list(i.get("original_size", (0, 0))) for i in items]),
        "crop_top_left": torch.tensor([list(i.get("crop_top_left", (0, 0))) for i in items]),
        "target_size": torch.tensor([list(i.get("target_size", (0, 0))) for i in items]),
    }


def compute_loss(s: Session, batch: dict[str, Any]) -> torch.Tensor:
    """Noise the latents at random timesteps and score the UNet's prediction of the target."""
    model, device, pin = s.model, s.device, s.speed.pin_memory
    if s.latent_cache is not None:
        latents = to_device(s.latent_cache.batch(batch["record_index"], _CPU), device, pin)
    else:
        latents = encode_latents(model, batch["pixel_values"])
    latents = latents.to(device)  # (B, C, h, w)
    noised = s.objective.noised(latents)  # noise, timesteps and the noisy input, as configured
    if s.text_cache is not None:
        text = s.text_cache.batch(batch["caption"], _CPU)
        text = TextEmbeddings(to_device(text.hidden_states, device, pin),
                              None if text.pooled is None else to_device(text.pooled, device, pin))
    elif "text_encoder" in s.trained:
        text = encode_text(model, batch["caption"], device)
    else:
        with torch.no_grad():
            text = encode_text(model, batch["caption"], device)
    cond = unet_conditioning(model, text, batch, s.weight_dtype)
    with s.speed.attention_context():
        prediction = s.train_unet(noised.noisy.to(s.weight_dtype), noised.timesteps, **cond).sample
    loss = s.objective.loss(prediction, latents, noised, batch["loss_weight"].to(device))
    if s.allocation is not None:  # AdaLoRA's orthogonality term, which PEFT adds only to a `.loss` output
        loss = loss + s.allocation.orthogonal_regulariser()
    return loss


def run_loop(s: Session, stop: StopRequest, show_progress: bool) -> TrainResult:
    from tqdm.auto import tqdm

    cfg, acc = s.cfg, s.accelerator
    accum = cfg.training.gradient_accumulation_steps
    for module in s.trained.values():
        module.train()
    bar = tqdm(total=s.total_steps, initial=s.progress.step, unit="step", disable=not (show_progress and acc.is_main_process), dynamic_ncols=True)
    if cfg.sampling.at_start and s.progress.step == 0:
        make_previews(s)  # the base model's drawing, for the previews to change from
    meter = RateMeter(s.progress.step)
    loss_sum, micro_in_step, last_loss = None, 0, None
    status = "completed"
    while s.progress.step < s.total_steps and status == "completed":
        for batch in epoch_loader(s, s.progress.epoch, s.progress.batch_in_epoch):
            s.progress.batch_in_epoch += 1
            end_of_epoch = s.progress.batch_in_epoch >= s.micro_batches_per_epoch
            sync = (micro_in_step + 1) == accum or end_of_epoch
            seed_micro_batch(s)
            # Gradients are summed over micro-batches; DDP all-reduces only on the last one.
            with acc.no_sync(s.train_unet) if not sync else _null():
                loss = compute_loss(s, batch)
                acc.backward(loss / accum)
            # The loss stays on the device: reading it (.item()) waits for the GPU, so it is read only when logged.
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
            micro_in_step += 1
            if not sync:
                continue
            average_text_encoder_grads(s)
            if cfg.optimizer.max_grad_norm:
                acc.clip_grad_norm_([p for g in s.optimizer.param_groups for p in g["params"]], cfg.optimizer.max_grad_norm)
            s.optimizer.step()
            s.lr_scheduler.step()
            if s.allocation is not None:  # AdaLoRA scores |w·grad|: after the step, before the grads are cleared
                s.allocation.update(s.progress.step + 1)
            s.optimizer.zero_grad(set_to_none=True)
            if s.ema is not None:
                s.ema.update()
            step_loss, loss_sum, micro_in_step = loss_sum / micro_in_step, None, 0
            s.progress.step += 1
            if end_of_epoch:
                s.progress.epoch, s.progress.batch_in_epoch = s.progress.epoch + 1, 0
            read = loss_due(s, end_of_epoch)
            if read:
                last_loss = mean_loss(s, step_loss, over_processes=True)
                check_finite(last_loss, s.progress.step, cfg)
            report_step(s, bar, meter, last_loss if read else None)
            if agree_to_stop(acc, stop.requested):  # all processes leave after the same step
                if not read:  # the step's own loss for the finished event: this process's, no collective
                    last_loss = mean_loss(s, step_loss, over_processes=False)
                    check_finite(last_loss, s.progress.step, cfg)
                s.log.info("stop requested (%s) at step %d: saving", stop.reason or "by another process", s.progress.step)
                status = "stopped"
                break
            if s.progress.step >= s.total_steps:
                break
            periodic_work(s)
            if end_of_epoch:
                break  # start the next epoch's loader
        else:
            if s.progress.batch_in_epoch >= s.micro_batches_per_epoch:
                s.progress.epoch, s.progress.batch_in_epoch = s.progress.epoch + 1, 0
    bar.close()
    return finish(s, status, last_loss)


def seed_micro_batch(s: Session) -> None:
    """Seed the step's random draws (noise, timesteps, LoRA dropout) from the micro-batch's place in the epoch.

    The place is counted over all processes, so N processes draw what one process with N accumulation steps
    draws for the same batches, and a resumed run draws what the uninterrupted one drew (trainer.distributed).
    """
    acc = s.accelerator
    index = global_micro_batch(s.progress.batch_in_epoch, acc.process_index, acc.num_processes)
    torch.manual_seed(micro_batch_seed(s.cfg.training.seed, s.progress.epoch, index))


def average_text_encoder_grads(s: Session) -> None:
    """Average the text-encoder LoRA gradients over the processes of a distributed run.

    Only the UNet's forward runs through its DDP wrapper, and DDP averages the gradients of a module only
    when its forward ran through the wrapper: without this, each process would train its own text-encoder
    adapter (they drift apart) and rank 0's would be exported. One flat all-reduce per optimizer step.
    """
    if s.accelerator.num_processes == 1:
        return
    grads = [p.grad for p in s.network.text_encoder_params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= s.accelerator.num_processes
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def finish(s: Session, status: str, last_loss: float | None) -> TrainResult:
    """Save state and the adapter (also when stopped), announce the exports, close the run."""
    step = s.progress.step
    if s.cfg.sampling.at_end and status == "completed":
        make_previews(s)
    if step > 0:
        make_checkpoint(s)
    report_ranks(s)
    adapters: list[Path] = []
    failures: list[str] = []
    if s.accelerator.is_main_process:
        for result in export_adapters(s, s.run_dir, verify=s.cfg.export.verify):
            adapters.append(Path(result.path))
            s.events.emit(
                "export", step=step, path=str(Path(result.path).relative_to(s.run_dir)), format=result.format,
                verified=result.verified, max_abs_diff=result.max_abs_diff, keys=result.keys, message=result.message,
            )
            if result.verified is False:
                failures.append(f"{Path(result.path).name} ({result.format}): {result.message}")
        # A file that fails its own check would load wrong (or not at all) in the clients: the run failed,
        # even though training finished; the files stay for inspection.
        error = "export check failed: " + "; ".join(failures) if failures else None
        if error:
            status = "failed"
            s.log.error("%s", error)
        s.events.emit(
            "finished", status=status, step=step, error=error,
            adapter=str(adapters[0].relative_to(s.run_dir)) if adapters else None, final_loss=last_loss,
        )
    else:
        error = None
    tracking.end(s.accelerator)
    s.log.info("%s at step %d; adapter: %s", status, step, ", ".join(map(str, adapters)) or "none")
    return TrainResult(
        status=status, step=step, run_dir=s.run_dir, adapter_paths=adapters, final_loss=last_loss, error=error
    )
