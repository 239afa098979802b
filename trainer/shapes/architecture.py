"""The architecture of ``builtin:shapes-sd``: SD 1.x's classes at a size a CPU trains in an hour or two.

64 px images, a 3-block VAE (factor 4: 16x16x4 latents), a 3-level UNet with cross-attention at the two
finer levels, a 3-layer 64-wide CLIP text encoder over the world's tokenizer, and the noise schedule.
"""

from __future__ import annotations

from trainer.shapes import world

LATENT_SIZE = world.IMAGE_SIZE // 4


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=world.IMAGE_SIZE,
        norm_num_groups=16,
    )


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=32,
    )


def make_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=64,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def noise_schedule():
    """SD's scaled-linear betas rescaled to zero terminal SNR, v-prediction, trailing timesteps."""
    from trainer.models.builtin import sd_scheduler

    return sd_scheduler("v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
