"""The training configuration: typed dataclass sections, each field documented once.

The field docs feed the CLI help, the commented TOML that ``init-config`` writes and the UI's help
text, so there is exactly one place where a setting is described (litgpt's ``args.py`` pattern).
This module imports no torch: the UI process reads it without loading the engine.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

BUILTIN_MODELS = ("builtin:tiny-sd", "builtin:tiny-sd-v", "builtin:tiny-sdxl")
UNET_TARGET_PRESETS = {
    # diffusers' own module names inside every BasicTransformerBlock (attn1 = self, attn2 = cross).
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    # sd-scripts' default LoRA set for SD 1.x/2.x: attention plus the transformer's in/out
    # projections and feed-forward layers.
    "kohya": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"],
}
TEXT_ENCODER_ATTENTION_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TEXT_ENCODER_MLP_TARGETS = ["fc1", "fc2"]
OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "lion", "adafactor", "adamw_schedulefree")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
MIXED_PRECISION = ("no", "fp16", "bf16")
SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc")
SAVE_DTYPES = ("fp16", "bf16", "fp32")
EXPORT_FORMATS = ("kohya", "diffusers", "both")
CROP_MODES = ("center", "random")
CACHE_MODES = ("off", "memory", "disk")
PREDICTION_TYPES = ("", "epsilon", "v_prediction")
NETWORK_TYPES = ("lora", "locon", "loha", "lokr")  # each one a kind in trainer/networks/
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
LOSS_TYPES = ("l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")


def option(default: Any, doc: str, *, choices: tuple | None = None, advanced: bool = False) -> Any:
    """A dataclass field carrying its user-facing documentation and allowed values."""
    meta = {"doc": doc, "choices": choices, "advanced": advanced}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Where the run folder goes and what the adapter is called."""

    name: str = option("my-lora", "Run and adapter name; the run folder is `output_dir/name`.")
    output_dir: str = option("runs", "Folder that holds run folders.")


@dataclass
class ModelConfig:
    """The base Stable Diffusion model."""

    base: str = option(
        "builtin:tiny-sd",
        "Base model: `builtin:tiny-sd` / `builtin:tiny-sd-v` / `builtin:tiny-sdxl` (tiny random-weight models, "
        "no download), a local diffusers folder, a single-file SD 1.x / 2.x / SDXL checkpoint (.safetensors, "
        "or .ckpt loaded without running pickled code; loads offline), or a Hugging Face hub id (needs internet).",
    )
    revision: str = option("", "Hub revision (branch, tag or commit) when `base` is a hub id.", advanced=True)
    variant: str = option("", "Weight variant to load, e.g. `fp16`, when the model folder has one.", advanced=True)
    prediction_type: str = option(
        "",
        "Override the training target. Empty: read it from the model's scheduler config.",
        choices=PREDICTION_TYPES,
        advanced=True,
    )
    vae: str = option(
        "",
        "Use this VAE instead of the model's own: a diffusers VAE folder or a single .safetensors VAE file "
        "(e.g. the fp16-fix SDXL VAE). Empty: the model's VAE.",
        advanced=True,
    )
    zero_terminal_snr: bool = option(
        False,
        "Rescale the noise schedule to zero terminal SNR (Lin et al. 2023); use with v-prediction. "
        "Checkpoints that carry a `ztsnr` marker key get it automatically.",
        advanced=True,
    )
    tokenizer: str = option(
        "",
        "Single-file checkpoints only: a folder with CLIP tokenizer files (vocab.json, merges.txt) to use "
        "instead of the CLIP vocabulary that ships with lora-studio.",
        advanced=True,
    )


