"""The training session: everything the step loop touches, and ``setup``, which builds it from a config.

Setup is a list of named helpers in the order that matters: the dataset is checked before any model loads,
the model loads (rank 0 first), class images are made before LoRA exists, the adapter is injected, caches are
filled, and only then do the optimizer and accelerate see the trained modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import tracking
from trainer.caches import LatentCache, TextCache
from trainer.checkpoint import (
    TrainProgress,
    latest_checkpoint,
    load_checkpoint,
)
from trainer.conditioning import set_clip_skip
from trainer.config import Config
from trainer.distributed import check_launch, effective_batch, resume_position, sharding_problem, wants_cpu
from trainer.ema import AdapterEMA, lora_parameters
from trainer.errors import UserFacingError
from trainer.events import EventWriter
from trainer.network import InjectedNetwork, inject_lora
from trainer.networks.adalora_allocation import RankAllocation, restore_allocation
from trainer.networks.rank_report import adapter_size_fields
from trainer.objective import Objective
from trainer.optim import build_lr_scheduler, build_optimizer, optimizer_warnings
from trainer.run_folder import (
    StopRequest,
)
from trainer.speed import SpeedPlan, apply_speed_settings
from trainer.validation import Validator, validation_split


@dataclass
class Session:
    """Everything the step loop touches, built once by ``setup``."""

    cfg: Config
    run_dir: Path
    accelerator: Any
    model: Any
    network: InjectedNetwork
    dataset: Any
    trained: dict[str, torch.nn.Module]  # component name -> module being trained (unwrapped)
    train_unet: Any  # the UNet as prepared by accelerate (DDP-wrapped on several GPUs)
    optimizer: Any
    lr_scheduler: Any
    weight_dtype: torch.dtype
    total_steps: int
    micro_batches_per_epoch: int
    latent_cache: LatentCache | None
    text_cache: TextCache | None
    events: EventWriter
    log: Any
    progress: TrainProgress = field(default_factory=TrainProgress)
    objective: Objective | None = None
    ema: AdapterEMA | None = None  # with `training.ema_decay`
    validator: Validator | None = None  # with a validation set, on rank 0
    speed: SpeedPlan = field(default_factory=SpeedPlan)  # the speed levers applied (trainer.speed)
    allocation: RankAllocation | None = None  # AdaLoRA's budget schedule (`network.type = "adalora"`)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device



def setup(cfg: Config, run_dir: Path, events: EventWriter, log: Any, resume: bool, stop: StopRequest | None = None) -> Session:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from trainer.data import build_train_dataset
    from trainer.models.loading import load_base_model

    # The dataset is checked before any model loads: a typo in a path should fail in a second.
    dataset = build_train_dataset(cfg.dataset, seed=cfg.training.seed)
    for warning in getattr(dataset, "warnings", []):
        log.warning(warning)
        events.emit("warning", message=warning)

    if (problem := sharding_problem()) is not None:  # before accelerate imports DeepSpeed or wraps for FSDP
        raise UserFacingError(problem)
    accelerator = Accelerator(
        mixed_precision=_mixed_precision(cfg), cpu=wants_cpu(cfg.training.device, torch.cuda.is_available()),
        **tracking.accelerator_kwargs(cfg, run_dir),
    )
    if (problem := check_launch(accelerator.num_processes, str(accelerator.distributed_type))) is not None:
        raise UserFacingError(problem)
    set_seed(cfg.training.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    log.info("loading base model %s", cfg.model.base)
    # Rank 0 loads first: a builtin model or any other first-use cache is built once, then read by the rest.
    if cfg.model.quantize != "none":
        from trainer.models.quantize import check_machine

        check_machine(cfg.model.quantize)  # a mode this machine cannot run is refused before the model loads
    with accelerator.main_process_first():
        model = load_base_model(cfg.model, dtype=weight_dtype)
    _move_to(model, accelerator.device)
    _quantize(cfg, model, weight_dtype, log)
    set_clip_skip(model, cfg.training.clip_skip)
    check_stop = stop.check if stop is not None else (lambda: None)
    check_stop()
    if cfg.dataset.class_images:
        from trainer.data.regularization import ensure_class_images

        # Generated before LoRA exists: they show the base model's prior.
        ensure_class_images(model, cfg, on_progress=lambda done, total: check_stop())
        dataset = build_train_dataset(cfg.dataset, seed=cfg.training.seed)
    dataset, validation_data = validation_split(cfg, dataset)  # held-out images leave the training set
    report_dataset_health(cfg, model, dataset, events, log)
    micro_per_epoch = _micro_batches_per_epoch(cfg, dataset, accelerator)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.training.gradient_accumulation_steps)
    total_steps = cfg.training.max_steps or cfg.training.epochs * steps_per_epoch
    _check_adalora_schedule(cfg, total_steps)
    ranks = _importance_ranks(cfg, model, dataset, accelerator, weight_dtype, run_dir, resume, log)
    network = inject_lora(model, cfg.network, total_steps=total_steps, ranks=ranks)
    for warning in network.warnings:
        log.warning(warning)
        events.emit("warning", message=warning)
    if cfg.network.init_from:
        _init_from_adapter(model, Path(cfg.network.init_from))
    trained = {name: mod for name, mod in model.component_modules().items() if name in network.adapted_modules}
    if cfg.training.gradient_checkpointing:
        _enable_gradient_checkpointing(trained)
    speed = apply_speed_settings(model.unet, cfg.training, accelerator.device, weight_dtype)

    latent_cache = _build_latent_cache(cfg, model, dataset, run_dir, log, check_stop)
    dataset.pixels_cached = latent_cache is not None
    text_cache = None
    if cfg.dataset.cache_text_embeddings and not cfg.network.train_text_encoder and dataset.static_captions:
        captions = [dataset.static_caption(i) for i in range(len(dataset.records))]
        text_cache = TextCache(model, captions, accelerator.device)

    optimizer = build_optimizer(cfg.optimizer, network.unet_params, network.text_encoder_params, accelerator.device, total_steps,
                                unet_lr_weights=network.unet_lr_weights)
    for warning in optimizer_warnings(cfg.optimizer):
        log.warning(warning)
        events.emit("warning", message=warning)
    lr_scheduler = build_lr_scheduler(cfg.optimizer, optimizer, total_steps)
    prepared = accelerator.prepare(*trained.values(), optimizer)
    train_unet, optimizer = prepared[0], prepared[-1]

    session = Session(
        cfg=cfg, run_dir=run_dir, accelerator=accelerator, model=model, network=network, dataset=dataset,
        trained=trained, train_unet=train_unet, optimizer=optimizer, lr_scheduler=lr_scheduler,
        weight_dtype=weight_dtype, total_steps=total_steps, micro_batches_per_epoch=micro_per_epoch,
        latent_cache=latent_cache, text_cache=text_cache, events=events, log=log,
        objective=Objective.from_config(cfg, model), speed=speed,
    )
    session.allocation = RankAllocation.for_components(trained)
    if cfg.training.ema_decay:
        tr = cfg.training
        session.ema = AdapterEMA(lora_parameters(trained), tr.ema_decay, tr.ema_warmup, tr.ema_on_cpu)
    if validation_data is not None and accelerator.is_main_process:
        session.validator = Validator(
            model, validation_data, session.objective.timestep_range, cfg.validation.timesteps, cfg.validation.seed
        )
    resumed_from = 0
    if resume and (ckpt := latest_checkpoint(run_dir)) is not None:
        if session.ema is not None:
            session.ema.restore(ckpt)
        session.progress = load_checkpoint(ckpt, trained, optimizer, lr_scheduler)
        if session.allocation is not None:
            restore_allocation(session.allocation, ckpt)
        _continue_position(session, events, log)
        resumed_from = session.progress.step
        log.info("resumed from %s (step %d)", ckpt, resumed_from)
    elif resume:
        log.info("no checkpoint in %s: starting from step 0", run_dir)
    log.info(
        "%d images (%d items per epoch), %d steps, %d trainable LoRA parameters on %s (%s), batch %s",
        len(dataset.records), len(dataset), total_steps, network.num_trainable,
        accelerator.device, accelerator.mixed_precision, _effective(cfg, accelerator).describe(),
    )
    events.emit(
        "started",
        total_steps=total_steps,
        epochs=math.ceil(total_steps / max(steps_per_epoch, 1)),
        num_images=len(dataset.records),
        num_batches_per_epoch=micro_per_epoch,
        resumed_from_step=resumed_from,
        base_model=cfg.model.base,
        family=model.family,
        prediction_type=model.prediction_type,
        device=str(accelerator.device),
        mixed_precision=accelerator.mixed_precision,
        trainable_parameters=network.num_trainable,
        items_per_epoch=len(dataset),
        validation_images=len(session.validator.items) if session.validator else 0,
        ema_decay=cfg.training.ema_decay,
        **adapter_size_fields(cfg.network, model),
        batch_size=cfg.training.batch_size,
        num_processes=accelerator.num_processes,
        gradient_accumulation_steps=cfg.training.gradient_accumulation_steps,
        effective_batch_size=_effective(cfg, accelerator).total,
        speed=speed.event_fields(),
    )
    session.progress.num_processes = accelerator.num_processes
    if accelerator.is_main_process:
        tracking.start(accelerator, cfg)
    return session


def _effective(cfg: Config, accelerator: Any) -> Any:
    return effective_batch(cfg.training.batch_size, accelerator.num_processes, cfg.training.gradient_accumulation_steps)


def _continue_position(session: Session, events: EventWriter, log: Any) -> None:
    """A checkpoint written by another number of processes: map its data position and say what changed."""
    progress, acc, tr = session.progress, session.accelerator, session.cfg.training
    position = resume_position(
        progress.batch_in_epoch, progress.num_processes, acc.num_processes, tr.batch_size, tr.gradient_accumulation_steps
    )
    progress.batch_in_epoch = min(position.batch_in_epoch, session.micro_batches_per_epoch)
    if position.message:
        log.warning(position.message)
        events.emit("warning", message=position.message)


def _importance_ranks(cfg: Config, model: Any, dataset: Any, accelerator: Any, weight_dtype: torch.dtype,
                      run_dir: Path, resume: bool, log: Any) -> dict[tuple[str, str], int] | None:
    """``network.rank_allocation = "importance"``: each layer's rank from a short gradient probe (or the run's
    saved allocation on resume); the seed is set again afterwards so the probe shifts none of the run's draws."""
    if cfg.network.rank_allocation != "importance":
        return None
    import types

    from accelerate.utils import set_seed

    from trainer.network import plan_components
    from trainer.networks.importance import importance_ranks

    plans = {name: plan for name, (_, plan) in plan_components(model, cfg.network).items()}
    probe = types.SimpleNamespace(cfg=cfg, model=model, dataset=dataset, device=accelerator.device,
                                  objective=Objective.from_config(cfg, model), weight_dtype=weight_dtype)
    log.info("importance probe: %d batch(es) over %d layers", cfg.network.importance_probe_steps,
             sum(len(p.layers) for p in plans.values()))
    allocation = importance_ranks(probe, plans, run_dir, resume)
    set_seed(cfg.training.seed)
    log.info("rank allocation: %d of %d parameters of the uniform budget used", allocation.spent, allocation.budget)
    return allocation.ranks


