"""What the ``[optimizer]`` settings mean without building anything: the warm-up length and the settings a
choice does not use. Torch-free, so the pre-flight check shows the warnings beside Start before a run."""

from __future__ import annotations

from trainer.config import OptimizerConfig


def warmup_steps(cfg: OptimizerConfig, total_steps: int) -> int:
    """``warmup_ratio`` of ``total_steps`` (rounded) when set, else ``warmup_steps``."""
    return round(cfg.warmup_ratio * total_steps) if cfg.warmup_ratio else cfg.warmup_steps


def optimizer_warnings(cfg: OptimizerConfig) -> list[str]:
    """Settings this optimizer and schedule do not use although the user changed them (said, never ignored silently)."""
    defaults = OptimizerConfig()
    out = []
    if cfg.scheduler == "constant" and (cfg.warmup_steps or cfg.warmup_ratio) and cfg.name != "adamw_schedulefree":
        out.append(
            "`optimizer.scheduler = \"constant\"` has no warm-up, so `optimizer.warmup_steps` / `warmup_ratio` is not "
            "used; choose `constant_with_warmup` to warm up"
        )
    if cfg.name == "adafactor":
        changed = [k for k in ("beta1", "beta2", "epsilon") if getattr(cfg, k) != getattr(defaults, k)]
        if changed:
            out.append(f"Adafactor does not use `optimizer.{changed[0]}` (it keeps factored second moments without betas)")
        if cfg.adafactor_relative_step:
            out.append("`optimizer.learning_rate` is not used: `optimizer.adafactor_relative_step` lets Adafactor set its step size")
    if cfg.name == "lion" and cfg.epsilon != defaults.epsilon:
        out.append("Lion does not use `optimizer.epsilon` (its update is a sign)")
    if cfg.name != "prodigy":
        for key in ("prodigy_d_coef", "prodigy_safeguard_warmup", "prodigy_bias_correction"):
            if getattr(cfg, key) != getattr(defaults, key):
                out.append(f"`optimizer.{key}` applies to `optimizer.name = \"prodigy\"` only; it is not used with {cfg.name}")
    return out
