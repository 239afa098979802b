"""``convert``: an adapter in another format — kohya (sd-scripts / A1111 / ComfyUI keys), diffusers
(``load_lora_weights`` keys with the LoraConfig in the header) or peft (a folder per component with
``adapter_config.json`` + ``adapter_model.safetensors``, what ``PeftModel.from_pretrained`` reads).

Reads our exports and LoRA files written by sd-scripts, the diffusers examples and ai-toolkit (kohya or
PEFT keys). Kohya names only resolve against a model's layers (``to_q`` vs ``to.q``), so conversion uses
``--base`` or, without it, the architecture of the family the file names (``ss_base_model_version`` or
its text encoders), built on the meta device from the shipped configs: no weights are loaded (a file
trained on a builtin, recorded in ``ss_sd_model_name``, uses that builtin). LoHa,
LoKr and DoRA have no diffusers/PEFT form, so converting them is refused rather than approximated.

Equality checked (``check_converted``): every module's ΔW = alpha / rank · up @ down read back from the
written file equals the input's, per layer, within the rounding of the saved dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.export.formats import LoraModule
from trainer.tools.common import ToolError, check_input_file, check_output, load_base
from trainer.tools.progress import Progress

FORMATS = ("kohya", "diffusers", "peft")
PEFT_WEIGHTS, PEFT_CONFIG = "adapter_model.safetensors", "adapter_config.json"


@dataclass
class ConvertResult:
    path: Path
    format: str
    modules: int
    max_abs_diff: float
    message: str


@dataclass
class ArchitectureModel:
    """A base model's module tree without weights (meta device): enough to name layers."""

    family: str
    unet: Any
    text_encoders: list[Any]
    name_or_path: str

    def component_modules(self) -> dict[str, Any]:
        mods = {"unet": self.unet}
        for i, te in enumerate(self.text_encoders):
            mods["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = te
        return mods


def architecture_model(family: str) -> ArchitectureModel:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from trainer.models.single_file import CONFIGS

    root = CONFIGS / family
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root, subfolder="unet"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(root, subfolder="text_encoder"))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(root, subfolder="text_encoder_2")))
    return ArchitectureModel(family, unet, encoders, f"the {family} architecture")


def convert(source: Path, out: Path, to: str, base: str | None = None, dtype: str | None = None,
            overwrite: bool = False, progress: Progress | None = None) -> ConvertResult:
    from trainer.export.formats import resolve_modules, to_dtype
    from trainer.tools.lora_files import read_lora

    progress = progress or Progress(show_bar=False)
    if to not in FORMATS:
        raise ToolError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    source = check_input_file(source)
    out = check_output(out, overwrite, None if to == "peft" else ".safetensors")
    adapter = read_lora(source, "convert")  # refuses LoHa/LoKr/DoRA by name: no diffusers/PEFT form
    if adapter.format == to:
        raise ToolError(f"{source} already is a {to} file; nothing to convert")
    model = load_base(base) if base else _architecture_for(source, adapter)
    modules, unknown = resolve_modules(adapter, model)
    if unknown:
        raise ToolError(f"{source}: {len(unknown)} of its {len(adapter.modules)} modules match no layer of "
                        f"{model.name_or_path} (e.g. {unknown[0]}); pass --base with the model it was trained on")
    save_dtype = to_dtype(dtype) if dtype else adapter.dtype
    steps = iter(progress.stage(["write", "check"], 2, "converting"))
    next(steps)
    if to == "peft":
        write_peft(out, modules, model, save_dtype)
    else:
        from trainer.export.writer import convert_adapter

        convert_adapter(source, out, to, model, dtype=save_dtype)
    next(steps)
    diff = check_converted(out, to, modules, model, save_dtype)
    for _ in steps:
        pass
    return ConvertResult(out, to, len(modules), diff,
                         f"{out}: {len(modules)} modules converted from {adapter.format} to {to}; checked: ΔW per module "
                         f"equals the input's (max abs diff {diff:.3g})")


