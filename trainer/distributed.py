"""Several processes, one run: what ``accelerate launch`` asked for, the effective batch, the data position.

accelerate does the distributing (DDP, gloo on CPU, NCCL on GPUs, DeepSpeed/FSDP from its own config); this
module holds the few decisions around it that accelerate leaves to the training script:

- ``wants_cpu``: ``training.device = "auto"`` must follow the launch. accelerate picks a multi-process
  backend only for CUDA (and other accelerators) unless ``cpu=True``: on a machine without one, a
  ``--multi_gpu`` launch with ``cpu=False`` gives every process ``DistributedType.NO`` — N independent
  trainings writing into one run folder. Under a launch of several processes without a GPU, "auto" means
  CPU processes over gloo.
- ``check_launch``: a launch of N processes that ended up non-distributed is refused by name, not trained N times.
- ``effective_batch``: images per optimizer step = per-device batch × processes × accumulation (sd-scripts'
  ``total_batch_size`` in ``train_network.py``).
- ``micro_batch_seed``: the noise, timesteps and dropout of a micro-batch are a function of the run's seed and
  the micro-batch's place in the epoch, not of which process draws them: N processes with batch b draw what
  one process with accumulation N draws, and a resume draws what the uninterrupted run drew.
- ``resume_position``: a checkpoint written by N processes resumed by M: where the epoch continues, and what
  that means, in words.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

# Environment variables a launcher (torchrun / accelerate launch / mpirun) sets for every process it starts.
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes(environ: dict[str, str] | None = None) -> int:
    """How many processes the launcher started (1 when run plainly); read before any Accelerator exists."""
    env = os.environ if environ is None else environ
    for name in WORLD_SIZE_VARS:
        value = env.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def wants_cpu(device_setting: str, accelerator_available: bool, environ: dict[str, str] | None = None) -> bool:
    """Whether accelerate must be told ``cpu=True``: asked for, or a multi-process launch with no GPU to use."""
    if device_setting == "cpu":
        return True
    return launched_processes(environ) > 1 and not accelerator_available


class LaunchMismatch(RuntimeError):
    """A multi-process launch that did not become a distributed run (raised as a user-facing error by the caller)."""


def check_launch(num_processes: int, distributed_type: str, environ: dict[str, str] | None = None) -> str | None:
    """A sentence when the launcher started several processes but accelerate set up each one alone."""
    launched = launched_processes(environ)
    if launched > 1 and num_processes == 1:
        return (
            f"the launcher started {launched} processes but accelerate set each one up alone ({distributed_type}); "
            f"they would train the same run {launched} times. Launch with `accelerate launch --multi_gpu "
            "--num_processes N` on a machine with N GPUs, or set `training.device = \"cpu\"` for CPU processes"
        )
    return None


SHARDING_VARS = {"ACCELERATE_USE_DEEPSPEED": "DeepSpeed", "ACCELERATE_USE_FSDP": "FSDP"}


def sharding_problem(environ: dict[str, str] | None = None) -> str | None:
    """A sentence when ``accelerate launch`` was given a DeepSpeed or FSDP config (``--config_file``).

    ZeRO and FSDP shard weights, gradients and optimizer state over the GPUs. In a LoRA run the sharded part
    would be the adapter (a few MB) while the frozen base model, the memory that matters, stays whole; and
    the loop exports, checkpoints and previews from one process, which needs the whole adapter there. So
    the config is refused before accelerate sets it up, with what to use instead.
    """
    env = os.environ if environ is None else environ
    used = [name for var, name in SHARDING_VARS.items() if env.get(var, "").lower() in ("true", "1")]
    if not used:
        return None
    return (
        f"the accelerate config asks for {used[0]}: lora-studio trains LoRA adapters with data parallelism (DDP) "
        f"only. {used[0]} would shard the adapter (a few MB) while the frozen base model stays whole on every "
        "GPU, so it saves no memory here; launch with a config whose `distributed_type` is MULTI_GPU (or "
        "`accelerate launch --multi_gpu --num_processes N`), and to save memory set "
        "`training.gradient_checkpointing = true`, `training.mixed_precision = \"bf16\"` or "
        "`optimizer.name = \"adamw8bit\"`"
    )


@dataclass(frozen=True)
class EffectiveBatch:
    """Images per optimizer step and its three factors."""

    per_device: int
    processes: int
    accumulation: int

    @property
    def total(self) -> int:
        return self.per_device * self.processes * self.accumulation

    def describe(self) -> str:
        """``4 (2 per device × 2 processes × 1 accumulation step)``."""
        procs = "process" if self.processes == 1 else "processes"
        steps = "accumulation step" if self.accumulation == 1 else "accumulation steps"
        return f"{self.total} ({self.per_device} per device × {self.processes} {procs} × {self.accumulation} {steps})"


def effective_batch(batch_size: int, processes: int, accumulation: int) -> EffectiveBatch:
    return EffectiveBatch(batch_size, processes, accumulation)


def micro_batch_seed(seed: int, epoch: int, global_index: int) -> int:
    """A seed for the ``global_index``-th micro-batch of ``epoch`` (0-based over all processes).

    A fixed odd-constant mix (splitmix64's multipliers) so that neighbouring indices give unrelated streams;
    the result fits torch.manual_seed's 64-bit range.
    """
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + global_index * 0x94D049BB133111EB) & (2**64 - 1)
    x ^= x >> 31
    x = (x * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    return x ^ (x >> 27)


def global_micro_batch(local_done: int, process_index: int, processes: int) -> int:
    """The global index of a process's ``local_done``-th micro-batch (1-based count) in the epoch.

    ``train.epoch_loader`` deals the epoch's batches round-robin: process r takes r, r+N, r+2N, …
    """
    return (local_done - 1) * processes + process_index


@dataclass(frozen=True)
class ResumePosition:
    """Where this launch continues the checkpoint's epoch, and the message when the process count changed."""

    batch_in_epoch: int  # this launch's local micro-batches already done in the epoch
    message: str | None = None


def resume_position(
    batch_in_epoch: int, saved_processes: int, processes: int, batch_size: int, accumulation: int
) -> ResumePosition:
    """Map a checkpoint's data position (counted by ``saved_processes``) onto ``processes``.

    The epoch's batch order does not depend on the process count (``epoch_batches`` is a function of seed
    and epoch), so the position is a global count of micro-batches; it maps exactly when it divides by the
    new count, otherwise the next whole round starts (up to N-1 batches of that epoch are skipped).
    """
    if saved_processes == processes:
        return ResumePosition(batch_in_epoch)
    consumed = batch_in_epoch * saved_processes
    local = math.ceil(consumed / processes)
    skipped = local * processes - consumed
    before = effective_batch(batch_size, saved_processes, accumulation)
    after = effective_batch(batch_size, processes, accumulation)
    message = (
        f"this run's checkpoint was written by {saved_processes} process(es) and it resumes with {processes}: "
        f"each step now trains on {after.describe()} images instead of {before.total}, so the learning rate acts "
        "on a different batch and the step count of an epoch changes; the remaining batches of the current epoch "
        "are dealt out again in the same order"
        + (f" ({skipped} batch(es) of this epoch are skipped to start a whole round)" if skipped else "")
        + ". The run is not the one an unchanged launch would have trained; resume with "
        f"`accelerate launch --num_processes {saved_processes}` to continue it exactly"
    )
    return ResumePosition(local, message)


def agree_to_stop(accelerator: Any, requested: bool) -> bool:
    """Whether every process stops after this step: yes as soon as any one of them was asked to.

    Each process reads the STOP file and its own signals, and one of them can see a stop a step before the
    others. Leaving the loop alone, it left the rest in the next step's gradient all-reduce without it: on
    gloo they crashed ("Connection closed by peer") instead of saving the stopped run. Accelerate's trigger
    (an all-reduce of one flag) makes it one decision; a single process needs none.
    """
    if accelerator.num_processes == 1:
        return requested
    if requested:
        accelerator.set_trigger()
    return accelerator.check_trigger()
