"""EMA of the adapter weights: the update rule by hand, exact swap in and out, checkpoints."""

from __future__ import annotations

import pytest
import torch

from trainer.ema import AdapterEMA, ema_decay_at, inference_weights


def _params(value: float) -> dict[str, torch.nn.Parameter]:
    return {"unet.lora_A": torch.nn.Parameter(torch.full((2,), value))}


def test_decay_warms_up_as_diffusers_ema_model():
    assert ema_decay_at(1, 0.999, warmup=True) == 0.0, "the first update copies the weights"
    assert ema_decay_at(2, 0.999, warmup=True) == pytest.approx(2 / 11)  # (1 + 1) / (10 + 1)
    assert ema_decay_at(11, 0.999, warmup=True) == pytest.approx(11 / 20)
    assert ema_decay_at(100_000, 0.999, warmup=True) == 0.999, "capped at ema_decay"
    assert ema_decay_at(2, 0.9, warmup=False) == 0.9


def test_update_rule_by_hand():
    params = _params(1.0)
    ema = AdapterEMA(params, decay=0.5, warmup=False, on_cpu=True)
    ema.update()  # d = 0: shadow = 1
    with torch.no_grad():
        params["unet.lora_A"].fill_(3.0)
    ema.update()  # d = 0.5: 0.5 * 1 + 0.5 * 3 = 2
    with torch.no_grad():
        params["unet.lora_A"].fill_(4.0)
    ema.update()  # 0.5 * 2 + 0.5 * 4 = 3
    assert ema.shadow["unet.lora_A"].tolist() == [3.0, 3.0]
    assert ema.num_updates == 3


def test_applied_swaps_the_average_in_and_restores_the_weights_exactly():
    params = _params(1.0)
    ema = AdapterEMA(params, decay=0.5, warmup=False, on_cpu=True)
    ema.update()
    with torch.no_grad():
        params["unet.lora_A"].copy_(torch.tensor([0.1, 0.7]))
    before = params["unet.lora_A"].detach().clone()
    with inference_weights(params, optimizer=None, ema=ema):
        assert params["unet.lora_A"].tolist() == [1.0, 1.0], "inside: the average"
    assert torch.equal(params["unet.lora_A"], before), "after: the training weights, bit for bit"


def test_load_restores_the_average_and_refuses_a_checkpoint_without_it():
    from trainer.errors import UserFacingError

    ema = AdapterEMA(_params(0.0), decay=0.9, warmup=True, on_cpu=True)
    ema.load({"unet.lora_A": torch.tensor([5.0, 6.0])}, 7, "ckpt")
    assert ema.shadow["unet.lora_A"].tolist() == [5.0, 6.0] and ema.num_updates == 7
    with pytest.raises(UserFacingError, match="no EMA weights for unet.lora_A"):
        ema.load({}, 7, "ckpt")


def test_schedule_free_weights_are_evaluated_and_restored_exactly():
    schedulefree = pytest.importorskip("schedulefree")
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4096))
    opt = schedulefree.AdamWScheduleFree([p], lr=0.1)
    opt.train()
    for _ in range(10):
        (p**2).sum().backward()
        opt.step()
        opt.zero_grad()
    trained = p.detach().clone()
    with inference_weights({"unet.lora_A": p}, opt, ema=None):
        inside = p.detach().clone()
    assert not torch.equal(inside, trained), "previews and exports see schedule-free's averaged point"
    assert torch.equal(p.detach(), trained), "and training continues from its own weights, bit for bit"
    assert opt.param_groups[0]["train_mode"]