def _architecture_for(source: Path, adapter: Any) -> Any:
    """The model the file names: a builtin recorded in ``ss_sd_model_name`` (our exports write ``model.base``
    there; builtins load in a second), else the architecture of the family its metadata or widths say."""
    from trainer.models.builtin import BUILTINS
    from trainer.tools.adapter_layers import file_family

    recorded = adapter.metadata.get("ss_sd_model_name", "")
    if recorded in BUILTINS:
        return load_base(recorded)
    family = file_family(adapter.metadata, list(adapter.modules))
    if family is None:  # one text encoder: SD 2.x's is 1024 wide, SD 1.x's 768
        widths = {int(m.down.shape[1]) for n, m in adapter.modules.items() if n.startswith(("lora_te", "text_encoder"))}
        family = "sd2" if 1024 in widths else "sd1"
    return architecture_model(family)


def write_peft(out: Path, modules: list[LoraModule], model: Any, dtype: torch.dtype) -> None:
    """PEFT's own layout per component: ``base_model.model.<module path>.lora_A.weight`` keys (the path as the
    installed transformers names it) and a LoraConfig from ``diffusers_adapter_metadata`` (ranks, alphas, targets)."""
    import json

    from peft import LoraConfig

    from trainer.atomic import atomic_dir
    from trainer.export.formats import diffusers_adapter_metadata
    from trainer.export.keys import module_path
    from trainer.export.writer import write_safetensors

    packed = json.loads(diffusers_adapter_metadata(modules)["lora_adapter_metadata"])
    with atomic_dir(out) as tmp:
        for component in dict.fromkeys(m.component for m in modules):
            owner = model.component_modules()[component]
            values = {k.split(".", 1)[1]: v for k, v in packed.items() if k.split(".", 1)[0] == component}
            LoraConfig(**values).save_pretrained(tmp / component)
            tensors = {}
            for m in (m for m in modules if m.component == component):
                path = module_path(component, owner, m.path)
                tensors[f"base_model.model.{path}.lora_A.weight"] = m.down.to(dtype).contiguous()
                tensors[f"base_model.model.{path}.lora_B.weight"] = m.up.to(dtype).contiguous()
            write_safetensors(tmp / component / PEFT_WEIGHTS, tensors, {"format": "pt"})


def read_peft(folder: Path, model: Any) -> list[LoraModule]:
    """A PEFT folder back as modules, alpha from each component's config (PEFT's pattern rule)."""
    import json

    from safetensors.torch import load_file

    from trainer.export.formats import _pattern_value
    from trainer.export.keys import canonical_path

    modules = []
    for sub in sorted(p for p in Path(folder).iterdir() if (p / PEFT_CONFIG).is_file()):
        component, owner = sub.name, model.component_modules()[sub.name]
        config = json.loads((sub / PEFT_CONFIG).read_text())
        tensors = load_file(str(sub / PEFT_WEIGHTS))
        for key, down in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            path = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            canonical = canonical_path(component, owner, path)
            up = tensors[key.replace(".lora_A.", ".lora_B.")]
            alpha = _pattern_value(config.get("alpha_pattern") or {}, canonical, config["lora_alpha"])
            modules.append(LoraModule(component, canonical, down, up, float(alpha)))
    return modules


def check_converted(out: Path, to: str, before: list[LoraModule], model: Any, dtype: torch.dtype) -> float:
    """ΔW per (component, layer) of the written file against the input's (see the module docstring)."""
    from trainer.export.formats import read_adapter_file, resolve_modules
    from trainer.tools.lora_files import module_delta

    if to == "peft":
        after = read_peft(out, model)
    else:
        after, unknown = resolve_modules(read_adapter_file(out), model)
        if unknown:
            raise ToolError(f"check failed: {out} has modules that name no layer, e.g. {unknown[0]}")
    got = {(m.component, m.path): m for m in after}
    worst = 0.0
    u = torch.finfo(dtype).eps / 2
    for m in before:
        other = got.get((m.component, m.path))
        if other is None:
            raise ToolError(f"check failed: {out} lacks {m.component}.{m.path}")
        want, have = module_delta(m).double(), module_delta(other).double()
        err = float((want - have).abs().max())
        scale = float(abs(m.alpha / m.rank)) * float((m.up.double().flatten(1).abs() @ m.down.double().flatten(1).abs()).max())
        worst = max(worst, err)
        if err > (4 * u + 1e-6) * scale + 1e-12:
            raise ToolError(f"check failed: {m.component}.{m.path} has ΔW {err:.3g} away from the input's in {out}")
    return worst
