"""Adapter injection through PEFT: which layers get an adapter, and which parameters train.

PEFT wraps each target layer as ``base_layer`` + the adapter (``lora_A``/``lora_B`` with B = 0 for LoRA;
LoHa/LoKr start at ΔW = 0 too), so the adapted model starts identical to the base. What each adapter
kind is lives in ``trainer/networks/``; here we choose targets and collect parameters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from trainer.config import (
    TEXT_ENCODER_ATTENTION_TARGETS,
    TEXT_ENCODER_MLP_TARGETS,
    UNET_TARGET_PRESETS,
    NetworkConfig,
)
from trainer.errors import UserFacingError
from trainer.networks import ADAPTER_PARAM_PREFIXES, is_adapter_param

ADAPTER_NAME = "default"


@dataclass
class InjectedNetwork:
    """Where LoRA went: trainable parameters per component, the module names adapted, and warnings
    about the injection for the training log (one sentence each, e.g. a rank above some layers' width)."""

    unet_params: list[Any]
    text_encoder_params: list[Any]
    adapted_modules: dict[str, list[str]]
    warnings: list[str] = field(default_factory=list)
    # Per-block learning-rate weight of each of ``unet_params`` (``network.*_lr_weight``; empty: all 1).
    unet_lr_weights: list[float] = field(default_factory=list)

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.unet_params + self.text_encoder_params)


def unet_target_modules(cfg: NetworkConfig) -> list[str]:
    if cfg.unet_targets == "custom":
        return list(cfg.unet_target_modules)
    return list(UNET_TARGET_PRESETS[cfg.unet_targets])


def text_encoder_target_modules(cfg: NetworkConfig) -> list[str]:
    return TEXT_ENCODER_ATTENTION_TARGETS + (TEXT_ENCODER_MLP_TARGETS if cfg.text_encoder_mlp else [])


def plan_components(model: Any, cfg: NetworkConfig, train_text_encoder: bool | None = None) -> dict[str, tuple[Any, Any]]:
    """Component name -> (module, ``ComponentPlan``): the layers that get an adapter, with rank/alpha/lr weight."""
    from trainer.networks.plan import plan_text_encoder, plan_unet

    train_te = cfg.train_text_encoder if train_text_encoder is None else train_text_encoder
    _check_targets_exist("unet", model.unet, unet_target_modules(cfg))
    plans = {"unet": (model.unet, plan_unet(model, cfg, unet_target_modules(cfg)))}
    if train_te:
        for name, module in model.component_modules().items():
            if name.startswith("text_encoder"):
                _check_targets_exist(name, module, text_encoder_target_modules(cfg))
                plans[name] = (module, plan_text_encoder(module, cfg, text_encoder_target_modules(cfg)))
    return plans


def inject_lora(model: Any, cfg: NetworkConfig, train_text_encoder: bool | None = None,
                total_steps: int = 0, ranks: dict[tuple[str, str], int] | None = None) -> InjectedNetwork:
    """Add the adapter of ``network.type`` to the UNet (and text encoders when trained) of a ``BaseModel``.

    Every kind goes through PEFT (``trainer/networks/``): the layers and their ranks, alphas and
    learning-rate weights are planned first (``networks.plan``), then one PEFT config per component
    adds them. Raises UserFacingError naming ``network.unet_target_modules`` when a target matches no
    layer, or the block setting whose length does not fit the UNet. ``total_steps`` is the run's length, which
    AdaLoRA's budget schedule needs (``networks/adalora.py``); ``ranks``, by (component, layer), replace the
    planned ranks (``network.rank_allocation = "importance"``: ``networks/importance.py``).
    """
    from trainer.networks import kind

    adapter_kind = kind(cfg.type)
    plans = plan_components(model, cfg, train_text_encoder)
    for (component, name), rank in (ranks or {}).items():
        plans[component][1].layers[name].rank = rank
    adapted: dict[str, list[str]] = {}
    params: dict[str, list[Any]] = {}
    weights: list[float] = []
    warnings: list[str] = []
    for name, (module, plan) in plans.items():
        if getattr(adapter_kind, "linear_only", False):
            warnings.extend(_skip_convolutions(name, plan, adapter_kind.name))
        if not plan.layers:
            raise UserFacingError(
                f"`network.block_dims`: every {name} layer was left without an adapter (rank or learning-rate weight 0 "
                "in every block); give at least one block a positive rank"
            )
        extra = {"total_steps": total_steps} if getattr(adapter_kind, "needs_total_steps", False) else {}
        config = adapter_kind.peft_config(cfg, sorted(plan.layers), plan.layers, **extra)
        getattr(adapter_kind, "inject", _add_adapter)(module, config)
        layers = adapter_layers(module)
        adapted[name] = list(layers)
        if adapter_kind.name == "lora":
            warnings.extend(_rank_above_width(name, module, adapted[name], cfg.rank))
        params[name] = lora_parameters(module)
        if name == "unet":
            weights = _param_lr_weights(module, plan.layers)
        # Trainable adapter weights always live in fp32, whatever the base weights' dtype
        # (diffusers' cast_training_params): fp16 Adam updates underflow.
        for p in params[name]:
            p.data = p.data.float()
    te_params = [p for n, ps in params.items() if n != "unet" for p in ps]
    return InjectedNetwork(unet_params=params["unet"], text_encoder_params=te_params, adapted_modules=adapted,
                           warnings=warnings, unet_lr_weights=weights)


