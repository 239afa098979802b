"""Does ``network.init_from`` fit the run? Answered from the adapter's safetensors header, without torch.

The trainer finds out only after loading the base model and injecting LoRA (``export.loader``); the
same conditions are checked here from key names and shapes: a kohya/LyCORIS file of ``network.type``'s
kind (LoRA/LoCon with or without DoRA's ``dora_scale`` as ``network.use_dora`` says, LoHa, LoKr) or a
diffusers/PEFT LoRA, the rank of ``network.rank``, layers inside the configured targets and covering each of them, and widths
that fit the base (cross-attention input = the UNet's ``cross_attention_dim``, text-encoder inputs =
each encoder's ``hidden_size``). ``ss_base_model_version`` (sd-scripts' metadata) backs this up when
the base's widths cannot be read without loading it.

Targets are diffusers module names, matched by suffix. SDXL kohya files name the UNet in sd-scripts'
sgm/LDM layout (``lora_unet_input_blocks_4_0_in_layers_2`` is ``down_blocks.1.resnets.0.conv1``), so for
an SDXL base those names are first mapped back to the diffusers layout with the writer's own
``KohyaNaming`` (``export.keys``), the table the loader resolves them with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import NetworkConfig
from trainer.models.probe import FAMILY_NAMES, ModelProbe
from trainer.network import text_encoder_target_modules, unet_target_modules
from trainer.networks import suffixes
from trainer.safetensors_header import HeaderError, SafetensorsHeader, read_header

KEY = "`network.init_from`"
KOHYA_COMPONENTS = {"lora_unet": "unet", "lora_te": "text_encoder", "lora_te1": "text_encoder", "lora_te2": "text_encoder_2"}
# ss_base_model_version prefixes (sd-scripts / our metadata.BASE_MODEL_VERSIONS) -> family
VERSION_FAMILIES = (("sdxl", "sdxl"), ("sd_v2", "sd2"), ("sd_v1", "sd1"))
# Down/up blocks enumerated when the base's UNet config cannot be read (SDXL has 3).
UNKNOWN_BLOCKS = 8


@dataclass
class AdapterModule:
    component: str  # unet, text_encoder, text_encoder_2
    name: str  # as in the file: a kohya name, or the PEFT path after the component
    down: tuple[int, ...]  # (rank, in, ...): lora_down / lora_A, or the LoHa/LoKr equivalent (see ``_lycoris``)
    layout_name: str = ""  # an SDXL UNet layer named in the sgm layout: its kohya name in the diffusers one
    kind: str = "lora"  # lora | loha | lokr (``trainer/networks/``)
    dora: bool = False
    rank_known: bool = True  # False: a LoKr module with both factors whole has no rank in the file

    @property
    def target_name(self) -> str:
        """The name targets are matched against."""
        return self.layout_name or self.name


@dataclass
class AdapterCheck:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_init_from(source: str, network: NetworkConfig, base: ModelProbe) -> AdapterCheck:
    """Every reason ``network.init_from`` would be refused once the model is loaded (see the module doc)."""
    check = AdapterCheck()
    path = Path(source).expanduser()
    if not path.is_file():
        check.errors.append(f"{KEY} file not found: {path}")
        return check
    if path.suffix.lower() != ".safetensors":
        check.errors.append(f"{KEY} {path}: adapters are read from .safetensors files only")
        return check
    try:
        header = read_header(path, "network.init_from")
        modules = adapter_modules(header)
    except HeaderError as err:
        check.errors.append(str(err))
        return check
    if base.family in ("sdxl", None):  # None: not known without loading; the names then decide
        _name_in_diffusers_layout(modules, base.config("unet"))
    check.errors.extend(_kind_problems(path, modules, network))
    # Block-wise and convolution ranks differ per layer: the trainer compares those layer by layer.
    plain = [m for m in modules if m.rank_known and not _is_conv_module(m)]
    ranks = sorted({m.down[0] for m in plain})
    if ranks and ranks != [network.rank] and not network.block_dims.strip():
        check.errors.append(
            f"{KEY} {path} has rank {', '.join(map(str, ranks))} but `network.rank` is {network.rank}; "
            f"set `network.rank = {ranks[0]}` to start from this adapter"
        )
    check.errors.extend(_target_problems(path, modules, network))
    _fit_base(path, header, modules, base, check)
    return check


def adapter_modules(header: SafetensorsHeader) -> list[AdapterModule]:
    """The LoRA modules of a kohya or diffusers/PEFT file, as ``export.formats.read_adapter_file`` reads them."""
    names = list(header.tensors)
    path = header.path
    groups: dict[str, set[str]] = {}
    for n in names:
        module, _, part = n.partition(".")
        groups.setdefault(module, set()).add(part)
    if any(_file_kind(parts) for parts in groups.values()):
        out, bad = [], []
        for m, parts in groups.items():
            kind = _file_kind(parts)
            problem = _kohya_problem(kind, parts)
            if problem:
                bad.append(f"{m} ({problem})")
                continue
            out.append(_kohya_module(header, m, kind, parts))
        if bad:
            raise HeaderError(f"{KEY} {path}: {len(bad)} module(s) are not a LoRA, LoCon, DoRA, LoHa or LoKr module "
                              f"lora-studio reads: {'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        return _well_formed(path, out)
    if any(n.endswith(".lora_A.weight") for n in names):
        unexpected = [n for n in names if not n.endswith((".lora_A.weight", ".lora_B.weight"))]
        if unexpected:
            raise HeaderError(f"{KEY} {path}: unexpected key {unexpected[0]!r} in a diffusers/PEFT LoRA file")
        out = []
        for n in names:
            if n.endswith(".lora_A.weight"):
                component, _, module = n.removesuffix(".lora_A.weight").partition(".")
                out.append(AdapterModule(component, module, header.tensors[n].shape))
        return _well_formed(path, out)
    raise HeaderError(
        f"{KEY} {path}: no LoRA weights found (expected kohya `.lora_down.weight` or PEFT `.lora_A.weight` keys); "
        f"first keys: {', '.join(names[:3]) or 'none'}"
    )


def _file_kind(parts: set[str]) -> str | None:
    return suffixes.kind_of(parts)


def _kohya_problem(kind: str | None, parts: set[str]) -> str | None:
    if kind is None:
        return f"keys {', '.join(sorted(parts))}"
    missing = suffixes.needed(kind, parts) - parts
    unknown = parts - set(suffixes.KINDS[kind][0]) - {"alpha"}
    if missing or unknown:
        return f"{kind}: " + "; ".join(x for x in (f"missing {', '.join(sorted(missing))}" if missing else "",
                                                   f"unexpected {', '.join(sorted(unknown))}" if unknown else "") if x)
    return None


def _kohya_module(header: SafetensorsHeader, name: str, kind: str, parts: set[str]) -> AdapterModule:
    """The module with a (rank, in, …) shape comparable to a LoRA's ``lora_down``."""
    shape = header.tensors
    if kind == "lora":
        down = shape[f"{name}.lora_down.weight"].shape
        return AdapterModule(_kohya_component(name), name, down, kind=kind, dora="dora_scale" in parts)
    if kind == "loha":
        w1b = shape[f"{name}.hada_w1_b"].shape  # (r, in·k·k)
        return AdapterModule(_kohya_component(name), name, w1b, kind=kind)
    if kind == "full":
        diff = shape[f"{name}.diff"].shape  # (out, in, …): no rank
        return AdapterModule(_kohya_component(name), name, (0, *diff[1:]), kind=kind, rank_known=False)
    # LoKr: in = c·d (w1 is (a, c), w2 is (b, d[·k·k])); the rank is that of a decomposed factor, if any.
    w1 = shape[f"{name}.lokr_w1"].shape if "lokr_w1" in parts else (
        shape[f"{name}.lokr_w1_a"].shape[0], shape[f"{name}.lokr_w1_b"].shape[1])
    w2b = shape[f"{name}.lokr_w2"].shape if "lokr_w2" in parts else shape[f"{name}.lokr_w2_b"].shape
    rank_from = "lokr_w2_b" if "lokr_w2_b" in parts else "lokr_w1_b" if "lokr_w1_b" in parts else None
    rank = shape[f"{name}.{rank_from}"].shape[0] if rank_from else 0
    width = w1[1] * w2b[1]
    return AdapterModule(_kohya_component(name), name, (rank, width), kind=kind, rank_known=rank_from is not None)