@dataclass
class DatasetConfig:
    """The training images and captions."""

    path: str = option("sample_data", "Folder of images (png, jpg, jpeg, webp, bmp) with optional same-name .txt/.caption captions.")
    trigger_word: str = option("sks", "Word prepended to every caption; use it in prompts to call up what was learnt.")
    class_word: str = option("", "Word added after the trigger word for images that have no caption, e.g. `dog`.")
    repeats: int = option(1, "How many times each image is seen per epoch.")
    resolution: int = option(64, "Training resolution in pixels (square). 512 for SD 1.x, 768 for SD 2.x-v.")
    crop: str = option("center", "How images are cropped to the resolution after resizing.", choices=CROP_MODES)
    flip: bool = option(False, "Randomly flip images horizontally (do not use for asymmetric subjects or text).")
    shuffle_captions: bool = option(False, "Shuffle comma-separated tags in each caption every time it is seen.", advanced=True)
    keep_tokens: int = option(0, "With shuffling: how many leading tags stay in place (the trigger word always does).", advanced=True)
    caption_dropout: float = option(0.0, "Probability of training an image with an empty caption (0 to 1).", advanced=True)
    skip_bad_images: bool = option(False, "Skip unreadable images with a warning instead of stopping with an error.", advanced=True)
    cache_latents: str = option(
        "memory",
        "Encode images with the VAE once and reuse the latents (only when random crop and flip are off).",
        choices=CACHE_MODES,
        advanced=True,
    )
    cache_text_embeddings: bool = option(
        True,
        "Encode captions once when the text encoder is not trained and captions do not change.",
        advanced=True,
    )
    num_workers: int = option(0, "DataLoader worker processes (0 loads in the training process).", advanced=True)
    bucketing: bool = option(
        False,
        "Aspect-ratio bucketing: train each image at the bucket size nearest its aspect ratio (about "
        "resolution² pixels) instead of a square crop; a batch never mixes buckets.",
    )
    bucket_min: int = option(
        256,
        "Smallest bucket side in pixels (kohya default 256). Below resolution 512 the bucket limits and step "
        "scale by resolution/512 (step never below 8), so resolution 64 uses 32-128 px in steps of 8.",
        advanced=True,
    )
    bucket_max: int = option(1024, "Largest bucket side in pixels (kohya default 1024; scaled like `bucket_min`).", advanced=True)
    bucket_step: int = option(64, "Bucket sides are multiples of this (kohya default 64; a multiple of 8; scaled like `bucket_min`).", advanced=True)
    bucket_no_upscale: bool = option(
        False,
        "Never upscale: an image smaller than resolution² gets its own bucket (its size rounded down to the step).",
        advanced=True,
    )
    reg_path: str = option(
        "",
        "Folder of regularization (class) images for DreamBooth-style prior preservation; empty: none.",
        advanced=True,
    )
    prior_loss_weight: float = option(1.0, "Loss weight of regularization images relative to training images.", advanced=True)
    class_prompt: str = option(
        "",
        "Caption for regularization images without a caption file (empty: `class_word`).",
        advanced=True,
    )
    class_images: int = option(
        0,
        "Generate this many regularization images into `reg_path` from the base model with `class_prompt` "
        "before training (kept and reused by later runs with the same settings); 0: use what is there.",
        advanced=True,
    )