def _skip_convolutions(component: str, plan: Any, kind_name: str) -> list[str]:
    """Drop the convolutions from a plan for a kind that adapts Linear layers only (VeRA); one note."""
    convs = sorted(n for n, p in plan.layers.items() if len(p.shape) == 4)
    for n in convs:
        del plan.layers[n]
    if not convs:
        return []
    return [f"`network.type = \"{kind_name}\"` adapts Linear layers only: {len(convs)} convolution(s) in the "
            f"{component} targets were skipped (e.g. {convs[0]}); they keep their base weights"]


def _add_adapter(module: Any, config: Any) -> None:
    """diffusers' and transformers' own PEFT entry point (a kind with shared state, VeRA, brings its own)."""
    module.add_adapter(config, adapter_name=ADAPTER_NAME)


def adapter_layers(module: Any) -> dict[str, Any]:
    """PEFT layers (of any kind) carrying our adapter, by their path in ``module``."""
    from trainer.networks import kind_of_layer

    return {name: layer for name, layer in module.named_modules()
            if kind_of_layer(layer) is not None and ADAPTER_NAME in getattr(layer, "r", {})}


def _param_lr_weights(module: Any, plans: dict[str, Any]) -> list[float]:
    """The learning-rate weight of each of ``lora_parameters(module)``, in the same order: its layer's plan
    (the layer is the path before the first adapter part, e.g. ``….to_q`` of ``….to_q.lora_A.default.weight``)."""
    out = []
    for name, _ in module.named_parameters():
        if is_adapter_param(name):
            parts = name.split(".")
            first = next(i for i, part in enumerate(parts) if part.startswith(ADAPTER_PARAM_PREFIXES))
            layer = ".".join(parts[:first])
            out.append(plans[layer].lr_weight if layer in plans else 1.0)
    return out


def lora_parameters(module: Any) -> list[Any]:
    """The adapter's parameters (any kind), marked trainable; everything else in the module stays frozen."""
    out = []
    for name, param in module.named_parameters():
        is_adapter = is_adapter_param(name)
        param.requires_grad_(is_adapter)
        if is_adapter:
            out.append(param)
    return out


def _rank_above_width(component: str, module: Any, names: list[str], rank: int) -> list[str]:
    """A warning when ``rank`` exceeds min(in, out) of some adapted layers.

    ΔW = B·A with A (rank, in) and B (out, rank) has rank at most min(in, out, rank), so rank beyond a
    layer's width adds parameters and compute that cannot change what the layer learns. A conv's ΔW is
    (out, in·kh·kw) once flattened, which is what the weight's first row counts.
    """
    widths: Counter[int] = Counter()
    for name in names:
        layer = module.get_submodule(name)
        if layer.r[ADAPTER_NAME] != rank:  # block-wise or conv ranks: not `network.rank`
            continue
        weight = layer.get_base_layer().weight  # (out, in) or (out, in, kh, kw)
        width = min(weight.shape[0], weight[0].numel())
        if width < rank:
            widths[width] += 1
    if not widths:
        return []
    over = sum(widths.values())
    per_width = ", ".join(f"{w} ({n} layer{'s' if n > 1 else ''})" for w, n in sorted(widths.items()))
    effective = "/".join(str(w) for w in sorted(widths))
    return [
        f"`network.rank` {rank} is above the width of {over} of the {len(names)} LoRA layers in the {component} "
        f"(min(in, out): {per_width}); the rank of a LoRA update ΔW = B·A cannot exceed min(in, out), so those "
        f"layers train at effective rank {effective}, not {rank}, and the extra rank only makes the adapter bigger "
        f"and slower. `network.rank` {min(widths)} or less avoids it."
    ]


def _check_targets_exist(component: str, module: Any, targets: list[str]) -> None:
    names = [n for n, _ in module.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        field = "network.unet_target_modules" if component == "unet" else "network.train_text_encoder"
        raise UserFacingError(
            f"`{field}`: no layer named {', '.join(repr(m) for m in missing)} in the {component}; "
            "use diffusers module names such as to_q, to_k, to_v, to_out.0, proj_in, ff.net.2"
        )
