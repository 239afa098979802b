"""Optional optimizers, their options, warm-up as a ratio, and warnings for settings a choice does not use."""

from __future__ import annotations

import pytest
import torch

from trainer.config import OptimizerConfig
from trainer.optim import build_lr_scheduler, build_optimizer, optimizer_warnings, warmup_steps

CPU = torch.device("cpu")


def _fit(cfg: OptimizerConfig, steps: int = 30) -> tuple[float, float, torch.optim.Optimizer]:
    """Minimise |p - 1|^2 from p = 0 and return (first loss, last loss, optimizer)."""
    p = torch.nn.Parameter(torch.zeros(4))
    optimizer = build_optimizer(cfg, [p], [], CPU, total_steps=steps)
    scheduler = build_lr_scheduler(cfg, optimizer, steps)
    losses = []
    for _ in range(steps):
        loss = ((p - 1) ** 2).sum()
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return losses[0], losses[-1], optimizer


@pytest.mark.parametrize(
    ("name", "extra"),
    [("lion", {}), ("adafactor", {}), ("adamw_schedulefree", {})],
)
def test_optional_optimizers_minimise(name, extra):
    pytest.importorskip({"lion": "lion_pytorch", "adafactor": "transformers", "adamw_schedulefree": "schedulefree"}[name])
    cfg = OptimizerConfig(name=name, learning_rate=0.05, weight_decay=0.0, **extra)
    first, last, optimizer = _fit(cfg)
    assert last < first * 0.5, f"{name} {extra}: loss {first:.3f} -> {last:.3f}"
    expected = {"lion": "Lion", "adafactor": "Adafactor", "adamw_schedulefree": "AdamWScheduleFree"}[name]
    assert type(optimizer).__name__ == expected


def test_adafactor_relative_step_sets_its_own_step_size_and_reports_it():
    pytest.importorskip("transformers")
    cfg = OptimizerConfig(name="adafactor", learning_rate=123.0, adafactor_relative_step=True, weight_decay=0.0)
    p = torch.nn.Parameter(torch.full((4,), 0.5))
    optimizer = build_optimizer(cfg, [p], [], CPU)
    scheduler = build_lr_scheduler(cfg, optimizer, 10)
    ((p - 1) ** 2).sum().backward()
    optimizer.step()
    scheduler.step()
    # Adafactor's relative step: min(1e-2, 1/sqrt(step)) x RMS(p) with scale_parameter: 1e-2 x 0.5.
    assert scheduler.get_last_lr()[0] == pytest.approx(5e-3), "the schedule reports Adafactor's step, not learning_rate"
    assert 0.5 < p.mean().item() < 0.52


def test_prodigy_options_reach_the_optimizer():
    cfg = OptimizerConfig(name="prodigy", learning_rate=1.0, prodigy_d_coef=0.5, prodigy_safeguard_warmup=True,
                          prodigy_bias_correction=True)
    group = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))], [], CPU).param_groups[0]
    assert (group["d_coef"], group["safeguard_warmup"], group["use_bias_correction"]) == (0.5, True, True)


def test_missing_optimizer_package_names_the_field_and_the_fix(monkeypatch):
    import sys

    from trainer.errors import UserFacingError

    monkeypatch.setitem(sys.modules, "lion_pytorch", None)  # import then raises ImportError
    with pytest.raises(UserFacingError, match=r'`optimizer.name = "lion"` needs the lion-pytorch package: pip install lion-pytorch'):
        build_optimizer(OptimizerConfig(name="lion"), [torch.nn.Parameter(torch.zeros(2))], [], CPU)


def test_warmup_ratio_is_a_fraction_of_all_steps():
    cfg = OptimizerConfig(learning_rate=1.0, scheduler="constant_with_warmup", warmup_ratio=0.1)
    assert warmup_steps(cfg, 200) == 20
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(cfg, [p], [], CPU)
    scheduler = build_lr_scheduler(cfg, optimizer, 200)
    lrs = []
    for _ in range(25):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.5) and lrs[20] == 1.0 and lrs[24] == 1.0


def test_schedule_free_warms_up_inside_the_optimizer_from_the_ratio():
    pytest.importorskip("schedulefree")
    cfg = OptimizerConfig(name="adamw_schedulefree", warmup_ratio=0.25)
    optimizer = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], [], CPU, total_steps=40)
    assert optimizer.param_groups[0]["warmup_steps"] == 10
    assert build_lr_scheduler(cfg, optimizer, 40).get_last_lr()[0] == cfg.learning_rate, "no second warm-up"


def test_settings_an_optimizer_or_schedule_does_not_use_are_warned():
    assert any("constant_with_warmup" in w for w in optimizer_warnings(OptimizerConfig(warmup_steps=50)))
    assert any("`optimizer.beta2`" in w for w in optimizer_warnings(OptimizerConfig(name="adafactor", beta2=0.99)))
    assert any("`optimizer.prodigy_d_coef`" in w for w in optimizer_warnings(OptimizerConfig(prodigy_d_coef=0.5)))
    assert optimizer_warnings(OptimizerConfig()) == []


def test_preflight_shows_the_warnings_before_the_run(make_config):
    from trainer.preflight import preflight

    report = preflight(make_config("warm", optimizer__warmup_steps=10))
    assert report.ok and any("constant_with_warmup" in w for w in report.warnings), report.warnings