@dataclass
class NetworkConfig:
    """The adapter: its type (LoRA, LoCon, LoHa, LoKr), rank and where it goes."""

    type: str = option(
        "lora",
        "Adapter type. `lora`: low-rank update on the targets, the safe default and the most widely read file. "
        "`locon`: LoRA that also adapts the UNet's ResNet and down/upsampler convolutions (`conv_rank`), for "
        "styles and textures. `loha` (LyCORIS Hadamard product): more expressive per parameter, for styles with "
        "many concepts; use a lower rank (rank r acts like r²). `lokr` (LyCORIS Kronecker product): very small "
        "files, for characters and objects; see `lokr_factor`. LoHa/LoKr load in ComfyUI and AUTOMATIC1111, "
        "not in diffusers.",
        choices=NETWORK_TYPES,
    )
    rank: int = option(
        16,
        "LoRA rank (network dim): size of the update, for every `type`. 4 to 32 is typical for LoRA/LoCon, lower for LoHa (rank r acts "
        "like r²). LoKr: a rank at or above half of every layer's factor sizes (e.g. 10000) keeps both Kronecker "
        "factors whole (LyCORIS's full-matrix LoKr, trained at scale 1, `alpha` unused there).",
    )
    alpha: float = option(16.0, "LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = option(0.0, "Dropout on the LoRA path during training (0 to 1).", advanced=True)
    unet_targets: str = option(
        "attention",
        "UNet layers that get LoRA: `attention` (to_q/k/v/out in self and cross attention), `kohya` "
        "(attention plus proj_in/out and feed-forward, sd-scripts' default) or `custom`.",
        choices=("attention", "kohya", "custom"),
    )
    unet_target_modules: list[str] = option([], "With `unet_targets = \"custom\"`: diffusers module names, e.g. [\"to_q\", \"to_v\"].", advanced=True)
    train_text_encoder: bool = option(False, "Also train LoRA on the text encoder's attention (q/k/v/out_proj).")
    text_encoder_mlp: bool = option(False, "With text-encoder training: also adapt the MLP (fc1, fc2).", advanced=True)
    init_from: str = option(
        "",
        "Start from an existing adapter (.safetensors: kohya/LyCORIS or diffusers format, any `type` lora-studio "
        "writes) instead of zeros; the file must match `type`, `rank`, the targets and `use_dora`.",
        advanced=True,
    )
    use_dora: bool = option(
        False,
        "DoRA (weight-decomposed LoRA, PEFT): learns each output channel's magnitude separately from the "
        "direction; often closer to full fine-tuning at the same rank, ~20-40% slower. `lora`/`locon` only.",
        advanced=True,
    )
    rslora: bool = option(
        False,
        "rsLoRA: scale the update by alpha/√rank instead of alpha/rank, so high ranks keep learning at the same "
        "learning rate. `lora`/`locon` only; the file stores the effective alpha, so every client reads it as trained.",
        advanced=True,
    )
    conv_rank: int = option(
        0,
        "Rank on the UNet's 3×3 ResNet and down/upsampler convolutions (sd-scripts `conv_dim`). With `locon`, 0 "
        "means `rank`; with `loha`/`lokr`, a positive value adds those convolutions. Not used by `lora`.",
        advanced=True,
    )
    conv_alpha: float = option(0.0, "Alpha of the convolution adapters (sd-scripts `conv_alpha`); 0 means `alpha`.", advanced=True)
    lokr_factor: int = option(
        -1,
        "LoKr: split each weight's sizes as factor × rest (LyCORIS `factor`); -1 splits as evenly as possible. "
        "Smaller factors give smaller files.",
        advanced=True,
    )
    block_dims: str = option(
        "",
        "Per-block ranks, comma-separated (sd-scripts `block_dims`): 25 for SD 1.x/2.x (IN00-IN11, MID, "
        "OUT00-OUT11), 23 for SDXL (BASE, IN00-IN08, MID0-MID2, OUT00-OUT08, OUT); 0 leaves a block without "
        "an adapter. Empty: `rank` everywhere. Text encoders keep `rank`.",
        advanced=True,
    )
    block_alphas: str = option("", "Per-block alphas, same layout as `block_dims`. Empty: `alpha` everywhere.", advanced=True)
    conv_block_dims: str = option("", "Per-block convolution ranks, same layout as `block_dims`. Empty: `conv_rank`.", advanced=True)
    conv_block_alphas: str = option("", "Per-block convolution alphas, same layout as `block_dims`. Empty: `conv_alpha`.", advanced=True)
    down_lr_weight: str = option(
        "",
        "Learning-rate weight per input block (sd-scripts `down_lr_weight`): 12 comma-separated numbers for SD 1.x "
        "(9 for SDXL), or `cosine`, `sine`, `linear`, `reverse_linear`, `zeros` with optional `+base`. "
        "Missing values are 1; a block weighted 0 gets no adapter.",
        advanced=True,
    )
    mid_lr_weight: str = option("", "Learning-rate weight of the middle block (1 value; 3 for SDXL).", advanced=True)
    up_lr_weight: str = option("", "Learning-rate weight per output block, like `down_lr_weight`.", advanced=True)


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule."""

    name: str = option(
        "adamw",
        "Optimizer: `adamw` (fused on CUDA), `adamw8bit` (bitsandbytes, CUDA only), `prodigy` (finds its own step "
        "size; set learning_rate = 1), `lion` (sign updates, less memory; use a 3-10x lower learning rate and 3-10x "
        "higher weight decay than AdamW; needs lion-pytorch), `adafactor` (factored second moments, least memory) or "
        "`adamw_schedulefree` (no schedule needed: keep `scheduler = \"constant\"`; needs schedulefree).",
        choices=OPTIMIZERS,
    )
    learning_rate: float = option(1e-4, "UNet LoRA learning rate.")
    text_encoder_lr: float = option(5e-5, "Text-encoder LoRA learning rate.")
    weight_decay: float = option(1e-2, "Decoupled weight decay.", advanced=True)
    beta1: float = option(0.9, "Adam beta1.", advanced=True)
    beta2: float = option(0.999, "Adam beta2.", advanced=True)
    epsilon: float = option(1e-8, "Adam epsilon.", advanced=True)
    max_grad_norm: float = option(1.0, "Clip the gradient norm to this value (0 turns clipping off).", advanced=True)
    scheduler: str = option("constant", "Learning-rate schedule.", choices=LR_SCHEDULERS)
    warmup_steps: int = option(0, "Steps of linear warm-up from 0 to the learning rate.")
    num_cycles: int = option(1, "Restarts for `cosine_with_restarts`.", advanced=True)
    power: float = option(1.0, "Exponent for the `polynomial` schedule.", advanced=True)
    warmup_ratio: float = option(
        0.0,
        "Warm-up as a fraction of all steps (0.05: the first 5%), for runs whose length you change often; "
        "0 uses `warmup_steps`. Set one of the two.",
    )
    prodigy_d_coef: float = option(1.0, "Prodigy: multiplies its estimated step size (below 1 for gentler steps).", advanced=True)
    prodigy_safeguard_warmup: bool = option(
        False, "Prodigy: keep the step-size estimate from growing during warm-up (use with a warm-up).", advanced=True
    )
    prodigy_bias_correction: bool = option(
        False, "Prodigy: Adam-style bias correction; its authors recommend it for diffusion models.", advanced=True
    )
    adafactor_relative_step: bool = option(
        False,
        "Adafactor: let it pick a time-dependent step size itself; `learning_rate` is then unused and the "
        "schedule must be `constant` without warm-up.",
        advanced=True,
    )


@dataclass
class TrainingConfig:
    """The training loop."""

    max_steps: int = option(100, "Stop after this many optimizer steps (0: use `epochs`).")
    epochs: int = option(0, "Stop after this many passes over the dataset (used when max_steps = 0).")
    batch_size: int = option(1, "Images per step on each device.")
    gradient_accumulation_steps: int = option(1, "Micro-batches accumulated into one optimizer step.", advanced=True)
    mixed_precision: str = option("no", "Compute precision; LoRA weights always stay fp32. bf16 needs an Ampere+ GPU.", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = option(False, "Recompute activations in backward: much less memory, ~20-30% slower.", advanced=True)
    seed: int = option(42, "Random seed; on CPU the run is fully deterministic.")
    min_snr_gamma: float = option(0.0, "Min-SNR loss weighting gamma (5 is the paper's value; 0 turns it off).", advanced=True)
    noise_offset: float = option(0.0, "Noise offset for darker darks / brighter brights (0.05-0.1 typical; 0 off).", advanced=True)
    log_every: int = option(1, "Write a step event every N steps.", advanced=True)
    timestep_sampling: str = option(
        "uniform",
        "How training timesteps are drawn: `uniform`, or `logit_normal` (SD3's choice: more steps in the middle "
        "of the schedule, fewer at the near-clean and near-noise ends).",
        choices=TIMESTEP_SAMPLINGS,
        advanced=True,
    )
    logit_mean: float = option(0.0, "`logit_normal` sampling: mean in logit space (above 0 favours noisier steps).", advanced=True)
    logit_std: float = option(1.0, "`logit_normal` sampling: standard deviation in logit space (smaller: more peaked).", advanced=True)
    min_timestep: int = option(0, "Train only timesteps from this one on (sd-scripts' `--min_timestep`).", advanced=True)
    max_timestep: int = option(
        0, "Train only timesteps below this one (0: the model's number of train timesteps, usually 1000).", advanced=True
    )
    debiased_estimation: bool = option(
        False,
        "sd-scripts' debiased estimation loss: weight each sample by 1/√SNR(t), shifting effort to noisier steps "
        "(sharper detail in some recipes). Combines with `min_snr_gamma`.",
        advanced=True,
    )
    multires_noise_iterations: int = option(
        0, "Multires (pyramid) noise: add this many coarser noise levels (6-10 typical; 0 off). Helps contrast.", advanced=True
    )
    multires_noise_discount: float = option(
        0.3, "Multires noise: weight of each coarser level relative to the previous (0.1-0.3 typical).", advanced=True
    )
    ip_noise_gamma: float = option(
        0.0,
        "Input-perturbation noise (Ning et al. 2023): noise the latents with ε + γ·ε' but keep ε as the target, "
        "against exposure bias (0.1 typical; 0 off).",
        advanced=True,
    )
    loss_type: str = option(
        "l2",
        "`l2` (mean squared error), or sd-scripts' `huber` / `smooth_l1` (robust to outlier images; see `huber_c`).",
        choices=LOSS_TYPES,
        advanced=True,
    )
    huber_schedule: str = option(
        "snr",
        "Huber / smooth-L1 threshold per timestep: `snr` (sd-scripts' default), `exponential` or `constant` (`huber_c`).",
        choices=HUBER_SCHEDULES,
        advanced=True,
    )
    huber_c: float = option(0.1, "Huber / smooth-L1 threshold parameter (sd-scripts default 0.1; in (0, 1]).", advanced=True)
    clip_skip: int = option(
        1,
        "Use the text encoder's N-th layer from the end (2: the penultimate, as anime SD 1.x models were trained). "
        "SD 1.x / 2.x only; previews use it too and the adapter records it (`ss_clip_skip`).",
        advanced=True,
    )
    ema_decay: float = option(
        0.0,
        "Keep an exponential moving average of the adapter weights with this decay (0.999 typical; 0 off); the "
        "average is what previews, validation and exports use.",
        advanced=True,
    )
    ema_warmup: bool = option(
        True, "EMA warm-up: the decay starts low and rises as (1+n)/(10+n) up to `ema_decay` (diffusers' EMAModel).", advanced=True
    )
    ema_on_cpu: bool = option(False, "Keep the EMA weights in CPU memory instead of on the GPU.", advanced=True)
    device: str = option("auto", "`auto` (GPU if present), or `cpu` to force the CPU.", choices=("auto", "cpu"), advanced=True)


@dataclass
class SamplingConfig:
    """Preview images during training."""

    every_n_steps: int = option(50, "Make previews every N steps (0: only at the end).")
    every_n_epochs: int = option(0, "Also make previews after every N epochs (0: off).", advanced=True)
    at_end: bool = option(True, "Make previews after the final step.")
    prompts: list[str] = option(
        ["{trigger}"],
        "Preview prompts; `{trigger}` is replaced with the trigger word. sd-scripts' per-prompt options work at the "
        "end of a prompt: `--n` negative prompt, `--w`/`--h` size, `--d` seed, `--s` steps, `--l` guidance scale.",
    )
    negative_prompt: str = option("", "Negative prompt for previews.", advanced=True)
    steps: int = option(20, "Denoising steps per preview.")
    guidance_scale: float = option(7.5, "Classifier-free guidance scale.", advanced=True)
    width: int = option(0, "Preview width in pixels (0: training resolution).", advanced=True)
    height: int = option(0, "Preview height in pixels (0: training resolution).", advanced=True)
    sampler: str = option("euler_a", "Sampler for previews.", choices=SAMPLERS)
    seed: int = option(1234, "Seed for previews, the same at every step so they can be compared.", advanced=True)


@dataclass
class CheckpointConfig:
    """Resumable checkpoints."""

    every_n_steps: int = option(100, "Save the adapter and full training state every N steps (0: only at the end).")
    every_n_epochs: int = option(0, "Also save a checkpoint after every N epochs (0: off).")
    keep_last: int = option(
        3, "How many checkpoints to keep (older ones are deleted; the one with the best validation loss is kept too)."
    )


@dataclass
class ValidationConfig:
    """Validation loss on held-out images, with fixed timesteps and noise so the numbers compare."""

    fraction: float = option(
        0.0, "Hold out this fraction of the training images (at least one) for validation; 0: none.",
    )
    path: str = option("", "Or validate on a separate folder of images with captions (instead of `fraction`).")
    every_n_steps: int = option(0, "Validate every N steps as well as at each checkpoint and at the end (0: only those).")
    timesteps: int = option(
        4, "Timesteps per image, evenly spread over the trained range; each has its own fixed noise.", advanced=True
    )
    seed: int = option(0, "Seed of the held-out choice and the validation noise (the same seed compares runs).", advanced=True)


@dataclass
class TrackingConfig:
    """Experiment tracking through accelerate's trackers."""

    tensorboard: bool = option(
        False, "Log losses, learning rate, validation loss, previews and the config for TensorBoard under `logs/` in the run folder."
    )
    wandb: bool = option(False, "Also log to Weights & Biases (needs wandb installed and `wandb login`).", advanced=True)
    project: str = option("lora-studio", "W&B project name.", advanced=True)


@dataclass
class ExportConfig:
    """The adapter file(s) written at the end."""

    format: str = option("kohya", "`kohya` (ComfyUI, AUTOMATIC1111, diffusers), `diffusers` (PEFT keys) or `both`.", choices=EXPORT_FORMATS)
    dtype: str = option("fp16", "Weight dtype in the saved adapter.", choices=SAVE_DTYPES)
    verify: bool = option(
        True,
        "Check each exported file reproduces the trained model: every module's ΔW from the file against the trained "
        "one, then the outputs with the file loaded in diffusers (LoRA/LoCon) or merged into the weights (other types).",
        advanced=True,
    )
    dora_layout: str = option(
        "magnitude",
        "How a DoRA adapter is written. `magnitude`: LoRA factors + `dora_scale` (LyCORIS's layout, small; ComfyUI "
        "and AUTOMATIC1111 misapply it today, see the README). `full`: each layer's complete ΔW as `.diff` "
        "(LyCORIS `full`), which ComfyUI and AUTOMATIC1111 apply exactly; as big as the adapted layers, and "
        "`network.init_from` cannot continue from it.",
        choices=("magnitude", "full"),
        advanced=True,
    )


@dataclass
class Config:
    """A whole training run."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    schema_version: int = SCHEMA_VERSION

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def section_items(self) -> list[tuple[str, Any]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "schema_version"]


class ConfigError(ValueError):
    """Every problem found in a config, one per line, each naming the field as the user writes it."""

    def __init__(self, problems: list[str], source: str | Path | None = None):
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s){where}:\n{lines}")


@dataclass
class FieldInfo:
    """One user-visible setting: its dotted name, type, default and documentation."""

    key: str
    section: str
    name: str
    type: str
    default: Any
    doc: str
    choices: tuple | None
    advanced: bool


def section_types() -> dict[str, type]:
    return {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name != "schema_version"}


def field_infos() -> list[FieldInfo]:
    """All settings in declaration order; the single source for CLI help, TOML comments and UI help."""
    infos = []
    for section, cls in section_types().items():
        instance = cls()
        for f in dataclasses.fields(cls):
            infos.append(
                FieldInfo(
                    key=f"{section}.{f.name}",
                    section=section,
                    name=f.name,
                    type=_type_name(f.type),
                    default=getattr(instance, f.name),
                    doc=f.metadata.get("doc", ""),
                    choices=f.metadata.get("choices"),
                    advanced=f.metadata.get("advanced", False),
                )
            )
    return infos


def _type_name(annotation: Any) -> str:
    return str(annotation).replace("typing.", "")


def section_doc(section: str) -> str:
    return (section_types()[section].__doc__ or "").strip()


# ---------------------------------------------------------------------------------------------
# Dict / TOML conversion


def config_to_dict(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"schema_version": config.schema_version}
    for name, section in config.section_items():
        out[name] = dataclasses.asdict(section)
    return out


def config_from_dict(data: dict[str, Any], source: str | Path | None = None) -> Config:
    """Build a Config from plain data, collecting every unknown key and type error at once."""
    problems: list[str] = []
    data = upgrade_config_dict(dict(data), problems)
    types = section_types()
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key == "schema_version":
            continue
        if key not in types:
            problems.append(f"unknown section `[{key}]`; known sections: {', '.join(types)}")
            continue
        if not isinstance(value, dict):
            problems.append(f"`{key}` must be a table (`[{key}]`), got {type(value).__name__}")
            continue
        sections[key] = _section_from_dict(key, types[key], value, problems)
    if problems:
        raise ConfigError(problems, source)
    config = Config(**sections)
    return config


def _section_from_dict(section: str, cls: type, values: dict, problems: list[str]) -> Any:
    defaults = cls()
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            problems.append(f"unknown setting `{section}.{name}`; known: {', '.join(known)}")
            continue
        expected = getattr(defaults, name)
        coerced, ok = _coerce(value, expected)
        if not ok:
            problems.append(
                f"`{section}.{name}` must be {_describe(expected)}, got {value!r} ({type(value).__name__})"
            )
            continue
        kwargs[name] = coerced
    return cls(**kwargs)


def _coerce(value: Any, expected: Any) -> tuple[Any, bool]:
    if isinstance(expected, bool):
        return value, isinstance(value, bool)
    if isinstance(expected, int):
        return value, isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), True
        return value, False
    if isinstance(expected, str):
        return value, isinstance(value, str)
    if isinstance(expected, list):
        return value, isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value, True


def _describe(expected: Any) -> str:
    if isinstance(expected, bool):
        return "true or false"
    if isinstance(expected, int):
        return "an integer"
    if isinstance(expected, float):
        return "a number"
    if isinstance(expected, list):
        return "a list of strings"
    return "a string"


def upgrade_config_dict(data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Bring an older saved config up to SCHEMA_VERSION (OneTrainer keeps such upgrade steps)."""
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version < 1:
        problems.append(f"`schema_version` must be a positive integer, got {version!r}")
    elif version > SCHEMA_VERSION:
        problems.append(
            f"`schema_version` {version} is newer than this lora-studio understands ({SCHEMA_VERSION}); "
            "upgrade lora-studio"
        )
    data["schema_version"] = SCHEMA_VERSION
    return data


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config; raises ConfigError naming the file and every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"], path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError([f"not valid TOML: {err}"], path) from None
    config = config_from_dict(data, path)
    problems = validate(config)
    if problems:
        raise ConfigError(problems, path)
    return config


def dumps_config(config: Config, comments: bool = False) -> str:
    """TOML text for a config; with ``comments`` every field carries its documentation."""
    import tomli_w

    data = config_to_dict(config)
    if not comments:
        return tomli_w.dumps(data)
    docs = {info.key: info for info in field_infos()}
    lines = [
        "# lora-studio training config. Run it with: python -m trainer train THIS_FILE.toml",
        f"schema_version = {SCHEMA_VERSION}",
        "",
    ]
    for name, values in data.items():
        if name == "schema_version":
            continue
        lines.append(f"# {section_doc(name)}")
        lines.append(f"[{name}]")
        for key, value in values.items():
            info = docs[f"{name}.{key}"]
            doc = info.doc + (f" One of: {', '.join(repr(c) for c in info.choices)}." if info.choices else "")
            lines.append(f"# {doc}")
            lines.append(tomli_w.dumps({key: value}).strip())
        lines.append("")
    return "\n".join(lines)


def set_dotted(config: Config, key: str, value: Any) -> None:
    """Set `section.field` on a config, with the same type checks as loading."""
    section, _, name = key.partition(".")
    problems: list[str] = []
    current = config_to_dict(config)
    if section not in current or name not in current[section]:
        raise ConfigError([f"unknown setting `{key}`"])
    current[section][name] = value
    new = config_from_dict(current)
    setattr(config, section, getattr(new, section))
    if problems:
        raise ConfigError(problems)


# ---------------------------------------------------------------------------------------------
# Validation


def validate(config: Config) -> list[str]:
    """Every problem in the config as a user-facing sentence; an empty list means it is valid."""
    p: list[str] = []
    _check_choices(config, p)
    if not config.run.name.strip() or any(c in config.run.name for c in '/\\:*?"<>|') or config.run.name in (".", ".."):
        p.append(f"`run.name` must be a plain folder name without / \\ : * ? \" < > |, got {config.run.name!r}")
    if not config.model.base.strip():
        p.append("`model.base` must name a base model, e.g. \"builtin:tiny-sd\" or a diffusers folder")
    elif config.model.base.startswith("builtin:") and config.model.base not in BUILTIN_MODELS:
        p.append(f"`model.base` {config.model.base!r} is not a builtin model; builtins: {', '.join(BUILTIN_MODELS)}")
    if config.model.vae.strip() and not config.model.vae.strip().lower().endswith((".safetensors", ".ckpt", ".pt")):
        if not Path(config.model.vae).expanduser().is_dir():
            p.append(f"`model.vae` must be a diffusers VAE folder or a .safetensors VAE file, got {config.model.vae!r}")
    elif config.model.vae.strip() and not Path(config.model.vae).expanduser().is_file():
        p.append(f"`model.vae` file not found: {config.model.vae}")
    if config.model.zero_terminal_snr and config.model.prediction_type == "epsilon":
        p.append("`model.zero_terminal_snr` needs v-prediction: set `model.prediction_type` to \"v_prediction\" or leave it empty")
    if config.model.tokenizer.strip() and not (Path(config.model.tokenizer).expanduser() / "vocab.json").is_file():
        p.append(f"`model.tokenizer` must be a folder with vocab.json and merges.txt, got {config.model.tokenizer!r}")
    ds, net, opt, tr, smp, ck = (config.dataset, config.network, config.optimizer, config.training, config.sampling, config.checkpoint)
    if not ds.path.strip():
        p.append("`dataset.path` must name a folder of images")
    _positive(p, "dataset.repeats", ds.repeats)
    _positive(p, "dataset.resolution", ds.resolution)
    if ds.resolution > 0 and ds.resolution % 8:
        p.append(f"`dataset.resolution` must be a multiple of 8, got {ds.resolution}")
    _non_negative(p, "dataset.keep_tokens", ds.keep_tokens)
    _probability(p, "dataset.caption_dropout", ds.caption_dropout)
    _non_negative(p, "dataset.num_workers", ds.num_workers)
    _positive(p, "dataset.bucket_min", ds.bucket_min)
    _positive(p, "dataset.bucket_max", ds.bucket_max)
    if ds.bucket_step <= 0 or ds.bucket_step % 8:
        p.append(f"`dataset.bucket_step` must be a positive multiple of 8, got {ds.bucket_step}")
    if 0 < ds.bucket_max < ds.bucket_min:
        p.append(f"`dataset.bucket_max` ({ds.bucket_max}) must be at least `dataset.bucket_min` ({ds.bucket_min})")
    if ds.prior_loss_weight < 0:
        p.append(f"`dataset.prior_loss_weight` must be 0 or more, got {ds.prior_loss_weight}")
    if ds.reg_path.strip() and ds.reg_path.strip() == ds.path.strip():
        p.append("`dataset.reg_path` must be a different folder from `dataset.path`")
    _non_negative(p, "dataset.class_images", ds.class_images)
    if ds.class_images > 0 and not ds.reg_path.strip():
        p.append("`dataset.class_images` needs `dataset.reg_path`: the folder the generated images go to")
    if ds.class_images > 0 and not (ds.class_prompt.strip() or ds.class_word.strip()):
        p.append("`dataset.class_images` needs `dataset.class_prompt` (or `dataset.class_word`) to generate from")
    _positive(p, "network.rank", net.rank)
    if net.alpha <= 0:
        p.append(f"`network.alpha` must be a positive number, got {net.alpha}")
    _probability(p, "network.dropout", net.dropout, upper_open=True)
    if net.unet_targets == "custom" and not net.unet_target_modules:
        p.append("`network.unet_target_modules` must list module names when `network.unet_targets` is \"custom\"")
    from trainer.networks.settings import network_problems  # torch-free

    p.extend(network_problems(config))
    if opt.learning_rate <= 0:
        p.append(f"`optimizer.learning_rate` must be a positive number, got {opt.learning_rate}")
    if net.train_text_encoder and opt.text_encoder_lr <= 0:
        p.append(f"`optimizer.text_encoder_lr` must be a positive number, got {opt.text_encoder_lr}")
    if opt.weight_decay < 0:
        p.append(f"`optimizer.weight_decay` must be 0 or more, got {opt.weight_decay}")
    for key, beta in (("optimizer.beta1", opt.beta1), ("optimizer.beta2", opt.beta2)):
        if not 0 <= beta < 1:
            p.append(f"`{key}` must be in [0, 1), got {beta}")
    if opt.epsilon <= 0:
        p.append(f"`optimizer.epsilon` must be a positive number, got {opt.epsilon}")
    if opt.max_grad_norm < 0:
        p.append(f"`optimizer.max_grad_norm` must be 0 (off) or more, got {opt.max_grad_norm}")
    _non_negative(p, "optimizer.warmup_steps", opt.warmup_steps)
    _positive(p, "optimizer.num_cycles", opt.num_cycles)
    _non_negative(p, "training.max_steps", tr.max_steps)
    _non_negative(p, "training.epochs", tr.epochs)
    if tr.max_steps == 0 and tr.epochs == 0:
        p.append("set `training.max_steps` or `training.epochs` to a positive number: the run needs a length")
    _positive(p, "training.batch_size", tr.batch_size)
    _positive(p, "training.gradient_accumulation_steps", tr.gradient_accumulation_steps)
    _positive(p, "training.log_every", tr.log_every)
    if tr.min_snr_gamma < 0:
        p.append(f"`training.min_snr_gamma` must be 0 (off) or more, got {tr.min_snr_gamma}")
    if tr.noise_offset < 0:
        p.append(f"`training.noise_offset` must be 0 (off) or more, got {tr.noise_offset}")
    _non_negative(p, "sampling.every_n_steps", smp.every_n_steps)
    _positive(p, "sampling.steps", smp.steps)
    for key, size in (("sampling.width", smp.width), ("sampling.height", smp.height)):
        if size < 0 or size % 8:
            p.append(f"`{key}` must be 0 (training resolution) or a positive multiple of 8, got {size}")
    if smp.guidance_scale < 0:
        p.append(f"`sampling.guidance_scale` must be 0 or more, got {smp.guidance_scale}")
    _non_negative(p, "checkpoint.every_n_steps", ck.every_n_steps)
    _positive(p, "checkpoint.keep_last", ck.keep_last)
    _check_recipe(config, p)
    return _with_finite_check(config, p)


def _check_recipe(config: Config, p: list[str]) -> None:
    """Timestep, noise, loss, EMA, optimizer-option, epoch-interval, validation and tracking settings."""
    opt, tr, val = config.optimizer, config.training, config.validation
    if not 0 <= opt.warmup_ratio < 1:
        p.append(f"`optimizer.warmup_ratio` must be in [0, 1), got {opt.warmup_ratio}")
    elif opt.warmup_ratio and opt.warmup_steps:
        p.append("set `optimizer.warmup_steps` or `optimizer.warmup_ratio`, not both")
    if opt.prodigy_d_coef <= 0:
        p.append(f"`optimizer.prodigy_d_coef` must be a positive number, got {opt.prodigy_d_coef}")
    if opt.name == "adamw_schedulefree" and opt.scheduler != "constant":
        p.append("`optimizer.scheduler` must be \"constant\" with `optimizer.name = \"adamw_schedulefree\"` "
                 "(it needs no schedule; its warm-up comes from `optimizer.warmup_steps`)")
    if opt.adafactor_relative_step and opt.name != "adafactor":
        p.append("`optimizer.adafactor_relative_step` needs `optimizer.name = \"adafactor\"`")
    elif opt.adafactor_relative_step and (opt.scheduler != "constant" or opt.warmup_steps or opt.warmup_ratio):
        p.append("`optimizer.adafactor_relative_step` sets its own step size: use `optimizer.scheduler = \"constant\"` "
                 "without `warmup_steps` / `warmup_ratio`")
    if tr.logit_std <= 0:
        p.append(f"`training.logit_std` must be a positive number, got {tr.logit_std}")
    _non_negative(p, "training.min_timestep", tr.min_timestep)
    _non_negative(p, "training.max_timestep", tr.max_timestep)
    if tr.max_timestep and tr.min_timestep >= tr.max_timestep:
        p.append(f"`training.min_timestep` ({tr.min_timestep}) must be below `training.max_timestep` ({tr.max_timestep})")
    _non_negative(p, "training.multires_noise_iterations", tr.multires_noise_iterations)
    if not 0 < tr.multires_noise_discount <= 1:
        p.append(f"`training.multires_noise_discount` must be in (0, 1], got {tr.multires_noise_discount}")
    if tr.ip_noise_gamma < 0:
        p.append(f"`training.ip_noise_gamma` must be 0 (off) or more, got {tr.ip_noise_gamma}")
    if not 0 < tr.huber_c <= 1:
        p.append(f"`training.huber_c` must be in (0, 1], got {tr.huber_c}")
    _positive(p, "training.clip_skip", tr.clip_skip)
    if not 0 <= tr.ema_decay < 1:
        p.append(f"`training.ema_decay` must be in [0, 1) (0 turns EMA off), got {tr.ema_decay}")
    _non_negative(p, "sampling.every_n_epochs", config.sampling.every_n_epochs)
    _non_negative(p, "checkpoint.every_n_epochs", config.checkpoint.every_n_epochs)
    if not 0 <= val.fraction < 1:
        p.append(f"`validation.fraction` must be in [0, 1), got {val.fraction}")
    if val.fraction and val.path.strip():
        p.append("set `validation.fraction` or `validation.path`, not both")
    if val.path.strip() and val.path.strip() == config.dataset.path.strip():
        p.append("`validation.path` must be a different folder from `dataset.path`: validation images must be unseen")
    _non_negative(p, "validation.every_n_steps", val.every_n_steps)
    _positive(p, "validation.timesteps", val.timesteps)
    from trainer.prompt_options import prompt_problems

    p.extend(prompt_problems(config.sampling.prompts))
    if val.path.strip() and not Path(val.path).expanduser().is_dir():
        p.append(f"`validation.path` folder not found: {val.path}")
    if config.tracking.wandb and not config.tracking.project.strip():
        p.append("`tracking.project` must name a W&B project when `tracking.wandb` is on")


def _with_finite_check(config: Config, p: list[str]) -> list[str]:
    """Refuse nan and ±inf in every float setting (TOML and ``--set`` both accept the literals).

    A non-finite value fails each range check above with a misleading second message (or, for nan,
    slips through every comparison), so those messages are replaced by one that names the real problem.
    """
    bad: dict[str, float] = {}
    for info in field_infos():
        value = getattr(getattr(config, info.section), info.name)
        if isinstance(value, float) and not math.isfinite(value):
            bad[info.key] = value
    if not bad:
        return p
    own = [f"`{key}` must be a finite number, got {value}" for key, value in bad.items()]
    return own + [m for m in p if not m.startswith(tuple(f"`{key}` " for key in bad))]


def _check_choices(config: Config, p: list[str]) -> None:
    for info in field_infos():
        if info.choices is None:
            continue
        value = getattr(getattr(config, info.section), info.name)
        if value not in info.choices:
            allowed = ", ".join(f'"{c}"' for c in info.choices)
            p.append(f"`{info.key}` must be one of {allowed}, got {value!r}")


def _positive(p: list[str], key: str, value: int) -> None:
    if value <= 0:
        p.append(f"`{key}` must be a positive integer, got {value}")


def _non_negative(p: list[str], key: str, value: int) -> None:
    if value < 0:
        p.append(f"`{key}` must be 0 or a positive integer, got {value}")


def _probability(p: list[str], key: str, value: float, upper_open: bool = False) -> None:
    if value < 0 or value > 1 or (upper_open and value == 1):
        bound = "[0, 1)" if upper_open else "[0, 1]"
        p.append(f"`{key}` must be a probability in {bound}, got {value}")


# ---------------------------------------------------------------------------------------------
# Presets


PRESETS: dict[str, dict[str, Any]] = {
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


def preset_config(name: str) -> Config:
    """A Config with a preset applied over the defaults."""
    if name not in PRESETS:
        raise ConfigError([f"unknown preset {name!r}; presets: {', '.join(PRESETS)}"])
    data = config_to_dict(Config())
    for section, values in PRESETS[name].items():
        data[section].update(values)
    return config_from_dict(data)