def _well_formed(path: Path, modules: list[AdapterModule]) -> list[AdapterModule]:
    flat = next((m for m in modules if len(m.down) < 2), None)
    if flat is not None:
        raise HeaderError(f"{KEY} {path}: {flat.name} has a down weight of shape {flat.down}, not (rank, in, ...); "
                          "the file is damaged or not a LoRA")
    return modules


def _kohya_component(name: str) -> str:
    prefix = name.split("_", 2)[:2]
    return KOHYA_COMPONENTS.get("_".join(prefix), "unknown")


def _matches(module: AdapterModule, target: str) -> bool:
    """PEFT's suffix rule; kohya names spell the module path with ``_`` for ``.``."""
    name = module.target_name
    if "." in name and not name.startswith("lora_"):
        return name == target or name.endswith("." + target)
    return name.endswith("_" + target.replace(".", "_"))


def _name_in_diffusers_layout(modules: list[AdapterModule], unet: dict[str, Any] | None) -> None:
    """Set ``layout_name`` of each kohya UNet module named in sd-scripts' SDXL (sgm) layout.

    As the loader does (``export.formats.layer_table``), the names are looked up in a table built with
    ``KohyaNaming.spellings`` from the UNet's diffusers layer paths, here enumerated from ``unet`` (its
    config; None when it cannot be read). The layers inside a transformer block keep their diffusers names
    in the sgm layout (``input_blocks_4_1_`` + ``transformer_blocks_0_attn1_to_q``), so only the block is
    renamed. Diffusers-layout names (SD 1.x/2.x, and SDXL files written before one layout per file) and
    names the table lacks are left as they are.
    """
    layers, blocks = _sgm_layout(unet or {})
    for m in modules:
        if m.component != "unet" or not m.name.startswith("lora_unet_"):
            continue
        if m.name in layers:
            m.layout_name = layers[m.name]
            continue
        prefix = next((p for p in blocks if m.name.startswith(p)), None)
        if prefix is not None:
            m.layout_name = blocks[prefix] + m.name.removeprefix(prefix)


