"""The training configuration: typed dataclass sections, each field documented once.

The field docs feed the CLI help, the commented TOML that ``init-config`` writes and the UI's help
text, so there is exactly one place where a setting is described (litgpt's ``args.py`` pattern).
This module imports no torch: the UI process reads it without loading the engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

BUILTIN_MODELS = ("builtin:shapes-sd", "builtin:tiny-sd", "builtin:tiny-sd-v", "builtin:tiny-sdxl")
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
QUANTIZE_MODES = ("none", "int8", "nf4")
NETWORK_TYPES = ("lora", "locon", "loha", "lokr", "adalora", "vera")  # each one a kind in trainer/networks/
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")
LOSS_TYPES = ("l2", "huber", "smooth_l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")
COMPILE_MODES = ("off", "regional", "full")
ATTENTION_KERNELS = ("auto", "flash", "efficient", "cudnn", "math")


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
        "Base model: `builtin:shapes-sd` (a small model trained here on pictures of simple shapes, 64 px), "
        "`builtin:tiny-sd` / `builtin:tiny-sd-v` / `builtin:tiny-sdxl` (tiny random-weight models; all builtins need "
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
    quantize: str = option(
        "none",
        "Store the frozen base quantized, LoRA trained in full precision on top (QLoRA-style): the UNet, and the "
        "text encoders when they are not trained. `int8`: bitsandbytes LLM.int8 on a CUDA GPU, else int8 "
        "weight-only (torchao) on any device; `nf4`: bitsandbytes 4-bit NormalFloat, CUDA only. Previews use the "
        "quantized model; the exported LoRA applies to the original base (see the README). lora/locon only.",
        choices=QUANTIZE_MODES,
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
        "not in diffusers. `adalora` (AdaLoRA): starts at `adalora_init_rank` and moves the rank budget to the "
        "layers that need it, ending at `rank` per layer on average. `vera` (VeRA): shared frozen random "
        "matrices with only per-layer scaling vectors trained, a tiny fraction of LoRA's parameters (Linear "
        "layers only; use a high `rank`, e.g. 256). Both are exported as a plain kohya LoRA every client loads.",
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
    adalora_init_rank: int = option(
        0, "AdaLoRA: rank every layer starts with (PEFT `init_r`); 0 means 1.5 × `rank`.", advanced=True
    )
    adalora_tinit: int = option(0, "AdaLoRA: warm-up steps at the initial rank before the budget shrinks (PEFT `tinit`).", advanced=True)
    adalora_tfinal: int = option(
        0, "AdaLoRA: final steps trained with the rank allocation fixed (PEFT `tfinal`); the budget shrinks in between.",
        advanced=True,
    )
    adalora_delta_t: int = option(1, "AdaLoRA: steps between two budget allocations (PEFT `deltaT`).", advanced=True)
    adalora_beta1: float = option(0.85, "AdaLoRA: EMA factor of the importance (sensitivity) scores, in (0, 1).", advanced=True)
    adalora_beta2: float = option(0.85, "AdaLoRA: EMA factor of the importance uncertainty, in (0, 1).", advanced=True)
    adalora_orth_reg_weight: float = option(
        0.5, "AdaLoRA: weight of the orthogonality regulariser added to the loss (PEFT `orth_reg_weight`; 0 off).",
        advanced=True,
    )
    rank_allocation: str = option(
        "uniform",
        "`uniform`: every layer gets `rank` (and the block settings). `importance`: a short probe "
        "(`importance_probe_steps` batches) measures each layer's loss gradient and gives the rank to the layers "
        "whose gradient has the most energy per parameter, under the parameter budget of `rank` everywhere; the "
        "file has one rank per layer (lora/locon only).",
        choices=("uniform", "importance"),
        advanced=True,
    )
    importance_probe_steps: int = option(4, "`rank_allocation = \"importance\"`: batches the probe measures.", advanced=True)
    importance_max_rank: int = option(
        0, "`rank_allocation = \"importance\"`: the most rank one layer may get; 0 means 4 × `rank`.", advanced=True
    )
    vera_projection_seed: int = option(
        0, "VeRA: seed of the shared frozen random matrices (PEFT `projection_prng_key`).", advanced=True
    )


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
    fused: bool = option(
        True, "AdamW: update every parameter in one fused kernel (torch's `fused=True`, on CUDA and CPU).", advanced=True
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
    device: str = option(
        "auto",
        "`auto` (GPU if present; under `accelerate launch` with several processes and no GPU: CPU processes), "
        "or `cpu` to force the CPU.",
        choices=("auto", "cpu"),
        advanced=True,
    )
    compile: str = option(
        "off",
        "torch.compile the UNet: `regional` compiles each repeated transformer block once (short warm-up, most "
        "of the gain), `full` the whole UNet (longest warm-up; the first steps are slow either way). Needs a C++ "
        "compiler on the CPU.",
        choices=COMPILE_MODES,
        advanced=True,
    )
    channels_last: bool = option(
        False, "Channels-last (NHWC) memory format for the UNet's convolutions. Measured slower on an H200 with SD 1.5 "
        "(0.68×, bench/results/h200-sd15-512.json): try it with bench/throughput.py before you keep it.", advanced=True
    )
    attention: str = option(
        "auto",
        "Attention kernel for torch's scaled-dot-product attention (diffusers' default processor): `auto` lets torch "
        "pick (the `started` event says which), or force `flash`, `efficient`, `cudnn` or `math`.",
        choices=ATTENTION_KERNELS,
        advanced=True,
    )
    allow_tf32: bool = option(
        True, "TF32 matmuls and convolutions for fp32 math on Ampere and newer GPUs (no effect elsewhere).", advanced=True
    )
    pin_memory: bool = option(
        True, "On a GPU: copy cached latents and text embeddings from pinned memory without waiting.", advanced=True
    )


@dataclass
class SamplingConfig:
    """Preview images during training."""

    every_n_steps: int = option(50, "Make previews every N steps (0: only at the end).")
    every_n_epochs: int = option(0, "Also make previews after every N epochs (0: off).", advanced=True)
    at_end: bool = option(True, "Make previews after the final step.")
    at_start: bool = option(
        True, "Make previews before the first step (sd-scripts `sample_at_first`): the base model's drawing, to compare."
    )
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


# Reading and writing (trainer.config_io), validation and presets live in their own modules (which import this
# one); their names stay part of this module's interface, resolved on first use (PEP 562) so that either side
# can be imported first.
_ELSEWHERE = {
    "validate": "trainer.config_validation",
    "PRESETS": "trainer.presets",
    "preset_config": "trainer.presets",
    **{name: "trainer.config_io" for name in (
        "config_to_dict", "config_from_dict", "upgrade_config_dict", "load_config", "dumps_config", "set_dotted",
    )},
}


def __getattr__(name: str) -> Any:
    if name not in _ELSEWHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_ELSEWHERE[name]), name)
