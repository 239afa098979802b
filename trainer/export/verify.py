"""Self-check of an exported adapter: load it the way users will, and compare with the in-training model.

A kohya/LyCORIS file of any kind first passes ``delta_check`` (each module's ΔW from the file's keys
alone against PEFT's merged delta). LoHa, LoKr and DoRA, which diffusers does not load for SD, are then
applied as ComfyUI applies them — each module's ΔW added to fresh copies of the base weights — and the
outputs compared (3. below). Plain LoRA/LoCon files, and diffusers/PEFT files, go through diffusers:

A diffusers pipeline is built from *fresh* copies of the base components (same classes and configs,
sharing the frozen base tensors, no PEFT layers) and the file goes through
``pipe.load_lora_weights`` — the path diffusers users take, and the one that parses kohya keys the
way ComfyUI and A1111 name them. Then three things must hold:

1. every module of the file was consumed: the pipeline's LoRA layers are exactly the in-training
   ones, and diffusers/PEFT logged no unexpected or missing keys;
2. per layer, ``scale · B @ A`` equals the trained delta up to the rounding of the save dtype
   (bound below); this catches a wrong alpha or a swapped up/down whatever the network does with it;
3. UNet and text-encoder outputs on a fixed input match the in-training model.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.export.fresh_base import assign_tensor, base_copy, fresh_pipeline
from trainer.export.keys import adapted_components, lora_layers, module_path
from trainer.export.probe import eval_mode, probe_inputs, probe_outputs
from trainer.network import ADAPTER_NAME

# Output tolerance, in units of the save dtype's rounding error relative to the LoRA's effect on the
# output. Rounding each stored weight perturbs the update by ~2u; 64u leaves room for the network's
# gain on that perturbation while a wrong or missing module changes the output by ~100% of the effect.
OUTPUT_SLACK = 64
_KEY_PROBLEM = re.compile(r"unexpected|missing|not been correctly|could not", re.IGNORECASE)
# Logged for every component the file has no keys for (an untrained text encoder); the consumption
# check decides whether that is a problem.
_NO_KEYS_NOTICE = "No LoRA keys associated to"


@dataclass
class Verification:
    """Outcome of ``verify_adapter``; ``message`` says what loaded, or the first problems found."""

    verified: bool
    max_abs_diff: float | None
    message: str


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half the machine epsilon: the worst relative error of rounding one value to ``dtype``."""
    return torch.finfo(dtype).eps / 2


def verify_adapter(path: Path, model: Any) -> Verification:
    """Check that the file at ``path`` reproduces ``model``'s trained adapter.

    A kohya/LyCORIS file (any kind) first has each module's ΔW computed from its keys alone and compared
    with the trained delta (``delta_check``). Then the file is applied the way a client would: plain
    LoRA/LoCon through diffusers' ``load_lora_weights`` (see the module docstring); LoHa, LoKr and DoRA,
    which diffusers does not read for SD, by adding each module's ΔW to a fresh copy of the base weights
    as ComfyUI and AUTOMATIC1111 do. Either way the outputs must match the trained model's.
    """
    from trainer.export.delta_check import check_file_deltas
    from trainer.export.file_modules import is_kohya_keys, read_kohya_file
    from trainer.export.formats import AdapterFileError

    path = Path(path)
    if not is_kohya_keys(_keys(path)):
        return _verify_with_diffusers(path, model)
    try:
        file = read_kohya_file(path)
    except AdapterFileError as err:
        return Verification(False, None, str(err))
    deltas = check_file_deltas(path, model, file)
    if deltas.problems:
        return Verification(False, deltas.max_abs_diff, "ΔW check: " + "; ".join(deltas.problems[:5]))
    summary = f"ΔW from the file equals the trained delta in all {deltas.modules} modules"
    if file.kinds == {"lora"} and not file.has_dora:
        # The layers the file must fill: the ones the ΔW check matched (AdaLoRA drops its rank-0 layers).
        expected: dict[str, set[str]] = {}
        for component, canonical in deltas.deltas:
            module = model.component_modules()[component]
            expected.setdefault(component, set()).add(module_path(component, module, canonical))
        result = _verify_with_diffusers(path, model, expected)
        result.message = f"{result.message}; {summary}" if result.verified else result.message
        return result
    return _verify_by_merge(path, model, deltas, file.dtype, summary, ", ".join(sorted(file.kinds)))


