"""LoRA injection: identity at init, the alpha/rank-scaled delta, which layers are adapted."""

from __future__ import annotations

import pytest
import torch

from trainer.config import Config
from trainer.errors import UserFacingError
from trainer.models.loading import load_base_model
from trainer.network import inject_lora


@pytest.fixture
def model():
    return load_base_model(Config().model)


def unet_output(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 32, 32, generator=gen)
    h = torch.randn(1, 77, 32, generator=gen)
    with torch.no_grad():
        return model.unet(x, torch.tensor([500]), h).sample


def test_identity_at_init(model):
    before = unet_output(model)
    inject_lora(model, Config().network)
    torch.testing.assert_close(unet_output(model), before, rtol=0, atol=0)


def test_delta_is_alpha_over_rank_times_b_a(model):
    cfg = Config().network
    cfg.rank, cfg.alpha = 4, 2.0
    inject_lora(model, cfg)
    layer = model.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    torch.manual_seed(1)
    torch.nn.init.normal_(layer.lora_B["default"].weight)
    x = torch.randn(3, layer.in_features)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        delta = layer(x) - layer.base_layer(x)
    torch.testing.assert_close(delta, (cfg.alpha / cfg.rank) * x @ (b @ a).T, rtol=1e-4, atol=1e-5)


def test_presets_choose_layers(model):
    cfg = Config().network
    cfg.unet_targets = "kohya"
    cfg.train_text_encoder, cfg.text_encoder_mlp = True, True
    net = inject_lora(model, cfg)
    unet_names = net.adapted_modules["unet"]
    assert any(n.endswith("attn2.to_k") for n in unet_names)
    assert any(n.endswith("proj_in") for n in unet_names) and any(n.endswith("ff.net.2") for n in unet_names)
    te_names = net.adapted_modules["text_encoder"]
    assert any(n.endswith("self_attn.q_proj") for n in te_names) and any(n.endswith("mlp.fc1") for n in te_names)
    trainable = {n for n, p in model.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable), "only LoRA parameters train"
    assert all(p.dtype == torch.float32 for p in net.unet_params)


def test_attention_preset_leaves_feed_forward_alone(model):
    net = inject_lora(model, Config().network)
    assert not any("ff.net" in n or "proj_in" in n for n in net.adapted_modules["unet"])
    assert "text_encoder" not in net.adapted_modules


def test_unknown_custom_target_is_named(model):
    cfg = Config().network
    cfg.unet_targets, cfg.unet_target_modules = "custom", ["to_q", "to_qq"]
    with pytest.raises(UserFacingError, match="`network.unet_target_modules`: no layer named 'to_qq'"):
        inject_lora(model, cfg)


def test_rank_above_layer_width_is_warned_with_counts_and_effective_rank(model):
    # builtin:tiny-sd: cross-attention to_k/to_v map the 32-wide text states to 64 (12 of the 48
    # attention layers); the text encoder is 32 wide throughout (20 attention layers).
    cfg = Config().network
    cfg.rank = 64
    net = inject_lora(model, cfg, train_text_encoder=True)
    unet, text = net.warnings
    assert "`network.rank` 64 is above the width of 12 of the 48 LoRA layers in the unet" in unet
    assert "min(in, out): 32 (12 layers)" in unet and "effective rank 32, not 64" in unet
    assert "`network.rank` 32 or less avoids it" in unet
    assert "20 of the 20 LoRA layers in the text_encoder" in text and "effective rank 32" in text


def test_rank_within_every_layer_width_warns_nothing(model):
    assert inject_lora(model, Config().network, train_text_encoder=True).warnings == [], "rank 16 fits 32-wide layers"


def test_conv_width_counts_the_kernel(model):
    # conv_in is (out 32, in 4, 3, 3): ΔW flattens to 32 x 36, so its width is 32, not 4.
    cfg = Config().network
    cfg.unet_targets, cfg.unet_target_modules, cfg.rank = "custom", ["conv_in"], 8
    assert inject_lora(model, cfg).warnings == [], "rank 8 fits a 32 x 36 conv update"


def test_conv_rank_above_width_warns(model):
    cfg = Config().network
    cfg.unet_targets, cfg.unet_target_modules, cfg.rank = "custom", ["conv_in"], 40
    (warning,) = inject_lora(model, cfg).warnings
    assert "1 of the 1 LoRA layers in the unet (min(in, out): 32 (1 layer))" in warning