def _quantize(cfg: Config, model: Any, weight_dtype: torch.dtype, log: Any) -> None:
    """``model.quantize``: the frozen components stored quantized (``models/quantize.py``), before LoRA exists."""
    if cfg.model.quantize == "none":
        return
    from trainer.models.quantize import quantize_base, quantized_weight_bytes

    modules = model.component_modules()
    before = {n: quantized_weight_bytes(m) for n, m in modules.items()}
    names = quantize_base(model, cfg.model.quantize, cfg.network.train_text_encoder, weight_dtype)
    for name in names:
        log.info("%s quantized (%s): %.1f MB -> %.1f MB", name, cfg.model.quantize, before[name] / 2**20,
                 quantized_weight_bytes(modules[name]) / 2**20)


def _check_adalora_schedule(cfg: Config, total_steps: int) -> None:
    """AdaLoRA's schedule against the run's real length (``epochs`` runs are only known here)."""
    net = cfg.network
    if net.type == "adalora" and net.adalora_tinit + net.adalora_tfinal >= total_steps:
        from trainer.networks.settings import schedule_problem

        raise UserFacingError(schedule_problem(net, total_steps))


def _mixed_precision(cfg: Config) -> str:
    mp = cfg.training.mixed_precision
    if mp == "fp16" and (cfg.training.device == "cpu" or not torch.cuda.is_available()):
        raise UserFacingError(
            "`training.mixed_precision = \"fp16\"` needs a CUDA GPU; on the CPU use \"no\" (or \"bf16\")"
        )
    return mp


