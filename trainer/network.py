"""LoRA injection through PEFT: which layers get an adapter, and which parameters train.

PEFT wraps each target ``nn.Linear`` as ``base_layer`` + ``lora_A``/``lora_B`` with B = 0 at init, so
the adapted model starts identical to the base. We only choose targets and collect parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.config import (
    TEXT_ENCODER_ATTENTION_TARGETS,
    TEXT_ENCODER_MLP_TARGETS,
    UNET_TARGET_PRESETS,
    NetworkConfig,
)
from trainer.errors import UserFacingError

ADAPTER_NAME = "default"


@dataclass
class InjectedNetwork:
    """Where LoRA went: trainable parameters per component and the module names adapted."""

    unet_params: list[Any]
    text_encoder_params: list[Any]
    adapted_modules: dict[str, list[str]]

    @property
    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.unet_params + self.text_encoder_params)


def unet_target_modules(cfg: NetworkConfig) -> list[str]:
    if cfg.unet_targets == "custom":
        return list(cfg.unet_target_modules)
    return list(UNET_TARGET_PRESETS[cfg.unet_targets])


def text_encoder_target_modules(cfg: NetworkConfig) -> list[str]:
    return TEXT_ENCODER_ATTENTION_TARGETS + (TEXT_ENCODER_MLP_TARGETS if cfg.text_encoder_mlp else [])


def lora_config(cfg: NetworkConfig, targets: list[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        init_lora_weights=True,  # A ~ kaiming-uniform, B = 0: identity at init
        target_modules=targets,
    )


def inject_lora(model: Any, cfg: NetworkConfig, train_text_encoder: bool | None = None) -> InjectedNetwork:
    """Add a LoRA adapter to the UNet (and text encoders when trained) of a ``BaseModel``.

    Raises UserFacingError naming ``network.unet_target_modules`` when a target matches no layer.
    """
    train_te = cfg.train_text_encoder if train_text_encoder is None else train_text_encoder
    components = {"unet": (model.unet, unet_target_modules(cfg))}
    if train_te:
        for name, module in model.component_modules().items():
            if name.startswith("text_encoder"):
                components[name] = (module, text_encoder_target_modules(cfg))
    adapted: dict[str, list[str]] = {}
    params: dict[str, list[Any]] = {}
    for name, (module, targets) in components.items():
        _check_targets_exist(name, module, targets)
        module.add_adapter(lora_config(cfg, targets), adapter_name=ADAPTER_NAME)
        adapted[name] = [n for n, m in module.named_modules() if hasattr(m, "lora_A") and ADAPTER_NAME in m.lora_A]
        params[name] = lora_parameters(module)
        # Trainable LoRA weights always live in fp32, whatever the base weights' dtype
        # (diffusers' cast_training_params): fp16 Adam updates underflow.
        for p in params[name]:
            p.data = p.data.float()
    te_params = [p for n, ps in params.items() if n != "unet" for p in ps]
    return InjectedNetwork(unet_params=params["unet"], text_encoder_params=te_params, adapted_modules=adapted)


def lora_parameters(module: Any) -> list[Any]:
    """The adapter's parameters, marked trainable; everything else in the module stays frozen."""
    out = []
    for name, param in module.named_parameters():
        is_lora = "lora_" in name
        param.requires_grad_(is_lora)
        if is_lora:
            out.append(param)
    return out


def _check_targets_exist(component: str, module: Any, targets: list[str]) -> None:
    names = [n for n, _ in module.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        field = "network.unet_target_modules" if component == "unet" else "network.train_text_encoder"
        raise UserFacingError(
            f"`{field}`: no layer named {', '.join(repr(m) for m in missing)} in the {component}; "
            "use diffusers module names such as to_q, to_k, to_v, to_out.0, proj_in, ff.net.2"
        )
