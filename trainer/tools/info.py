"""``info``: what an adapter file is, from its header and a few scalars, without loading a base model.

Format, adapter type, components, per-module ranks and alphas, dtype, the base model it says it is
for, training metadata (sd-scripts' ``ss_*`` keys: steps, resolution, tags by frequency), and which
clients load it. Module kinds and shapes are read with the pre-flight's own rules
(``adapter_probe.adapter_modules``), so ``info`` and ``network.init_from`` agree about a file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainer.tools.common import ToolError, check_input_file

TOP_TAGS = 20
TRAINING_KEYS = {  # sd-scripts header key -> label
    "ss_output_name": "name", "ss_steps": "steps", "ss_epoch": "epochs", "ss_resolution": "resolution",
    "ss_num_train_images": "training images", "ss_learning_rate": "learning rate", "ss_optimizer": "optimizer",
    "ss_network_module": "network module", "ss_network_dim": "network dim", "ss_network_alpha": "network alpha",
    "ss_training_comment": "comment", "ss_training_finished_at": "finished at",
}
CLIENTS = {
    "lora": ["AUTOMATIC1111 / Forge", "ComfyUI", "diffusers (load_lora_weights)", "sd-scripts"],
    "dora": ["ComfyUI", "AUTOMATIC1111 / Forge (DoRA needs 1.9+)", "diffusers drops dora_scale: not faithful there"],
    "lycoris": ["AUTOMATIC1111 / Forge (1.5+)", "ComfyUI", "not diffusers (no LoHa/LoKr reader for SD)"],
    "diffusers": ["diffusers (load_lora_weights)", "PEFT via diffusers", "convert --to kohya for AUTOMATIC1111 / ComfyUI"],
}


@dataclass
class ModuleInfo:
    name: str
    component: str
    kind: str  # lora | locon | dora | loha | lokr | full
    rank: int | None
    alpha: float | None


@dataclass
class AdapterInfo:
    path: str
    format: str  # kohya (sd-scripts / LyCORIS keys) | diffusers (PEFT keys)
    types: list[str]
    components: dict[str, int]
    ranks: dict[str, int]  # "rank/alpha" -> modules
    dtypes: list[str]
    base_model: str
    training: dict[str, str] = field(default_factory=dict)
    tags: list[tuple[str, int]] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    modules: list[ModuleInfo] = field(default_factory=list)

    @property
    def message(self) -> str:
        return f"{self.path}: {self.format} {', '.join(self.types)} for {self.base_model}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_text(self) -> str:
        rows = [
            ("file", self.path),
            ("format", self.format),
            ("type", ", ".join(self.types)),
            ("components", ", ".join(f"{c} ({n} modules)" for c, n in self.components.items())),
            ("rank/alpha", ", ".join(f"{k} ({n} modules)" for k, n in self.ranks.items())),
            ("dtype", ", ".join(self.dtypes)),
            ("base model", self.base_model),
            *self.training.items(),
        ]
        if self.tags:
            rows.append(("tags", ", ".join(f"{t} ({n})" for t, n in self.tags)))
        rows.append(("loads in", "; ".join(self.clients)))
        width = max(len(label) for label, _ in rows) + 2
        return "\n".join(f"{label + ':':{width}}{value}" for label, value in rows)


def adapter_info(path: Path) -> AdapterInfo:
    from trainer.adapter_probe import KEY, adapter_modules
    from trainer.safetensors_header import HeaderError, read_header

    path = check_input_file(Path(path))
    if path.suffix.lower() != ".safetensors":
        raise ToolError(f"{path}: adapters are read from .safetensors files only")
    try:
        header = read_header(path, "adapter")
        modules = adapter_modules(header)
    except HeaderError as err:
        raise ToolError(str(err).replace(f"{KEY} ", "")) from None
    kohya = any(m.name.startswith("lora_") for m in modules) and not any("." in m.name for m in modules)
    alphas = _alphas(path, [m.name for m in modules]) if kohya else _diffusers_alphas(path, header.metadata, modules)
    infos = [ModuleInfo(m.name, m.component, _kind(m), m.down[0] if m.rank_known else None, alphas.get(m.name))
             for m in modules]
    types = sorted({i.kind for i in infos})
    return AdapterInfo(
        path=str(path),
        format="kohya" if kohya else "diffusers",
        types=types,
        components=dict(Counter(i.component for i in infos)),
        ranks=dict(Counter(f"{i.rank}/{_num(i.alpha)}" for i in infos).most_common()),
        dtypes=sorted({e.dtype for k, e in header.tensors.items() if not k.endswith(".alpha")}),
        base_model=_base_model(header.metadata, infos),
        training={label: header.metadata[k] for k, label in TRAINING_KEYS.items() if header.metadata.get(k)},
        tags=_tags(header.metadata.get("ss_tag_frequency", "")),
        clients=_clients(kohya, types),
        modules=infos,
    )


def _kind(m: Any) -> str:
    from trainer.adapter_probe import _is_conv_module

    if m.kind == "lora":
        return "dora" if m.dora else "locon" if _is_conv_module(m) or len(m.down) == 4 and m.down[-1] > 1 else "lora"
    return m.kind


def _num(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _alphas(path: Path, names: list[str]) -> dict[str, float]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        return {n: float(handle.get_tensor(f"{n}.alpha").item()) for n in names if f"{n}.alpha" in keys}


def _diffusers_alphas(path: Path, metadata: dict[str, str], modules: list[Any]) -> dict[str, float]:
    """PEFT files carry alpha in the ``lora_adapter_metadata`` LoraConfig (else alpha = rank, as diffusers loads)."""
    from trainer.export.formats import _component_configs, _pattern_value

    configs = _component_configs(path, metadata)
    out = {}
    for m in modules:
        config = configs.get(m.component, {})
        default = config.get("lora_alpha", m.down[0])
        out[m.name] = float(_pattern_value(config.get("alpha_pattern") or {}, m.name, default))
    return out


def _base_model(metadata: dict[str, str], infos: list[ModuleInfo]) -> str:
    from trainer.adapter_probe import VERSION_FAMILIES
    from trainer.models.probe import FAMILY_NAMES

    version = metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture", "")
    family = next((fam for prefix, fam in VERSION_FAMILIES if version.startswith(prefix)), None)
    if family:
        return f"{FAMILY_NAMES[family]} ({version})"
    if "text_encoder_2" in {i.component for i in infos}:
        return "SDXL (two text encoders; no ss_base_model_version)"
    return "not recorded (no ss_base_model_version)"


def _tags(raw: str) -> list[tuple[str, int]]:
    try:
        folders = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return []
    counts: Counter[str] = Counter()
    for tags in folders.values() if isinstance(folders, dict) else []:
        if isinstance(tags, dict):
            counts.update({str(t): int(n) for t, n in tags.items() if isinstance(n, (int, float))})
    return counts.most_common(TOP_TAGS)


def _clients(kohya: bool, types: list[str]) -> list[str]:
    if not kohya:
        return CLIENTS["diffusers"]
    if {"loha", "lokr", "full"} & set(types):
        return CLIENTS["lycoris"]
    if "dora" in types:
        return CLIENTS["dora"]
    return CLIENTS["lora"]