def _sgm_layout(unet: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(layers, blocks) of an SDXL UNet: kohya name -> diffusers-layout kohya name of each ResNet, sampler and
    top-level layer, and of each transformer block's name prefix (``lora_unet_input_blocks_4_1_`` ->
    ``lora_unet_down_blocks_1_attentions_0_``). ``KohyaNaming.for_model`` reads the same config values."""
    from trainer.export import keys  # torch-free: the package resolves its torch-using names lazily
    per_block = unet.get("layers_per_block", 2)
    if not isinstance(per_block, int):  # KohyaNaming.for_model: no sgm layout then
        return {}, {}
    count = len(unet.get("down_block_types") or ()) or UNKNOWN_BLOCKS
    up_types = unet.get("up_block_types")
    plain_options = [()] if up_types is None else [tuple(i for i, t in enumerate(up_types) if "Attn" not in str(t))]
    if up_types is None:  # which up blocks lack attention is unknown: accept either upsampler slot
        plain_options.append(tuple(range(count)))
    paths = list(keys._SGM_TOP_LEVEL)
    containers = ["mid_block.attentions.0"]
    for j in range(2):
        paths += [f"mid_block.resnets.{j}.{layer}" for layer in keys._SGM_RESNET]
    for i in range(count):
        paths += [f"down_blocks.{i}.downsamplers.0.conv", f"up_blocks.{i}.upsamplers.0.conv"]
        for side, n in (("down", per_block), ("up", per_block + 1)):
            for j in range(n):
                paths += [f"{side}_blocks.{i}.resnets.{j}.{layer}" for layer in keys._SGM_RESNET]
                containers.append(f"{side}_blocks.{i}.attentions.{j}")
    layers, blocks = {}, {}
    for plain in plain_options:
        naming = keys.KohyaNaming(num_text_encoders=2, sgm_unet=True, layers_per_block=per_block, plain_up_blocks=plain)
        for path in paths:
            for spelling in naming.spellings("unet", path):  # the sgm name, and the diffusers-layout one
                layers[spelling] = f"lora_unet_{path.replace('.', '_')}"
        for path in containers:
            # proj_in: any layer inside the block; its sgm name is the block's plus the layer's own
            blocks[naming.name("unet", f"{path}.proj_in").removesuffix("proj_in")] = f"lora_unet_{path.replace('.', '_')}_"
    return layers, blocks


def _kind_problems(path: Path, modules: list[AdapterModule], network: NetworkConfig) -> list[str]:
    """The file's adapter type and DoRA against ``network.type`` / ``network.use_dora``."""
    want = "lora" if network.type in ("lora", "locon") else network.type
    kinds = sorted({m.kind for m in modules})
    if "full" in kinds:
        return [f"{KEY} {path} holds whole ΔW tensors (`diff`, written with `export.dora_layout = \"full\"`): training "
                "cannot continue from it; use the run's checkpoint (`--resume`) or a file written with "
                "`export.dora_layout = \"magnitude\"`"]
    problems = []
    if kinds != [want]:
        types = {"lora": "lora/locon", "loha": "loha", "lokr": "lokr"}
        problems.append(f"{KEY} {path} is a {' + '.join(types[k] for k in kinds)} adapter but `network.type` is "
                        f"{network.type!r}; set `network.type` to the file's type")
    dora = {m.dora for m in modules if m.kind == "lora"}
    if dora and dora != {network.use_dora}:
        has = True in dora
        problems.append(f"{KEY} {path} {'has' if has else 'has no'} DoRA magnitudes (dora_scale); "
                        f"set `network.use_dora = {'true' if has else 'false'}`")
    return problems


