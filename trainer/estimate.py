"""Peak memory and seconds per step before launch, from a model of the main terms; no torch (the UI calls it).

    peak   = runtime + weights + activations + adapter
    step_s = overhead + batch × compute / rate

- ``weights``: every parameter of the UNet, text encoder(s) and VAE (all sit on the device while training) at
  the compute dtype: counted from the safetensors headers of the model folder, or the family's known sizes.
- ``activations``: what autograd keeps for backward, per image: ``latent pixels × Σ_level width × (1 + attention
  layers) / 4^level`` activation units × the compute dtype's bytes × ``ACT_BYTES``; gradient checkpointing keeps
  ``CHECKPOINT_FRACTION`` of it.
- ``adapter``: the LoRA weights (trainer.disk_estimate's count) with their gradient and optimizer state.
- ``compute``: ``latent pixels × Σ_level width² × (layers + attention layers) / 4^level`` (a convolution's cost is
  its weights × the pixels it runs over); checkpointing recomputes the forward (× ``recompute_factor``: 4/3 where
  compute-bound, more where kernel launches dominate, as at batch 1 on a big GPU).

The coefficients come from the measurements in ``bench/results`` (``bench/estimate_error.py`` fits them and
prints the error on every measurement). They describe the engine as measured; a new GPU or a new torch moves them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import Config
from trainer.disk_estimate import OPTIMIZER_BYTES, lora_weights

MB = 2**20
# Parameters by component where no weights file can be read (a single-file checkpoint, an uncached hub id).
FAMILY_PARAMS = {
    "sd1": {"unet": 859.5e6, "text_encoder": 123.1e6, "vae": 83.7e6},
    "sd2": {"unet": 865.9e6, "text_encoder": 340.4e6, "vae": 83.7e6},
    "sdxl": {"unet": 2567.5e6, "text_encoder": 123.1e6, "text_encoder_2": 694.7e6, "vae": 83.7e6},
}
COMPUTE_BYTES = {"no": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class Calibration:
    """Fitted by ``bench/estimate_error.py`` on the measurements of one kind of device."""

    runtime_mb: float  # the process before any weight: CPU RSS of torch + diffusers; 0 for VRAM
    act_bytes: float  # bytes kept per activation unit per compute-dtype byte
    checkpoint_fraction: float  # activations kept with gradient checkpointing
    overhead_s: float  # per optimizer step, independent of the work
    units_per_s: float  # compute units per second
    recompute_factor: float = 4 / 3  # step time with gradient checkpointing (the forward again; more where launch-bound)


CALIBRATION = {
    # 2 shared CPU cores, fp32, torch 2.13: memory from bench/results/cpu-throughput-*.json (both models), time
    # from builtin:tiny-sd's quiet rounds (the sd15-small run shared the cores with a training run)
    "cpu": Calibration(runtime_mb=427.0, act_bytes=169.0, checkpoint_fraction=0.35, overhead_s=0.032, units_per_s=4.1e8),
    # H100 80GB, bf16/fp16, batch 1 (bench/results/h100-sd15-512.jsonl, h100-sdxl-1024.jsonl); at batch 1 the GPU
    # is launch-bound, so the overhead dominates and checkpointing's recompute costs more than its FLOPs
    "cuda": Calibration(runtime_mb=0.0, act_bytes=128.6, checkpoint_fraction=0.289, overhead_s=0.22, units_per_s=4.9e11,
                        recompute_factor=1.75),
}


@dataclass
class ResourceEstimate:
    """Predicted peak memory (MB; CPU RSS on the CPU, allocated VRAM on a GPU) and seconds per optimizer step."""

    device: str
    peak_mb: float
    seconds_per_step: float
    parts_mb: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        memory = "GPU memory" if self.device == "cuda" else "CPU memory"
        parts = ", ".join(f"{name} {value:,.0f}" for name, value in self.parts_mb.items() if value >= 1)
        return (
            f"estimate: peak {memory} about {self.peak_mb:,.0f} MB ({parts}), about {self.seconds_per_step:.2f} s "
            "per step (a model of the main terms; expect ±30%)"
        )


def component_params(config_dir: Path | None, family: str | None) -> dict[str, float]:
    """Parameters per component: from the folder's safetensors headers where readable, else the family's sizes."""
    from trainer.safetensors_header import HeaderError, read_header

    known = dict(FAMILY_PARAMS.get(family or "sd1", FAMILY_PARAMS["sd1"]))
    if config_dir is None:
        return known
    out: dict[str, float] = {}
    for component in ("unet", "text_encoder", "text_encoder_2", "vae"):
        files = sorted((Path(config_dir) / component).glob("*.safetensors"))
        try:
            counted = sum(math.prod(t.shape) for f in files for t in read_header(f, "model.base").tensors.values())
        except (HeaderError, OSError):
            counted = 0
        if counted:
            out[component] = float(counted)
        elif component in known and (Path(config_dir) / component).is_dir():
            out[component] = known[component]
    return out or known


LINEAR_PER_ATTENTION = 10  # a transformer layer's projections (q, k, v, out twice, feed-forward ×4) in width² units
ATTENTION_SCORES = 2  # QKᵀ and the weighted sum: 2 × tokens × width per token


def unet_units(unet: dict[str, Any], pixels: float = 0.0) -> tuple[float, float]:
    """(activation units, compute units) per latent pixel of a ``UNet2DConditionModel`` config at ``pixels``
    latent pixels (attention's cost per pixel grows with the pixel count). The compute units track torch's FLOP
    counter at about 80 FLOPs (forward + backward) per unit on builtin:tiny-sd and bench's sd15-small."""
    widths = list(unet["block_out_channels"])
    blocks = unet.get("down_block_types") or []
    layers = unet.get("layers_per_block", 2)
    layers = layers[0] if isinstance(layers, (list, tuple)) else layers
    depth = unet.get("transformer_layers_per_block", 1)
    act = compute = 0.0
    for i, width in enumerate(widths):
        attention = 0
        if i < len(blocks) and "CrossAttn" in str(blocks[i]):
            attention = depth[i] if isinstance(depth, (list, tuple)) else depth
        scale = 4.0**-i  # each level halves both sides
        act += width * (1 + attention) * scale
        compute += width * width * (layers + LINEAR_PER_ATTENTION * attention) * scale
        compute += ATTENTION_SCORES * attention * width * pixels * scale * scale
    return act, compute


def latent_pixels(resolution: int, vae: dict[str, Any] | None) -> float:
    factor = 2 ** (len((vae or {}).get("block_out_channels", [0, 0, 0, 0])) - 1)
    return (resolution / factor) ** 2


def estimate_resources(
    cfg: Config, configs: dict[str, dict[str, Any]], params: dict[str, float], device: str, processes: int = 1
) -> ResourceEstimate:
    """The estimate for one process (every process holds the same); ``configs``: the components' config.json."""
    cal = CALIBRATION["cuda" if device == "cuda" else "cpu"]
    tr = cfg.training
    dtype_bytes = COMPUTE_BYTES.get(tr.mixed_precision, 4)
    px = latent_pixels(cfg.dataset.resolution, configs.get("vae"))
    act_units, compute_units = unet_units(configs["unet"], px)
    keep = cal.checkpoint_fraction if tr.gradient_checkpointing else 1.0
    lora = lora_weights(cfg, configs)
    parts = {
        "runtime": cal.runtime_mb,
        "weights": sum(params.values()) * dtype_bytes / MB,
        "activations": cal.act_bytes * tr.batch_size * px * act_units * dtype_bytes * keep / MB,
        "adapter": lora * (4 + 4 + OPTIMIZER_BYTES.get(cfg.optimizer.name, 8)) / MB,
    }
    recompute = cal.recompute_factor if tr.gradient_checkpointing else 1.0
    seconds = cal.overhead_s + tr.batch_size * px * compute_units * recompute / cal.units_per_s
    return ResourceEstimate(device, sum(parts.values()), seconds * tr.gradient_accumulation_steps, parts)


def memory_advice(cfg: Config, on_gpu: bool = True) -> str:
    """The settings that lower peak memory, most effective first, as a user can act on them."""
    tr = cfg.training
    steps = []
    if not tr.gradient_checkpointing:
        steps.append("set `training.gradient_checkpointing = true` (about a third of the activations)")
    if tr.batch_size > 1:
        steps.append(
            f"lower `training.batch_size` (now {tr.batch_size}) and raise `training.gradient_accumulation_steps` "
            "to keep the effective batch"
        )
    if tr.mixed_precision == "no" and on_gpu:
        steps.append("use `training.mixed_precision = \"bf16\"` (or \"fp16\" before Ampere)")
    if cfg.optimizer.name == "adamw" and on_gpu:
        steps.append("use `optimizer.name = \"adamw8bit\"`")
    if cfg.dataset.resolution > 512:
        steps.append(f"lower `dataset.resolution` (now {cfg.dataset.resolution})")
    return "try: " + "; ".join(steps) if steps else "lower `dataset.resolution` or `network.rank`"


def out_of_memory_message(cfg: Config, step: int, device: str) -> str:
    """What a run that ran out of memory says: where, with which settings, and what to change."""
    tr = cfg.training
    where = "GPU" if device.startswith("cuda") else "CPU"
    return (
        f"out of {where} memory at step {step} (batch {tr.batch_size}, {cfg.dataset.resolution} px, "
        f"gradient checkpointing {'on' if tr.gradient_checkpointing else 'off'}, precision {tr.mixed_precision}); "
        + memory_advice(cfg, on_gpu=where == "GPU")
    )
