"""What a base model is, from its files alone: family, native size, configs. No torch, no download, no build.

The pre-flight check asks this before a run starts, so a wrong ``model.base`` is refused in milliseconds
instead of after the trainer has spent half a minute importing and loading. It reads only JSON configs
and safetensors headers, and applies the loader's own rules (``resolve_model_source``, the single-file
key rules in ``checkpoint_keys``, the folder family rule of ``load_diffusers_model``), so what passes
here is what the loader accepts. Builtins are never built: their facts come from the cache when it is
there, else only their family is known.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig
from trainer.models import checkpoint_keys as keys
from trainer.models.builtin import BUILTINS, SDXL_VARIANTS, SHIPPED, builtin_cache
from trainer.models.loading import (
    ModelLoadError,
    read_model_index,
    refuse_pickled_weights,
    resolve_model_source,
)
from trainer.models.loading import _hub_offline as hub_offline  # the loader's own rule
from trainer.safetensors_header import HeaderError, read_header

CONFIGS = Path(__file__).parent / "configs"
# Native sizes of single-file checkpoints: the shipped UNet configs' sample_size x 8; SD 2.x is 512 (base)
# or 768 (v), decided by prediction type when loading (single_file.py's sample_size 64 / 96).
FILE_NATIVE = {"sd1": (512, 512), "sd2": (512, 768), "sdxl": (1024, 1024)}
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
HUB_TIMEOUT_S = 1.5  # the UI answers Start within 2 s, whatever the network does


@dataclass
class ModelProbe:
    """Facts about ``model.base`` (None where unknown without loading) and the problems found."""

    kind: str = ""  # builtin, folder, file, hub
    family: str | None = None  # sd1, sd2, sdxl
    native: tuple[int, int] | None = None  # lowest and highest native training size in pixels
    config_dir: Path | None = None  # a folder with unet/ and text_encoder*/ config.json files
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def config(self, component: str) -> dict[str, Any] | None:
        """``component/config.json`` of the model, when there is one to read."""
        if self.config_dir is None:
            return None
        try:
            return _read_json(self.config_dir / component / "config.json")
        except ModelLoadError:
            return None

    def text_widths(self) -> dict[str, int]:
        """Hidden size of each text encoder, by pipeline component name."""
        out = {}
        for component in ("text_encoder", "text_encoder_2"):
            config = self.config(component)
            if config and isinstance(config.get("hidden_size"), int):
                out[component] = config["hidden_size"]
        return out


def probe_base_model(cfg: ModelConfig) -> ModelProbe:
    """Check ``model.base`` without loading weights; see the module doc."""
    probe = ModelProbe()
    try:
        if cfg.base in BUILTINS:
            _probe_builtin(cfg.base, probe)
        else:
            kind, where = resolve_model_source(cfg.base)
            probe.kind = kind
            {"folder": _probe_folder, "file": _probe_file, "hub": _probe_hub}[kind](where, cfg, probe)
    except ModelLoadError as err:
        probe.errors.append(str(err))
    return probe


def _probe_builtin(name: str, probe: ModelProbe) -> None:
    probe.kind, probe.family = "builtin", "sdxl" if name in SDXL_VARIANTS else "sd1"
    if name in SHIPPED:  # a trained model: it draws at the size it learnt, 64 px
        probe.native = (64, 64)
    entry = builtin_cache(name)
    if entry.problem() is None:  # built before: its configs tell the dims; never build it here
        probe.config_dir = entry.folder


def _probe_folder(where: str, cfg: ModelConfig, probe: ModelProbe, weights: bool = True) -> None:
    """The files ``load_diffusers_model`` opens, and its family rule (a second text encoder is SDXL)."""
    folder = Path(where)
    index = read_model_index(folder)
    sdxl = "text_encoder_2" in index
    components = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
    components += ["text_encoder_2", "tokenizer_2"] if sdxl else []
    missing = [c for c in components if not (folder / c).is_dir()]
    if missing:
        raise ModelLoadError(
            f"`model.base` folder {folder} lacks {', '.join(f'{c}/' for c in missing)}: it is not a complete "
            "diffusers model (download all of it, or point at the folder with model_index.json)"
        )
    configs = {c: _read_json(folder / c / "config.json") for c in ("unet", "vae", "text_encoder", "text_encoder_2") if c in components}
    if weights:
        refuse_pickled_weights(folder, tuple(configs), "model.base")
        for component in configs:
            _check_weights(folder / component, cfg.variant)
    hidden = configs["text_encoder"].get("hidden_size")
    probe.family = "sdxl" if sdxl else "sd2" if hidden == 1024 else "sd1"  # load_diffusers_model's rule
    probe.config_dir = folder
    size, factor = configs["unet"].get("sample_size"), _vae_factor(configs["vae"])
    if isinstance(size, int) and factor:
        probe.native = (size * factor, size * factor)


def _check_weights(component_dir: Path, variant: str) -> None:
    files = [p.name for p in component_dir.iterdir() if p.name.endswith(".safetensors")]  # loaders: use_safetensors
    if variant:
        files = [n for n in files if f".{variant}." in n or f".{variant}-" in n]  # single or sharded
    if not files:
        which = f" for variant {variant!r} (`model.variant`)" if variant else ""
        raise ModelLoadError(
            f"`model.base`: {component_dir} has no .safetensors weights file{which}; "
            "the download is incomplete"
        )


def _probe_file(where: str, cfg: ModelConfig, probe: ModelProbe) -> None:
    path = Path(where)
    if path.suffix.lower() != ".safetensors":
        return  # pickled checkpoints cannot be looked into without unpickling: the loader checks them
    try:
        header = read_header(path, "model.base")
    except HeaderError as err:
        raise ModelLoadError(str(err)) from None
    shapes = {name: entry.shape for name, entry in header.tensors.items()}
    keys.reject_non_checkpoints(shapes, path)
    family = keys.family_of(keys.infer_model_type(shapes), path)
    keys.check_text_encoders(shapes, family, path)
    if not keys.has_vae(shapes) and not cfg.vae.strip():
        raise ModelLoadError(
            f"`model.base` file {path} has no VAE weights ({keys.VAE_PREFIX}*): set `model.vae` to a VAE file or folder"
        )
    probe.family, probe.native, probe.config_dir = family, FILE_NATIVE[family], CONFIGS / family


def _probe_hub(repo_id: str, cfg: ModelConfig, probe: ModelProbe) -> None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "model_index.json", revision=cfg.revision or None)
    snapshot = Path(cached).parent if isinstance(cached, str) else None
    if hub_offline():
        # The loader never reads the hub cache offline: say where the cached copy is instead.
        hint = (f"It is in the local Hugging Face cache: set `model.base` to {snapshot}" if snapshot else
                "Download the model elsewhere and set `model.base` to its local folder, or use builtin:tiny-sd")
        raise ModelLoadError(f"`model.base` {repo_id!r} is a hub id but the hub is offline (HF_HUB_OFFLINE is set). {hint}.")
    if snapshot is not None:
        with contextlib.suppress(ModelLoadError):  # a partial cache is completed by the trainer's download
            _probe_folder(str(snapshot), cfg, probe, weights=False)
        return
    answer = _ask_hub(repo_id, cfg.revision or None)
    if answer == "missing":
        raise ModelLoadError(
            f"`model.base` {repo_id!r} was not found on the Hugging Face hub (or it is private or gated: log in "
            "with `hf auth login`); check the id, or set a local folder"
        )
    if answer != "ok":
        why = f"did not answer within {HUB_TIMEOUT_S:g} s" if answer == "no answer" else f"could not be reached ({answer})"
        probe.warnings.append(
            f"`model.base` {repo_id!r} could not be checked: the Hugging Face hub {why}; the trainer will try to "
            "download it (set a local folder if this machine is offline)"
        )


def _ask_hub(repo_id: str, revision: str | None) -> str:
    """``ok``, ``missing``, or why the hub could not be asked; never waits longer than HUB_TIMEOUT_S.

    The HTTP timeout does not cover name resolution, so the request runs on a daemon thread that is
    left behind when it is slow.
    """
    answer = ["no answer"]

    def ask() -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
            answer[0] = "ok"
        except (RepositoryNotFoundError, RevisionNotFoundError):
            answer[0] = "missing"
        except Exception as err:  # noqa: BLE001 - any network failure means "could not check"
            answer[0] = type(err).__name__

    thread = threading.Thread(target=ask, daemon=True, name="lora-studio-hub-check")
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    return answer[0]


def vae_problems(source: str) -> list[str]:
    """Why ``model.vae`` cannot be a VAE (``load_vae``'s rules), or nothing."""
    path = Path(source).expanduser()
    if path.is_dir():
        sub = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (sub / "config.json").is_file():
            return [f"`model.vae` folder {path} has no config.json: point it at a diffusers VAE folder"]
        try:
            _read_json(sub / "config.json", setting="model.vae")
            refuse_pickled_weights(sub, ("",), "model.vae")
            _check_weights(sub, "")
        except ModelLoadError as err:
            return [str(err).replace("`model.base`", "`model.vae`")]
        return []
    if not path.is_file():
        return [f"`model.vae` not found: {path}"]
    if path.suffix.lower() != ".safetensors":
        return []
    try:
        names = list(read_header(path, "model.vae").tensors)
    except HeaderError as err:
        return [str(err)]
    # load_vae takes the original layout (optionally first_stage_model.-prefixed) or the diffusers one.
    if not any(n.startswith(("encoder.", "decoder.", keys.VAE_PREFIX)) for n in names):
        first = ", ".join(sorted(names)[:3]) or "none"
        return [f"`model.vae` file {path} holds no VAE weights (first keys: {first}); use a VAE .safetensors file"]
    return []


def _read_json(path: Path, setting: str = "model.base") -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"`{setting}`: {path} is missing; the model folder is incomplete") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"`{setting}`: {path} cannot be read ({err})") from None
    except json.JSONDecodeError as err:
        raise ModelLoadError(
            f"`{setting}`: {path} is not valid JSON ({err.msg}, line {err.lineno}); download it again or fix it"
        ) from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"`{setting}`: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _vae_factor(vae_config: dict[str, Any]) -> int | None:
    blocks = vae_config.get("block_out_channels")
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else None