def _file_dtype(path: Path) -> torch.dtype:
    """The dtype of the file's first weight (alpha scalars are fp32 whatever the weights are)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())  # noqa: SIM118 (a safetensors handle is not iterable)
        key = next((k for k in keys if not k.endswith(".alpha")), None)
        return handle.get_tensor(key).dtype if key else torch.float32


def _keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys())


def _verify_by_merge(path: Path, model: Any, deltas: Any, file_dtype: torch.dtype, summary: str, kinds: str) -> Verification:
    """Outputs of fresh base copies with each module's file ΔW added to its weight vs the trained model."""
    trained = adapted_components(model)
    fresh = {name: base_copy(module) for name, module in model.component_modules().items()}
    probe = probe_inputs(model)
    base_out = probe_outputs(fresh, probe)
    with eval_mode(list(trained.values())):
        trained_out = probe_outputs(model.component_modules(), probe)
    for (component, canonical), delta in deltas.deltas.items():
        module = fresh[component]
        name = module_path(component, module, canonical)
        weight = module.get_submodule(name).weight
        assign_tensor(module, f"{name}.weight", (weight.float() + delta.to(weight.device)).to(weight.dtype))
    diff, problems = _compare_outputs(base_out, trained_out, probe_outputs(fresh, probe), file_dtype, _compute_dtypes(model))
    if problems:
        return Verification(False, diff, "; ".join(problems[:5]))
    return Verification(
        True, diff, f"{path.name}: {summary} ({kinds}); outputs with each module's ΔW merged into the base weights "
        f"match (max abs diff {diff:.3g})"
    )


def _verify_with_diffusers(path: Path, model: Any, expected: dict[str, set[str]] | None = None) -> Verification:
    """Load ``path`` into a fresh pipeline and check it reproduces ``model`` (see the module docstring);
    ``expected``: the layers (by component) the file must fill, when not every trained PEFT LoRA layer."""
    file_dtype = _file_dtype(path)
    trained = adapted_components(model)
    fresh = {name: base_copy(module) for name, module in model.component_modules().items()}
    pipe = fresh_pipeline(model, fresh)
    probe = probe_inputs(model)
    base_out = probe_outputs(fresh, probe)
    with eval_mode(list(trained.values())):
        trained_out = probe_outputs(model.component_modules(), probe)
    with _captured_warnings() as logged:
        try:
            pipe.load_lora_weights(str(path))
        except Exception as err:  # diffusers raises ValueError/KeyError/RuntimeError for bad files
            return Verification(False, None, f"diffusers could not load {path.name}: {type(err).__name__}: {err}")
    problems = [f"loader warning: {m}" for m in logged if _KEY_PROBLEM.search(m) and not m.startswith(_NO_KEYS_NOTICE)]
    problems += _consumption_problems(trained, fresh, expected)
    if problems:
        return Verification(False, None, "; ".join(problems[:5]))
    weight_problems = _weight_problems(trained, fresh, file_dtype)
    loaded_out = probe_outputs(fresh, probe)
    diff, output_problems = _compare_outputs(base_out, trained_out, loaded_out, file_dtype, _compute_dtypes(model))
    problems = weight_problems + output_problems
    if problems:
        return Verification(False, diff, "; ".join(problems[:5]))
    layers = sum(len(v) for v in expected.values()) if expected is not None else sum(len(lora_layers(m)) for m in trained.values())
    return Verification(
        True, diff, f"{path.name}: {layers} LoRA layers loaded by diffusers; outputs match (max abs diff {diff:.3g})"
    )


# ---------------------------------------------------------------------------------------------
# Checks


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_warnings() -> Iterator[list[str]]:
    """Warnings diffusers, transformers and PEFT emit while loading (logging and ``warnings``)."""
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "peft")]
    for logger in loggers:
        logger.addHandler(handler)
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    messages.extend(handler.messages + [str(w.message) for w in caught])


def _consumption_problems(trained: dict[str, Any], fresh: dict[str, Any], wanted: dict[str, set[str]] | None = None) -> list[str]:
    problems = []
    for name, module in fresh.items():
        loaded = {n for n, layer in module.named_modules() if hasattr(layer, "lora_A") and len(layer.lora_A)}
        if wanted is not None:
            expected = wanted.get(name, set())
        else:
            expected = set(lora_layers(trained[name])) if name in trained else set()
        if expected - loaded:
            problems.append(f"{len(expected - loaded)} {name} layer(s) not loaded, e.g. {sorted(expected - loaded)[0]}")
        if loaded - expected:
            problems.append(f"{len(loaded - expected)} unexpected {name} layer(s), e.g. {sorted(loaded - expected)[0]}")
    return problems


