"""Text conditioning for the UNet: captions → encoder hidden states (+ SDXL's added conditions).

Split in two so text-encoder outputs can be cached per caption while SDXL's per-image size/crop
conditioning is still built per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TextEmbeddings:
    """Text-encoder outputs for a batch: (B, 77, D) hidden states and, for SDXL, (B, D') pooled."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> TextEmbeddings:
        pooled = self.pooled.to(device, dtype) if self.pooled is not None else None
        return TextEmbeddings(self.hidden_states.to(device, dtype), pooled)

    def select(self, index: int) -> TextEmbeddings:
        pooled = self.pooled[index : index + 1] if self.pooled is not None else None
        return TextEmbeddings(self.hidden_states[index : index + 1], pooled)

    @staticmethod
    def cat(items: list[TextEmbeddings]) -> TextEmbeddings:
        pooled = torch.cat([i.pooled for i in items]) if items[0].pooled is not None else None
        return TextEmbeddings(torch.cat([i.hidden_states for i in items]), pooled)


def tokenize(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's window (77 for CLIP)."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode_text(model: Any, captions: list[str], device: torch.device) -> TextEmbeddings:
    """Run the text encoder(s); gradients flow when their LoRA is being trained."""
    if model.family == "sdxl":
        from trainer.models.sdxl import encode_sdxl_text  # noqa: PLC0415 - SDXL-only path

        hidden, pooled = encode_sdxl_text(model, captions, device)
        return TextEmbeddings(hidden, pooled)
    ids = tokenize(model.tokenizer, captions).to(device)
    clip_skip = getattr(model, "extra", {}).get("clip_skip", 1)
    if clip_skip > 1:
        # sd-scripts (custom_train_functions.get_unweighted_text_embeddings): the N-th hidden state from the
        # end, through the final layer norm that the last layer's output gets.
        out = model.text_encoder(ids, output_hidden_states=True, return_dict=True)
        text_model = getattr(model.text_encoder, "text_model", model.text_encoder)  # transformers 5 flattened it
        return TextEmbeddings(text_model.final_layer_norm(out.hidden_states[-clip_skip]))
    hidden = model.text_encoder(ids)[0]  # (B, 77, D) last hidden state, as SD 1.x/2.x were trained
    return TextEmbeddings(hidden)


def set_clip_skip(model: Any, clip_skip: int) -> None:
    """Make ``encode_text`` (training, caches, validation) and previews use the ``clip_skip``-th layer from the end."""
    if clip_skip > 1 and model.family == "sdxl":
        from trainer.errors import UserFacingError  # noqa: PLC0415

        raise UserFacingError(
            "`training.clip_skip` applies to SD 1.x / 2.x; SDXL already uses its text encoders' penultimate "
            "layer: set it to 1"
        )
    model.extra["clip_skip"] = clip_skip


def unet_conditioning(model: Any, text: TextEmbeddings, batch: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Keyword arguments for ``unet(noisy, t, **kwargs)`` beyond the latents and timesteps."""
    kwargs: dict[str, Any] = {"encoder_hidden_states": text.hidden_states.to(dtype)}
    if model.family == "sdxl":
        from trainer.models.sdxl import sdxl_time_ids  # noqa: PLC0415

        time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
        kwargs["added_cond_kwargs"] = {
            "text_embeds": text.pooled.to(dtype),
            "time_ids": time_ids.to(text.hidden_states.device, dtype),
        }
    return kwargs
