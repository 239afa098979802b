"""Which GPUs this machine shows, without torch (the UI asks before any trainer runs).

``nvidia-smi`` lists them (name and memory); ``CUDA_VISIBLE_DEVICES`` narrows the list as CUDA itself would.
No ``nvidia-smi`` (no NVIDIA driver, or a CPU machine): no GPUs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mb: int

    def label(self) -> str:
        return f"GPU {self.index}: {self.name} ({self.memory_mb / 1024:.0f} GB)"


def _nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        return subprocess.run(QUERY, capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def visible_gpus(query: Callable[[], str] = _nvidia_smi, environ: dict[str, str] | None = None) -> list[Gpu]:
    """The GPUs a trainer started from here could use (``query`` is the seam tests replace)."""
    gpus = []
    for line in query().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            memory = int(float(parts[2])) if parts[2].replace(".", "", 1).isdigit() else 0
            gpus.append(Gpu(int(parts[0]), parts[1], memory))
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    if not wanted or wanted == ["-1"]:
        return []
    by_index = {str(g.index): g for g in gpus}
    return [by_index[w] for w in wanted if w in by_index]
