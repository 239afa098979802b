"""The safetensors header of an exported adapter: ``ss_*`` training facts, ``sshs_*`` hashes, ``modelspec.*``.

Keys and value formats follow sd-scripts (``train_network.py`` builds ``ss_*``, every value a string;
``networks/lora.py`` adds the hashes; ``library/sai_model_spec.py`` the ``modelspec.*`` keys), because
AUTOMATIC1111, its additional-networks extension and civitai read exactly these.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import Config

SS_NETWORK_MODULE = "networks.lora"  # sd-scripts' LoRA module; A1111 uses it to pick the network type
LYCORIS_NETWORK_MODULE = "lycoris.kohya"  # what LyCORIS writes (sd-scripts loads LyCORIS as this module)
BASE_MODEL_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
DYNAMIC_TYPES = ("adalora",)  # network types whose file has one rank per module


@dataclass
class TrainingMetadata:
    """What only the training loop knows at export time; everything else comes from the config.

    ``num_train_images`` counts images × repeats, as sd-scripts does. ``tag_frequency`` and
    ``dataset_dirs`` are keyed by image folder name (``{"img": {"sks": 10, "dog": 3}}`` and
    ``{"img": {"n_repeats": 10, "img_count": 12}}``).
    """

    steps: int = 0
    epoch: int = 0
    max_train_steps: int = 0
    num_epochs: int = 0
    num_train_images: int = 0
    num_reg_images: int = 0
    num_batches_per_epoch: int = 0
    tag_frequency: dict[str, dict[str, int]] = field(default_factory=dict)
    dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)
    training_started_at: float = 0.0  # unix time
    training_finished_at: float | None = None  # None: the time of export
    session_id: int = 0
    base_model_name: str = ""  # empty: config's model.base
    optimizer: str = ""  # e.g. "torch.optim.AdamW(weight_decay=0.01)"; empty: config's optimizer.name
    validation_loss: float | None = None  # the validation loss of these weights, when the run validates
    num_processes: int = 1  # processes that trained it (accelerate launch); part of the total batch size

    @classmethod
    def from_session(cls, s: Any) -> TrainingMetadata:
        """Collect the metadata from the training loop's ``Session``."""
        records = list(getattr(s.dataset, "records", []) or [])
        train = [(i, r) for i, r in enumerate(records) if not getattr(r, "is_regularization", False)]
        steps_per_epoch = max(1, -(-s.micro_batches_per_epoch // s.cfg.training.gradient_accumulation_steps))
        repeats = [getattr(r, "repeats", 1) for r in records]
        num_train = sum(getattr(r, "repeats", 1) for _, r in train)
        return cls(
            steps=s.progress.step,
            epoch=s.progress.epoch,
            max_train_steps=s.total_steps,
            num_epochs=-(-s.total_steps // steps_per_epoch),
            num_train_images=num_train,
            num_reg_images=sum(repeats) - num_train,
            num_batches_per_epoch=s.micro_batches_per_epoch,
            tag_frequency=tag_frequency([(r.path, _caption(s, i, r)) for i, r in train]),
            dataset_dirs=dataset_dirs([r for _, r in train]),
            training_started_at=getattr(s, "started_at", None) or _started_at(Path(s.run_dir)),
            session_id=int(s.cfg.training.seed),
            validation_loss=_validation_loss(s),
            num_processes=int(getattr(getattr(s, "accelerator", None), "num_processes", 1) or 1),
        )


def _validation_loss(s: Any) -> float | None:
    """The validator's result for the weights being exported (it validates before each checkpoint and the end)."""
    last = getattr(getattr(s, "validator", None), "last", None)
    return last.loss if last is not None and last.step == s.progress.step else None


def _caption(s: Any, index: int, record: Any) -> str:
    """The caption as trained before per-step randomness (the dataset's own composition when it has one)."""
    if hasattr(s.dataset, "static_caption"):
        return s.dataset.static_caption(index)
    from trainer.data.captions import compose_caption

    trigger = getattr(record, "trigger", "") or s.cfg.dataset.trigger_word
    return compose_caption(record.caption, trigger, getattr(record, "class_word", "") or s.cfg.dataset.class_word)


def tag_frequency(captions: list[tuple[Path, str]]) -> dict[str, dict[str, int]]:
    """Per image folder, how many images' captions hold each comma-separated tag (sd-scripts' count)."""
    from trainer.data.captions import split_tags

    out: dict[str, dict[str, int]] = {}
    for path, caption in captions:
        counts = out.setdefault(Path(path).parent.name, {})
        for tag in split_tags(caption):
            counts[tag] = counts.get(tag, 0) + 1
    return out


def dataset_dirs(records: list[Any]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in records:
        entry = out.setdefault(Path(r.path).parent.name, {"n_repeats": getattr(r, "repeats", 1), "img_count": 0})
        entry["img_count"] += 1
    return out


def _started_at(run_dir: Path) -> float:
    """The time of the run's first ``started`` event (the loop writes it before step 1)."""
    try:
        with open(run_dir / "events.jsonl", encoding="utf-8") as handle:
            for line in handle:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("type") == "started":
                    return float(event["time"])
    except OSError:
        pass
    return time.time()


def base_model_version(family: str, prediction_type: str) -> str:
    if family == "sd2" and prediction_type == "v_prediction":
        return "sd_v2_v"
    return BASE_MODEL_VERSIONS.get(family, family)


def modelspec_architecture(family: str, prediction_type: str) -> str:
    """sai_model_spec's architecture id with the ``/lora`` adapter suffix."""
    if family == "sdxl":
        arch = "stable-diffusion-xl-v1-base"
    elif family == "sd2":
        arch = "stable-diffusion-v2-768-v" if prediction_type == "v_prediction" else "stable-diffusion-v2-512"
    else:
        arch = "stable-diffusion-v1"
    return f"{arch}/lora"


def training_metadata(cfg: Config, model: Any, meta: TrainingMetadata) -> dict[str, str]:
    """The ``ss_*`` and ``modelspec.*`` entries (all strings), before the hashes are added."""
    net, opt, tr, ds = cfg.network, cfg.optimizer, cfg.training, cfg.dataset
    finished = meta.training_finished_at if meta.training_finished_at is not None else time.time()
    te_lr = opt.text_encoder_lr if net.train_text_encoder else None
    ss: dict[str, Any] = {
        "ss_session_id": meta.session_id,
        "ss_training_started_at": meta.training_started_at,
        "ss_training_finished_at": finished,
        "ss_output_name": cfg.run.name,
        "ss_learning_rate": opt.learning_rate,
        "ss_unet_lr": opt.learning_rate,
        "ss_text_encoder_lr": te_lr,
        "ss_num_train_images": meta.num_train_images,
        "ss_num_reg_images": meta.num_reg_images,
        "ss_num_batches_per_epoch": meta.num_batches_per_epoch,
        "ss_num_epochs": meta.num_epochs,
        "ss_epoch": meta.epoch,
        "ss_steps": meta.steps,
        "ss_max_train_steps": meta.max_train_steps,
        "ss_batch_size_per_device": tr.batch_size,
        # sd-scripts' train_network.py: train_batch_size × num_processes × gradient_accumulation_steps.
        "ss_total_batch_size": tr.batch_size * meta.num_processes * tr.gradient_accumulation_steps,
        "ss_gradient_checkpointing": tr.gradient_checkpointing,
        "ss_gradient_accumulation_steps": tr.gradient_accumulation_steps,
        "ss_lr_warmup_steps": round(opt.warmup_ratio * meta.max_train_steps) if opt.warmup_ratio else opt.warmup_steps,
        "ss_lr_scheduler": opt.scheduler,
        "ss_optimizer": meta.optimizer or opt.name,
        "ss_max_grad_norm": opt.max_grad_norm,
        "ss_network_module": network_module(net),
        "ss_network_dim": network_dim(net)[0],
        "ss_network_alpha": network_dim(net)[1],
        "ss_network_dropout": net.dropout,
        "ss_network_args": json.dumps(_network_args(cfg)),
        "ss_mixed_precision": tr.mixed_precision,
        "ss_v2": model.family == "sd2",
        "ss_base_model_version": base_model_version(model.family, model.prediction_type),
        "ss_sd_model_name": meta.base_model_name or Path(cfg.model.base).name or cfg.model.base,
        "ss_resolution": f"({ds.resolution}, {ds.resolution})",
        "ss_seed": tr.seed,
        "ss_noise_offset": tr.noise_offset or None,
        "ss_min_snr_gamma": tr.min_snr_gamma or None,
        "ss_clip_skip": tr.clip_skip if model.family != "sdxl" else None,
        "ss_ip_noise_gamma": tr.ip_noise_gamma or None,
        "ss_multires_noise_iterations": tr.multires_noise_iterations or None,
        "ss_multires_noise_discount": tr.multires_noise_discount if tr.multires_noise_iterations else None,
        "ss_debiased_estimation": tr.debiased_estimation,
        "ss_loss_type": tr.loss_type,
        "ss_huber_schedule": tr.huber_schedule if tr.loss_type != "l2" else None,
        "ss_huber_c": tr.huber_c if tr.loss_type != "l2" else None,
        "ss_min_timestep": tr.min_timestep,
        "ss_max_timestep": tr.max_timestep or None,
        "ss_timestep_sampling": tr.timestep_sampling,
        "ss_ema_decay": tr.ema_decay or None,
        "ss_keep_tokens": ds.keep_tokens,
        "ss_shuffle_caption": ds.shuffle_captions,
        "ss_flip_aug": ds.flip,
        "ss_random_crop": ds.crop == "random",
        "ss_caption_dropout_rate": ds.caption_dropout,
        "ss_cache_latents": ds.cache_latents != "off",
        "ss_enable_bucket": ds.bucketing,
        "ss_min_bucket_reso": ds.bucket_min,
        "ss_max_bucket_reso": ds.bucket_max,
        "ss_bucket_no_upscale": ds.bucket_no_upscale,
        "ss_prior_loss_weight": ds.prior_loss_weight,
        "ss_tag_frequency": json.dumps(meta.tag_frequency),
        "ss_dataset_dirs": json.dumps(meta.dataset_dirs),
        "ss_training_comment": "lora-studio",
    }
    if meta.validation_loss is not None:
        ss["ss_validation_loss"] = round(meta.validation_loss, 6)
        ss["ss_validation_seed"] = cfg.validation.seed
        ss["ss_validation_split"] = cfg.validation.fraction
    if is_dynamic(net):
        from trainer.networks.rank_report import rank_report

        ss["lora_studio_rank_per_block"] = json.dumps(rank_report(model).blocks)
    # sd-scripts writes str(value) for every entry, so None becomes "None" and bools "True"/"False".
    out = {k: str(v) for k, v in ss.items()}
    out.update(modelspec(cfg, model, meta.training_started_at))
    return out


def is_dynamic(net: Any) -> bool:
    """A network whose file has one rank per module: AdaLoRA, or ranks allocated by importance."""
    return net.type in DYNAMIC_TYPES or getattr(net, "rank_allocation", "uniform") == "importance"


def network_dim(net: Any) -> tuple[Any, Any]:
    """``ss_network_dim`` / ``ss_network_alpha``. A file with one rank per module has no single dim: sd-scripts'
    ``networks/resize_lora.py`` writes ``"Dynamic"`` for both after a dynamic resize, and so do we (AdaLoRA).
    VeRA's file has rank r everywhere with alpha = r (its scale folded in)."""
    if is_dynamic(net):
        return "Dynamic", "Dynamic"
    if net.type == "vera":
        return net.rank, float(net.rank)
    return net.rank, net.alpha


def network_module(net: Any) -> str:
    """sd-scripts' network module: its own ``networks.lora`` for LoRA/LoCon (``conv_dim``), LyCORIS's
    ``lycoris.kohya`` for LoHa, LoKr and DoRA (sd-scripts' LoRA has no DoRA; LyCORIS's ``dora_wd`` has)."""
    if net.type in ("loha", "lokr") or net.use_dora:
        return LYCORIS_NETWORK_MODULE
    return SS_NETWORK_MODULE


def _network_args(cfg: Config) -> dict[str, str]:
    """``ss_network_args`` as sd-scripts and LyCORIS record their ``--network_args``: every value a string,
    with LyCORIS's names (``algo``, ``conv_dim``, ``conv_alpha``, ``factor``, ``dora_wd``, ``rs_lora``) and
    sd-scripts' block-wise ones; lora-studio's own target settings beside them."""
    net = cfg.network
    args = {"unet_targets": net.unet_targets, "train_text_encoder": str(net.train_text_encoder)}
    if network_module(net) == LYCORIS_NETWORK_MODULE:
        args["algo"] = "locon" if net.type in ("lora", "locon") else net.type
    args.update(_method_args(net))
    if net.type == "locon" or net.conv_rank > 0:
        args["conv_dim"] = str(net.conv_rank or net.rank)
        args["conv_alpha"] = str(net.conv_alpha or net.alpha)
    if net.type == "lokr":
        args["factor"] = str(net.lokr_factor)
    if net.use_dora and cfg.export.dora_layout == "full":
        args["algo"] = "full"  # each layer's whole ΔW (``diff`` keys), trained as DoRA
        args["dora_wd"] = "True"
    elif net.use_dora:
        args["dora_wd"] = "True"
        args["wd_on_output"] = "True"  # LyCORIS kohya.py: magnitude per output channel, as PEFT trains it
    if net.rslora:
        args["rs_lora"] = "True"
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                "down_lr_weight", "mid_lr_weight", "up_lr_weight"):
        if getattr(net, key).strip():
            args[key] = getattr(net, key).strip()
    if net.unet_targets == "custom":
        args["unet_target_modules"] = ",".join(net.unet_target_modules)
    if net.train_text_encoder:
        args["text_encoder_mlp"] = str(net.text_encoder_mlp)
    return args


def _method_args(net: Any) -> dict[str, str]:
    """How a plain-LoRA file was trained when the method was not LoRA: AdaLoRA's schedule, VeRA's seed."""
    if net.type == "adalora":
        from trainer.networks.adalora import init_rank

        return {"method": "adalora", "init_r": str(init_rank(net)), "target_r": str(net.rank),
                "tinit": str(net.adalora_tinit), "tfinal": str(net.adalora_tfinal), "deltaT": str(net.adalora_delta_t),
                "beta1": str(net.adalora_beta1), "beta2": str(net.adalora_beta2),
                "orth_reg_weight": str(net.adalora_orth_reg_weight)}
    if net.type == "vera":
        return {"method": "vera", "projection_prng_key": str(net.vera_projection_seed)}
    if net.rank_allocation == "importance":
        return {"rank_allocation": "importance", "importance_probe_steps": str(net.importance_probe_steps),
                "rank_budget": f"{net.rank} per layer"}
    return {}


def modelspec(cfg: Config, model: Any, timestamp: float) -> dict[str, str]:
    """``modelspec.*`` entries as sd-scripts' ``sai_model_spec.build_metadata`` writes them for a LoRA."""
    size = cfg.dataset.resolution
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": modelspec_architecture(model.family, model.prediction_type),
        # sd-scripts: an SD 1.x/2.x LoRA is "diffusers", an SDXL LoRA the Stability AI implementation.
        "modelspec.implementation": (
            "https://github.com/Stability-AI/generative-models" if model.family == "sdxl" else "diffusers"
        ),
        "modelspec.title": cfg.run.name,
        "modelspec.resolution": f"{size}x{size}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(timestamp)).isoformat(),
        "modelspec.prediction_type": "v" if model.prediction_type == "v_prediction" else "epsilon",
        "modelspec.trigger_phrase": cfg.dataset.trigger_word,
    }


# ---------------------------------------------------------------------------------------------
# Hashes, as sd-scripts' library/train_util.py computes them for sd-webui-additional-networks.


def addnet_hash_safetensors(data: io.BytesIO) -> str:
    """sha256 of everything after the safetensors header: the tensor bytes only."""
    digest = hashlib.sha256()
    data.seek(0)
    header_len = int.from_bytes(data.read(8), "little")
    data.seek(header_len + 8)
    for chunk in iter(lambda: data.read(1024 * 1024), b""):
        digest.update(chunk)
    return digest.hexdigest()


def addnet_hash_legacy(data: io.BytesIO) -> str:
    """The old A1111 model hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits."""
    digest = hashlib.sha256()
    data.seek(0x100000)
    digest.update(data.read(0x10000))
    return digest.hexdigest()[:8]


def safetensors_hashes(tensors: dict[str, Any], metadata: dict[str, str]) -> dict[str, str]:
    """``sshs_model_hash`` / ``sshs_legacy_hash`` over the tensors serialised with the ``ss_*`` entries only.

    sd-scripts keeps only ``ss_*`` keys for this so that user-edited metadata does not change the hash.
    """
    import safetensors.torch

    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    data = io.BytesIO(safetensors.torch.save(tensors, ss_only))
    return {"sshs_model_hash": addnet_hash_safetensors(data), "sshs_legacy_hash": addnet_hash_legacy(data)}
