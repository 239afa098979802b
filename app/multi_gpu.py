"""*GPUs to use*: the Train tab's choice of GPUs, and the command that trains on them through accelerate.

One GPU (or none) runs the trainer as always; two or more start it under ``accelerate launch --multi_gpu``
with one process per GPU (``--gpu_ids`` narrows ``CUDA_VISIBLE_DEVICES`` to the chosen ones). Pure helpers:
the GPU list comes from ``trainer.gpus`` (nvidia-smi, no torch).
"""

from __future__ import annotations

import socket

from trainer.gpus import Gpu


def gpu_choices(gpus: list[Gpu]) -> list[str]:
    return [gpu.label() for gpu in gpus]


def picked_gpu_ids(picked: list[str] | None, gpus: list[Gpu]) -> list[int]:
    """The indices of the ticked GPUs, in the machine's order."""
    chosen = set(picked or [])
    return [gpu.index for gpu in gpus if gpu.label() in chosen]


def free_port() -> int:
    """A free TCP port for the processes' rendezvous (29500, accelerate's default, may be taken by another run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(trainer_command: list[str], gpu_ids: list[int], port: int | None = None) -> list[str]:
    """``trainer_command`` (``python -m trainer train``) as it runs on ``gpu_ids``: unchanged for one GPU or none."""
    if len(gpu_ids) < 2:
        return list(trainer_command)
    python, *module = trainer_command
    return [
        python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(len(gpu_ids)),
        "--num_machines", "1", "--gpu_ids", ",".join(map(str, gpu_ids)), "--main_process_port", str(port or free_port()),
        "--dynamo_backend", "no", *module,
    ]
