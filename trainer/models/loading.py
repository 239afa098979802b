"""Load a base model into a ``BaseModel``: the components plus every constant read from their configs.

Sources: ``builtin:*`` (built offline), a local diffusers folder (SDXL folders go to ``sdxl.py``), a
single-file checkpoint (``single_file.py``, offline), or a hub id (online only). The
constants the loop needs — latent scaling factor, VAE downsample factor, prediction type — are read
from the model's own configs, never assumed (the builtin VAE downsamples by 2, SD's by 8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ModelConfig
from trainer.errors import UserFacingError
from trainer.models.builtin import BUILTINS, builtin_cache, builtin_model_path

# Weight files that are Python pickles: loading one can run code hidden in it, so model folders must use
# .safetensors (single-file checkpoints have their own pickle-free reader in ``single_file.py``).
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


class ModelLoadError(UserFacingError):
    """A base model that cannot be loaded, with what to do about it."""


class ModelFilesError(ModelLoadError):
    """The model's files could not be read (missing, damaged): a cache entry with this is rebuilt."""


@dataclass
class BaseModel:
    """A loaded Stable Diffusion base model.

    ``text_encoders`` / ``tokenizers`` are lists so SDXL's two encoders fit the same shape;
    ``family`` is ``sd1``, ``sd2`` or ``sdxl``.
    """

    family: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any
    prediction_type: str
    latent_scale: float
    latent_shift: float
    vae_scale_factor: int
    source: str
    name_or_path: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def text_encoder(self) -> Any:
        return self.text_encoders[0]

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    @property
    def native_resolution(self) -> int:
        """The pixel size the UNet was built for (SD 1.x 512, SD 2.x-v 768, SDXL 1024, tiny builtins 64)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    def component_modules(self) -> dict[str, Any]:
        """Components by their diffusers pipeline attribute name (``unet``, ``text_encoder``, ``text_encoder_2``)."""
        mods = {"unet": self.unet}
        for i, te in enumerate(self.text_encoders):
            mods["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = te
        return mods


def resolve_model_source(base: str) -> tuple[str, str]:
    """Classify ``model.base`` as (kind, path-or-id): builtin, folder, file or hub."""
    if base in BUILTINS:
        return "builtin", str(builtin_model_path(base))
    path = Path(base).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ModelLoadError(
                f"`model.base` folder {path} is not a diffusers model folder (no model_index.json). "
                "Point it at the folder that contains unet/, vae/, text_encoder/ and tokenizer/."
            )
        return "folder", str(path)
    if path.suffix.lower() in (".safetensors", ".ckpt", ".pt", ".bin", ".pth"):
        if not path.is_file():
            raise ModelLoadError(f"`model.base` file not found: {path}")
        return "file", str(path)
    # A hub id is exactly "owner/name"; anything else that is not on disk was meant as a path.
    if base.startswith((".", "/", "~", "\\")) or base.count("/") != 1 or "\\" in base:
        raise ModelLoadError(f"`model.base` folder not found: {path}")
    return "hub", base


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def load_base_model(cfg: ModelConfig, dtype: Any = None) -> BaseModel:
    """Load a base model described by the ``[model]`` config section."""
    if cfg.base in BUILTINS:
        return load_builtin_model(cfg, dtype=dtype)
    kind, where = resolve_model_source(cfg.base)
    if kind == "file":
        from trainer.models.single_file import load_single_file  # noqa: PLC0415 - optional heavy path

        return load_single_file(Path(where), cfg, dtype=dtype)
    return load_diffusers_model(where, cfg, kind, dtype=dtype)


def load_builtin_model(cfg: ModelConfig, dtype: Any = None) -> BaseModel:
    """Load a builtin model from its cache; a cached copy that fails to load is rebuilt once, with a notice."""
    entry = builtin_cache(cfg.base)
    entry.ensure()
    seen = entry.build_id()
    try:
        return load_diffusers_model(str(entry.folder), cfg, "builtin", dtype=dtype)
    except ModelFilesError as err:
        entry.repair(str(err), seen)
    try:
        return load_diffusers_model(str(entry.folder), cfg, "builtin", dtype=dtype)
    except ModelFilesError as err:
        raise ModelLoadError(
            f"the {entry.label} was rebuilt at {entry.folder} and still does not load ({err}); "
            "delete that folder and report this as a bug"
        ) from None


def load_diffusers_model(where: str, cfg: ModelConfig, kind: str, dtype: Any = None) -> BaseModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors import SafetensorError
    from transformers import CLIPTextModel, CLIPTokenizer

    kwargs: dict[str, Any] = {"use_safetensors": True}  # never fall back to unpickling .bin weights
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.variant:
        kwargs["variant"] = cfg.variant
    try:
        if kind == "hub":
            where = _download_hub_model(where, cfg)
        index = read_model_index(Path(where))
        refuse_pickled_weights(Path(where), WEIGHT_COMPONENTS, "model.base")
        if "text_encoder_2" in index:
            from trainer.models.sdxl import load_sdxl_folder  # noqa: PLC0415

            return load_sdxl_folder(Path(where), cfg, kind, dtype=dtype)
        tokenizer = CLIPTokenizer.from_pretrained(where, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **_variant(kwargs), **in_dtype(dtype))
        vae = AutoencoderKL.from_pretrained(where, subfolder="vae", **_variant(kwargs), **in_dtype(dtype))
        unet = UNet2DConditionModel.from_pretrained(where, subfolder="unet", **_variant(kwargs), **in_dtype(dtype))
        noise_scheduler = DDPMScheduler.from_pretrained(where, subfolder="scheduler")
    except ModelLoadError:
        raise
    except (OSError, ValueError, SafetensorError) as err:
        raise ModelFilesError(f"could not load base model {cfg.base!r} from {where}: {err}") from None
    family = "sd2" if text_encoder.config.hidden_size == 1024 else "sd1"
    return assemble_base_model(
        family, unet, vae, [text_encoder], [tokenizer], noise_scheduler, cfg, source=kind, name_or_path=cfg.base, dtype=dtype
    )


def in_dtype(dtype: Any) -> dict[str, Any]:
    """``torch_dtype`` for diffusers' ``from_pretrained``: loading in fp32 and casting afterwards would peak at
    the fp32 size, twice an fp16 UNet (``merge`` promises about one model's memory)."""
    return {} if dtype is None else {"torch_dtype": dtype}


def _variant(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in ("variant", "use_safetensors")}


def read_model_index(folder: Path) -> dict[str, Any]:
    """The folder's ``model_index.json`` ({} when there is none); ModelFilesError naming it when it is broken
    (a damaged builtin cache is then rebuilt, like any other unreadable model file)."""
    import json

    path = folder / "model_index.json"
    if not path.is_file():
        return {}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ModelFilesError(
            f"`model.base`: {path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
            "repair it or copy the model's original model_index.json back"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ModelFilesError(f"`model.base`: cannot read {path} ({err}); copy the model's original file back") from None
    if not isinstance(index, dict):
        raise ModelFilesError(f"`model.base`: {path} must hold a JSON object listing the model's components, "
                              f"not a {type(index).__name__}; copy the model's original file back")
    return index


def refuse_pickled_weights(model_dir: Path, subfolders: tuple[str, ...], setting: str) -> None:
    """ModelLoadError when a weights folder holds pickled weights (.bin, ...) and no .safetensors file.

    Unpickling can run arbitrary code, so folders are loaded from safetensors only (the loaders also pass
    ``use_safetensors=True``); this check names the files instead of a library's generic "not found".
    """
    pickled: list[Path] = []
    for sub in subfolders:
        folder = model_dir / sub
        files = sorted(f for f in folder.iterdir() if f.is_file()) if folder.is_dir() else []
        if not any(f.name.endswith(".safetensors") for f in files):
            pickled += [f for f in files if f.suffix.lower() in PICKLED_WEIGHT_SUFFIXES]
    if not pickled:
        return
    raise ModelLoadError(
        f"`{setting}` {model_dir}: the weights are pickled PyTorch files ({', '.join(str(f) for f in pickled)}) "
        "with no .safetensors beside them. lora-studio only loads safetensors weights from model folders, "
        "because loading a pickle can run code hidden in it. Convert the model once on a machine you trust: "
        "load the folder with diffusers (e.g. `StableDiffusionPipeline.from_pretrained(folder)` or "
        "`AutoencoderKL.from_pretrained(folder)`), save it with `.save_pretrained(new_folder, "
        f"safe_serialization=True)`, and point `{setting}` at the new folder."
    )


def _download_hub_model(repo_id: str, cfg: ModelConfig) -> str:
    from huggingface_hub import snapshot_download

    if _hub_offline():
        raise ModelLoadError(
            f"`model.base` {repo_id!r} looks like a hub id but the hub is offline (HF_HUB_OFFLINE is set). "
            "Download the model elsewhere and pass its local folder path, or use builtin:tiny-sd."
        )
    try:
        return snapshot_download(
            repo_id,
            revision=cfg.revision or None,
            allow_patterns=["model_index.json", "*/config.json", "*/*.json", "*/*.txt", "*/*.safetensors"],
        )
    except Exception as err:  # network errors come in many library-specific types
        raise ModelLoadError(
            f"could not download {repo_id!r} from the Hugging Face hub ({type(err).__name__}: {err}). "
            "If this machine is offline, download the model elsewhere and set `model.base` to its local "
            "folder, or use builtin:tiny-sd."
        ) from None


def assemble_base_model(
    family: str,
    unet: Any,
    vae: Any,
    text_encoders: list[Any],
    tokenizers: list[Any],
    noise_scheduler: Any,
    cfg: ModelConfig,
    source: str,
    name_or_path: str,
    dtype: Any = None,
    extra: dict[str, Any] | None = None,
    zero_terminal_snr: bool = False,
) -> BaseModel:
    """Apply the ``[model]`` options (separate VAE, prediction type, zero terminal SNR), freeze the
    components and read the model constants.

    ``zero_terminal_snr`` is the checkpoint's own request (a ``ztsnr`` marker); ``model.zero_terminal_snr``
    turns it on for any model.
    """
    extra = dict(extra or {})
    if cfg.vae:
        from trainer.models.vae import load_vae  # noqa: PLC0415

        vae = load_vae(cfg.vae, family, dtype=dtype)
        extra["vae"] = cfg.vae
    if cfg.prediction_type:
        noise_scheduler.register_to_config(prediction_type=cfg.prediction_type)
    if cfg.zero_terminal_snr or zero_terminal_snr:
        noise_scheduler = with_zero_terminal_snr(noise_scheduler)
    if vae.config.latent_channels != unet.config.in_channels:
        raise ModelLoadError(
            f"the VAE makes {vae.config.latent_channels}-channel latents but the UNet of {cfg.base!r} takes "
            f"{unet.config.in_channels} channels: `model.vae` must be a VAE for this model family ({family})"
        )
    for module in (unet, vae, *text_encoders):
        module.requires_grad_(False)
        module.eval()
        if dtype is not None and module.dtype != dtype:  # a no-op cast still makes diffusers warn
            module.to(dtype=dtype)
    return BaseModel(
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=list(text_encoders),
        tokenizers=list(tokenizers),
        noise_scheduler=noise_scheduler,
        prediction_type=noise_scheduler.config.prediction_type,
        latent_scale=float(vae.config.scaling_factor),
        latent_shift=float(getattr(vae.config, "shift_factor", None) or 0.0),
        # Each VAE encoder block but the last halves the resolution.
        vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
        source=source,
        name_or_path=name_or_path,
        extra=extra,
    )


def with_zero_terminal_snr(noise_scheduler: Any) -> Any:
    """The same scheduler with its betas rescaled to zero terminal SNR.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", via diffusers'
    ``rescale_betas_zero_snr`` option (the config carries it, so samplers built from it follow). At SNR 0
    the last step's input is pure noise, so an epsilon target is meaningless: v-prediction is required.
    """
    if noise_scheduler.config.prediction_type != "v_prediction":
        raise ModelLoadError(
            "`model.zero_terminal_snr` needs a v-prediction model, but this one predicts "
            f"{noise_scheduler.config.prediction_type!r}: set `model.prediction_type = \"v_prediction\"` "
            "(and train long enough for the model to adapt) or turn zero terminal SNR off"
        )
    return type(noise_scheduler).from_config(noise_scheduler.config, rescale_betas_zero_snr=True)
