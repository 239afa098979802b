"""``builtin:tiny-sd``: a tiny, deterministic, random-weight SD 1.x pipeline built offline in seconds.

No weights can be downloaded in CI or on a fresh machine, so tests, the quick start and the UI default
train on this. Every component is a real diffusers/transformers class at a tiny size (as diffusers'
own tests do), seeded before construction, so the same bytes come out on every machine. The tokenizer
is a real CLIP BPE tokenizer whose vocabulary (the 256 byte symbols, their end-of-word forms and a few
merges) is generated here. The VAE has two blocks, so it downsamples by 2, not SD's 8: code that
hard-codes 8 fails on it, which is the point.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainer.cache_folder import CacheFolder

BUILTIN_VERSION = "1"
VARIANTS = {"builtin:tiny-sd": "epsilon", "builtin:tiny-sd-v": "v_prediction"}
SDXL_VARIANTS = {"builtin:tiny-sdxl": "epsilon"}
# Trained models whose weights ship inside the package (see trainer/shapes/base_training.py for the recipe).
SHIPPED = {"builtin:shapes-sd": Path(__file__).parent / "shapes_sd"}
BUILTINS = (*SHIPPED, *VARIANTS, *SDXL_VARIANTS)
# The classifier-free guidance a shipped model draws best at, as a model card would say. SD's usual 7.5
# over-drives this small model (gray backgrounds turn green, shapes smear): its held-out captions are drawn
# right (shape and colour) at 3 in 81% of images against 59% at 7.5 (`python -m trainer.shapes.evaluate`).
RECOMMENDED_GUIDANCE = {"builtin:shapes-sd": 3.0}


def recommended_guidance(base: str, default: float) -> float:
    """The guidance ``base`` draws best at; ``default`` for a model that names none."""
    return RECOMMENDED_GUIDANCE.get(base, default)


def cache_root() -> Path:
    """Where built models live: $LORA_STUDIO_CACHE, else ~/.cache/lora-studio."""
    env = os.environ.get("LORA_STUDIO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lora-studio"


def builtin_cache(name: str) -> CacheFolder:
    """The cache entry of a builtin model: its folder, and how to build it (see ``trainer.cache_folder``)."""
    if name not in BUILTINS:
        raise ValueError(f"unknown builtin model {name!r}; builtins: {', '.join(BUILTINS)}")
    folder = cache_root() / "builtin" / f"{name.split(':', 1)[1]}-v{BUILTIN_VERSION}"
    if name in SHIPPED:  # new shipped weights (a package update) get a new cache entry, not a stale one
        folder = folder.with_name(f"{folder.name}-{shipped_digest(SHIPPED[name])}")

    def build(tmp: Path) -> None:
        if name in SHIPPED:
            upcast_shipped_model(SHIPPED[name], tmp)
        elif name in SDXL_VARIANTS:
            from trainer.models.builtin_sdxl import build_tiny_sdxl  # noqa: PLC0415

            build_tiny_sdxl(tmp, prediction_type=SDXL_VARIANTS[name])
        else:
            build_tiny_sd(tmp, prediction_type=VARIANTS[name])

    return CacheFolder(folder, f"builtin model {name}", build)


def shipped_digest(folder: Path) -> str:
    """8 hex digits of the shipped files' names and bytes (about 8 MB: milliseconds to read)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def upcast_shipped_model(source: Path, tmp: Path) -> None:
    """Write the shipped fp16 pipeline as an fp32 diffusers folder, as the other builtins are stored.

    The package holds fp16 to stay small; training and sampling code expects the float32 weights every
    other base loads with, so the cache holds the upcast copy.
    """
    import torch
    from diffusers import StableDiffusionPipeline

    if not (source / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the shipped weights of this builtin model are missing from {source}; reinstall lora-studio "
            "(pip install -e .) or run `python -m trainer.shapes.base_training` to train them"
        )
    pipe = StableDiffusionPipeline.from_pretrained(source, torch_dtype=torch.float32, safety_checker=None)
    pipe.save_pretrained(tmp, safe_serialization=True)


def builtin_model_path(name: str) -> Path:
    """Path to the diffusers folder of a builtin model, complete: built (or repaired) on first use."""
    return builtin_cache(name).ensure()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table (same algorithm as CLIPTokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


# Frequent English letter pairs, so that common words take fewer than one token per letter.
_MERGES = ["t h", "i n", "e r", "a n", "r e", "o n", "e n", "a t", "o u", "e d", "o r", "i s", "s t", "a r"]


def write_tokenizer_files(folder: Path) -> None:
    """A CLIP tokenizer (vocab.json, merges.txt, configs) generated without any download."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    for merge in _MERGES:
        a, b = merge.split()
        vocab_list += [a + b, a + b + "</w>"]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    merges = ["#version: 0.2"] + _MERGES + [f"{m.split()[0]} {m.split()[1]}</w>" for m in _MERGES]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon") -> None:
    """Write a tiny SD 1.x diffusers pipeline folder with deterministic random weights."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    write_tokenizer_files(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = tiny_vae(scaling_factor=0.18215)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer))
    scheduler = sd_scheduler(prediction_type)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


# Parts shared with ``builtin_sdxl``; each seeds torch itself so a model's bytes never depend on call order.


def tiny_vae(scaling_factor: float) -> Any:
    """A two-block VAE (downsample factor 2) with seeded random weights."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        latent_channels=4,
        sample_size=64,
        norm_num_groups=32,
        scaling_factor=scaling_factor,
    )


def tiny_clip_config(tokenizer: Any, **overrides: Any) -> Any:
    """A 5-layer, 32-wide CLIP text config over the generated vocabulary."""
    from transformers import CLIPTextConfig

    settings = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 5,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5,
        "projection_dim": 32,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        **overrides,
    }
    return CLIPTextConfig(**settings)


def sd_scheduler(prediction_type: str, **overrides: Any) -> Any:
    """The DDPM training schedule SD 1.x / 2.x / SDXL share (scaled-linear betas 0.00085 → 0.012)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        steps_offset=1,
        prediction_type=prediction_type,
        **overrides,
    )
