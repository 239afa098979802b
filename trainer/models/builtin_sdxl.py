"""``builtin:tiny-sdxl``: a tiny, deterministic, random-weight SDXL-layout pipeline built offline in seconds.

Same idea as ``builtin:tiny-sd`` (real classes at tiny sizes, seeded, as diffusers' own SDXL tests build
them), with everything that makes SDXL different: two text encoders (``CLIPTextModel`` and
``CLIPTextModelWithProjection``) whose penultimate hidden states are concatenated for cross attention, and a
UNet with ``addition_embed_type="text_time"`` that takes the pooled text embedding plus the six size/crop
numbers. Both tokenizers use the generated tiny vocabulary; the second pads with ``!`` like SDXL's.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainer.models.builtin import sd_scheduler, tiny_clip_config, tiny_vae, write_tokenizer_files

TEXT_DIM = 32  # hidden size of each text encoder; cross attention sees both: 2 * TEXT_DIM
TIME_EMBED_DIM = 8  # per size/crop number; SDXL's is 256


def _write_tokenizer_2(folder: Path) -> None:
    write_tokenizer_files(folder)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = json.loads((folder / name).read_text(encoding="utf-8"))
        data["pad_token"] = "!"
        (folder / name).write_text(json.dumps(data, indent=2), encoding="utf-8")


def build_tiny_sdxl(folder: Path, prediction_type: str = "epsilon") -> None:
    """Write a tiny SDXL diffusers pipeline folder with deterministic random weights."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    write_tokenizer_files(folder / "tokenizer")
    _write_tokenizer_2(folder / "tokenizer_2")
    # local_files_only is recorded in the saved tokenizer_config.json: pin it so the bytes never depend on
    # whether HF_HUB_OFFLINE happened to be set.
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(folder / "tokenizer_2", local_files_only=True)

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=2 * TEXT_DIM,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # six size/crop numbers, each embedded to TIME_EMBED_DIM, plus text_encoder_2's pooled projection
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_DIM,
        norm_num_groups=32,
    )
    vae = tiny_vae(scaling_factor=0.13025)
    encoders = []
    for cls, tok in ((CLIPTextModel, tokenizer), (CLIPTextModelWithProjection, tokenizer_2)):
        torch.manual_seed(0)
        encoders.append(cls(tiny_clip_config(tok, hidden_size=TEXT_DIM, projection_dim=TEXT_DIM, hidden_act="gelu")))
    scheduler = sd_scheduler(prediction_type, timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