# UNet convolution containers, kohya (diffusers layout) or PEFT names: sd-scripts' conv_dim targets.
_CONV_MODULE = re.compile(r"[._](resnets[._]\d+|downsamplers[._]0|upsamplers[._]0)[._][a-z_0-9]+$")


def _is_conv_module(m: AdapterModule) -> bool:
    return m.component == "unet" and _CONV_MODULE.search(m.target_name) is not None


def _target_problems(path: Path, modules: list[AdapterModule], network: NetworkConfig) -> list[str]:
    targets = {"unet": unet_target_modules(network)}
    if network.train_text_encoder:
        targets["text_encoder"] = targets["text_encoder_2"] = text_encoder_target_modules(network)
    conv = network.type == "locon" or network.conv_rank > 0
    outside = [m for m in modules if not any(_matches(m, t) for t in targets.get(m.component, []))
               and not (conv and _is_conv_module(m))]
    if outside:
        convs = [m for m in outside if _is_conv_module(m)]
        example = (convs or outside)[0].name
        hint = ("`network.type = \"locon\"` (or `network.conv_rank` for loha/lokr) adds the ResNet convolutions; "
                if convs else "")
        return [
            f"{KEY} {path}: {len(outside)} module(s) are layers this network does not adapt (e.g. {example}); "
            f"{hint}set `network.unet_targets` (`kohya` adds proj_in/proj_out/feed-forward), "
            "`network.train_text_encoder` and `network.text_encoder_mlp` to match the file"
        ]
    problems = []
    if conv and not any(_is_conv_module(m) for m in modules):
        problems.append(f"{KEY} {path} has no ResNet convolution modules but this network adapts them "
                        f"(`network.type = {network.type!r}`, `network.conv_rank` {network.conv_rank}); "
                        "use `network.type = \"lora\"` (or `network.conv_rank = 0`) to start from this adapter")
    for component in sorted({m.component for m in modules}):
        found = [m for m in modules if m.component == component]
        absent = [t for t in targets[component] if not any(_matches(m, t) for m in found)]
        if absent:
            problems.append(
                f"{KEY} {path}: covers only part of the {component}'s adapted layers (no {', '.join(absent)} layers); "
                "set `network.unet_targets` / `network.text_encoder_mlp` to the file's targets"
            )
    return problems


def _fit_base(path: Path, header: SafetensorsHeader, modules: list[AdapterModule], base: ModelProbe,
              check: AdapterCheck) -> None:
    """Widths and family of the file against the base model's configs."""
    mismatches, compared = [], False
    if base.family is not None and base.family != "sdxl" and any(m.component == "text_encoder_2" for m in modules):
        mismatches.append(f"it has a second text encoder's layers (SDXL) but the base model is {FAMILY_NAMES[base.family]}")
    unet = base.config("unet") or {}
    cross = next((m.down[1] for m in modules if m.component == "unet" and _matches(m, "attn2.to_k")), None)
    if cross is not None and isinstance(unet.get("cross_attention_dim"), int):
        compared = True
        if cross != unet["cross_attention_dim"]:
            mismatches.append(f"its cross-attention layers take {cross}-wide text features, the base model's UNet "
                              f"{unet['cross_attention_dim']}")
    for component, width in base.text_widths().items():
        got = next((m.down[1] for m in modules if m.component == component and _matches(m, "q_proj")), None)
        if got is not None:
            compared = True
            if got != width:
                mismatches.append(f"its {component} layers are {got} wide, the base model's {width}")
    if mismatches:
        check.errors.append(f"{KEY} {path} was made for a different base model than `model.base`: {'; '.join(mismatches)}")
        return
    version = header.metadata.get("ss_base_model_version", "")
    made_for = next((fam for prefix, fam in VERSION_FAMILIES if version.startswith(prefix)), None)
    if made_for and base.family and made_for != base.family:
        message = (f"{KEY} {path} says it was trained on {FAMILY_NAMES[made_for]} (ss_base_model_version "
                   f"{version!r}) but `model.base` is {FAMILY_NAMES[base.family]}")
        if compared:
            check.warnings.append(message + "; its layer widths fit, so it is used anyway")
        else:
            check.errors.append(message + "; use an adapter made for this base model")
