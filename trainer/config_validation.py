"""``validate``: every problem in a config as a sentence that names the field and says how to fix it.

It collects all problems and the caller raises once (litgpt's pattern); the pre-flight check, the CLI and
the UI all call it. Imports no torch.
"""

from __future__ import annotations

import math
from pathlib import Path

from trainer.config import BUILTIN_MODELS, Config, field_infos


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
    from trainer.models.quantize_rules import quantize_problems  # torch-free

    p.extend(quantize_problems(config))
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
    if tr.device == "cpu" and tr.attention in ("efficient", "cudnn"):
        p.append(f"`training.attention = \"{tr.attention}\"` is a CUDA kernel; on the CPU use \"auto\", \"flash\" or \"math\"")
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


