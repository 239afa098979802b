"""Full-size SD 1.5 / SDXL architectures with random weights, as diffusers folders, for speed and memory.

Random weights cost the same compute as trained ones, and nothing can be downloaded here. The
tokenizers are lora-studio's generated CLIP tokenizers (a small vocabulary: the embedding table is
smaller than CLIP's 49,408 rows, a few MB of difference and no change in step time).

    python bench/random_models.py sd15 /tmp/sd15-random [--device cuda]
    python bench/random_models.py sd15-small /tmp/sd15-small   # SD 1.5's layout at 1/5 of the widths: CPU benches
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch


def sd15_components(vocab_size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
    )
    vae = sd_vae(AutoencoderKL, 512)
    text = CLIPTextModel(clip_l_config(CLIPTextConfig, vocab_size))
    return unet, vae, [text]


def sd15_small_components(vocab_size: int):
    """SD 1.5's UNet layout (4 levels, 2 layers a block, cross-attention at 768) with channels 64-256: the
    "larger random model" of the CPU benches (~40x builtin:tiny-sd's UNet compute, ~1/25 of SD 1.5's)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(64, 128, 256, 256),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
        layers_per_block=2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        sample_size=512, scaling_factor=0.18215,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=768, intermediate_size=1536, num_hidden_layers=2, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    ))
    return unet, vae, [text]


def sd_vae(cls, sample_size: int):
    return cls(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=sample_size,
        scaling_factor=0.18215 if sample_size == 512 else 0.13025,
    )


def clip_l_config(cls, vocab_size: int):
    return cls(
        vocab_size=vocab_size, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
    )


def sdxl_components(vocab_size: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        layers_per_block=2,
    )
    vae = sd_vae(AutoencoderKL, 1024)
    te1 = CLIPTextModel(clip_l_config(CLIPTextConfig, vocab_size))
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
        )
    )
    return unet, vae, [te1, te2]


def build(arch: str, out: Path, device: str = "cpu") -> Path:
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    from trainer.models.builtin import write_tokenizer_files

    out = Path(out)
    if (out / "model_index.json").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_tokenizer_files(tmp / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tmp / "tokenizer")
    torch.manual_seed(0)
    with torch.device(device):  # building 2.6B parameters is much faster on the GPU
        components_of = {"sd15": sd15_components, "sd15-small": sd15_small_components, "sdxl": sdxl_components}
        unet, vae, encoders = components_of[arch](len(tokenizer))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)
    components = {"unet": unet, "vae": vae, "scheduler": scheduler, "tokenizer": tokenizer, "text_encoder": encoders[0]}
    if arch in ("sd15", "sd15-small"):
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        from diffusers import StableDiffusionXLPipeline

        shutil.copytree(tmp / "tokenizer", tmp / "tokenizer_2")
        pipe = StableDiffusionXLPipeline(**components, text_encoder_2=encoders[1], tokenizer_2=CLIPTokenizer.from_pretrained(tmp / "tokenizer_2"))
    pipe.to(torch.float16)
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=["sd15", "sd15-small", "sdxl"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    print(build(parser.parse_args().arch, parser.parse_args().out, parser.parse_args().device))