def _move_to(model: Any, device: torch.device) -> None:
    for module in (model.unet, model.vae, *model.text_encoders):
        module.to(device)


def _init_from_adapter(model: Any, path: Path) -> None:
    from trainer.export import load_adapter_weights

    if not path.is_file():
        raise UserFacingError(f"`network.init_from` file not found: {path}")
    load_adapter_weights(model, path)


def _enable_gradient_checkpointing(trained: dict[str, torch.nn.Module]) -> None:
    for name, module in trained.items():
        if name == "unet":
            module.enable_gradient_checkpointing()
        else:
            module.gradient_checkpointing_enable()


def _build_latent_cache(
    cfg: Config, model: Any, dataset: Any, run_dir: Path, log: Any, check_stop: Any = None
) -> LatentCache | None:
    mode = cfg.dataset.cache_latents
    if mode == "off":
        return None
    if not dataset.cacheable_latents:
        log.info("latents not cached: random crop or flip changes the pixels every epoch")
        return None
    from tqdm.auto import tqdm

    return LatentCache(
        model, dataset, mode, run_dir / "cache" / "latents", cfg.training.seed, progress=tqdm, check_stop=check_stop
    )


def _micro_batches_per_epoch(cfg: Config, dataset: Any, accelerator: Any) -> int:
    from trainer.data import epoch_batches

    batches = epoch_batches(dataset, cfg.training.batch_size, cfg.training.seed, 0)
    return max(len(batches) // accelerator.num_processes, 1)


def report_dataset_health(cfg: Config, model: Any, dataset: Any, events: EventWriter, log: Any) -> None:
    """The health report before every run: its findings become warnings, the bucket table a log block."""
    from trainer.data.health import health_report

    report = health_report(cfg.dataset.path, cfg.dataset, model.tokenizer)
    events.emit("dataset", report=report.to_dict(), buckets=dataset.bucket_table().to_dict())
    log.info("dataset health:\n%s", report.format())
    log.info("buckets:\n%s", dataset.bucket_table().format())