def _factors(layer: Any, adapter: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, scale) in fp32, flattened to 2-D for conv layers."""
    a = layer.lora_A[adapter].weight.float().flatten(1)  # (r, in)
    b = layer.lora_B[adapter].weight.float().flatten(1)  # (out, r)
    return b, a, layer.scaling[adapter]


def rounding_bound(b: torch.Tensor, a: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Elementwise bound on |B'A' - BA| when A and B are rounded to ``dtype`` and multiplied in fp32.

    Rounding x gives |dx| <= u|x| + h (u: unit roundoff; h: half the subnormal spacing, which is what
    matters for the small B of a briefly trained adapter in fp16). Summing |b da| + |db a| + |db da| over
    the rank: (2u + u^2)|B||A| + h(1 + u)(row sums of |B| + column sums of |A|) + r h^2; the fp32 sum
    adds r·u32·|B||A|.
    """
    info = torch.finfo(dtype)
    u, h = info.eps / 2, info.smallest_normal * info.eps / 2
    rank = a.shape[0]
    magnitude = b.abs() @ a.abs()
    sums = b.abs().sum(1, keepdim=True) + a.abs().sum(0, keepdim=True)
    return (2 * u + u * u + rank * unit_roundoff(torch.float32)) * magnitude + h * (1 + u) * sums + rank * h * h


def _weight_problems(trained: dict[str, Any], fresh: dict[str, Any], file_dtype: torch.dtype) -> list[str]:
    """Per layer, |loaded delta - trained delta| must stay within twice ``rounding_bound``.

    Diffusers casts LoRA weights to the model dtype, so a file may be rounded twice; the factor 2 is
    margin. A wrong alpha or swapped factors misses by orders of magnitude.
    """
    problems = []
    for name, module in trained.items():
        loaded_layers = dict(fresh[name].named_modules())
        for path, layer in lora_layers(module).items():
            other = loaded_layers[path]
            adapter = next(iter(other.lora_A))
            b, a, scale = _factors(layer, ADAPTER_NAME)
            b2, a2, scale2 = _factors(other, adapter)
            # Rounded once to the file's dtype, and again if diffusers cast to another: the bounds add.
            dtypes = {file_dtype, other.lora_A[adapter].weight.dtype}
            bound = sum(rounding_bound(b, a, dtype) for dtype in dtypes)
            err = (scale2 * (b2 @ a2) - scale * (b @ a)).abs()
            if (err > 2 * scale * bound).any():
                problems.append(f"{name}.{path}: loaded update differs from the trained one by {err.max().item():.3g}")
    return problems


def _compute_dtypes(model: Any) -> dict[str, torch.dtype]:
    return {name: next(module.parameters()).dtype for name, module in model.component_modules().items()}


def _compare_outputs(
    base: dict[str, torch.Tensor],
    trained: dict[str, torch.Tensor],
    loaded: dict[str, torch.Tensor],
    file_dtype: torch.dtype,
    compute_dtype: torch.dtype | dict[str, torch.dtype],
) -> tuple[float, list[str]]:
    """Max |loaded - trained| over all outputs, and the outputs beyond tolerance.

    Tolerance: OUTPUT_SLACK · u(file) · (LoRA effect) + OUTPUT_SLACK · u(compute) · |output|, with each
    component's own compute dtype (a text encoder may run in fp16 beside an fp32 UNet). Both sides use
    the same base tensors, so only the stored weights' rounding and, in fp16/bf16, the compute
    precision (and, for a merged file, the rounding of W + ΔW to the weight dtype) separate them.
    """
    worst, problems = 0.0, []
    for name, want in trained.items():
        diff = (loaded[name] - want).abs().max().item()
        effect = (want - base[name]).abs().max().item()
        scale = base[name].abs().max().item()
        dtype = compute_dtype[name] if isinstance(compute_dtype, dict) else compute_dtype
        tol = OUTPUT_SLACK * (unit_roundoff(file_dtype) * effect + unit_roundoff(dtype) * scale)
        worst = max(worst, diff)
        if not diff <= tol:
            problems.append(f"{name} output differs by {diff:.3g} (tolerance {tol:.3g}, LoRA effect {effect:.3g})")
    return worst, problems
