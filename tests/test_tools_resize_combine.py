"""``resize`` and ``combine``: ΔW per module is the input's rank-R SVD truncation (resize, combine --rank)
or exactly Σ wᵢ ΔWᵢ (combine), the energy reported is the one kept, and bad requests are refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from test_export import export, lora_model

from trainer.cli import main
from trainer.config import ModelConfig
from trainer.errors import UserFacingError
from trainer.export.formats import read_adapter_file
from trainer.models.loading import load_base_model
from trainer.tools.combine import combine_adapters
from trainer.tools.common import WeightedAdapter
from trainer.tools.lora_files import module_delta
from trainer.tools.resize import resize_adapter


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = load_base_model(ModelConfig(base="builtin:tiny-sd"))
    out = tmp_path_factory.mktemp("loras")
    paths = []
    for seed, rank, alpha, fmt in ((0, 8, 4.0, "kohya"), (1, 4, 4.0, "kohya"), (2, 8, 8.0, "diffusers")):
        model, cfg = lora_model(base, rank=rank, alpha=alpha, seed=seed)
        cfg.run.name = f"l{seed}"
        paths.append(export(model, cfg, out, fmt=fmt)[0].path)
    return paths


def _deltas(path):
    return {name: module_delta(m).double() for name, m in read_adapter_file(path).modules.items()}


def _truncation(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """The rank-R SVD truncation, computed here with a full SVD (the tool factors up and down instead)."""
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def assert_truncation(got: torch.Tensor, delta: torch.Tensor, rank: int, name: str) -> None:
    """``got`` is the rank-R SVD truncation of ``delta``. Where σ_R and σ_R+1 nearly tie, the truncation is
    ill-conditioned (fp32 rounding of ε moves the singular vectors by ε / gap), so there the equivalent
    Eckart–Young statement is checked: rank ≤ R and the misfit equals the tail Σ_{i>R} σ²."""
    sv = torch.linalg.svdvals(delta)
    if rank >= len(sv) or sv[rank - 1] - sv[rank] > 0.05 * sv[0]:
        torch.testing.assert_close(got, _truncation(delta, rank), rtol=1e-5, atol=1e-6, msg=f"{name}: not the rank-{rank} truncation")
        return
    assert torch.linalg.matrix_rank(got, rtol=1e-6) <= rank, name
    tail = float(sv[rank:].pow(2).sum())
    assert float((delta - got).pow(2).sum()) == pytest.approx(tail, rel=1e-4, abs=1e-10), f"{name}: misfit is not the SVD tail"


def test_resize_is_the_svd_truncation_with_the_energy_reported(files, tmp_path):
    out = tmp_path / "r.safetensors"
    result = resize_adapter(files[0], out, rank=3)
    before, after = _deltas(files[0]), _deltas(out)
    assert set(before) == set(after)
    for row in result.rows:
        assert_truncation(after[row.name], before[row.name], 3, row.name)
        sv = torch.linalg.svdvals(before[row.name])
        assert row.energy == pytest.approx(float(sv[:3].pow(2).sum() / sv.pow(2).sum()), rel=1e-5), row.name
    total = sum(float(d.pow(2).sum()) for d in after.values()) / sum(float(d.pow(2).sum()) for d in before.values())
    assert result.energy == pytest.approx(total, rel=1e-5), "overall energy is ‖ΔW'‖²/‖ΔW‖² summed over modules"
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == "3" and float(meta["ss_network_alpha"]) == pytest.approx(4.0 / 8 * 3)


def test_dynamic_resize_picks_sd_scripts_ranks_and_writes_dynamic(files, tmp_path):
    out = tmp_path / "d.safetensors"
    result = resize_adapter(files[0], out, rank=8, dynamic="sv_fro", param=0.8)
    before, after = _deltas(files[0]), read_adapter_file(out).modules
    for row in result.rows:
        sv = torch.linalg.svdvals(before[row.name])
        fro = (sv.pow(2).cumsum(0) / sv.pow(2).sum()).sqrt()
        want = int((fro < 0.8).sum()) + 1  # smallest rank whose Frobenius norm reaches 80%
        assert after[row.name].rank == row.rank == want, f"{row.name}: rank {row.rank}, sv_fro 0.8 gives {want}"
    assert len({r.rank for r in result.rows}) > 1, "random adapters should get different ranks per module"
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "Dynamic", "sd-scripts marks dynamic files so"


def test_resize_keeps_the_diffusers_format(files, tmp_path):
    out = tmp_path / "rd.safetensors"
    resize_adapter(files[2], out, rank=2)
    before, after = _deltas(files[2]), _deltas(out)
    assert read_adapter_file(out).format == "diffusers"
    for name, delta in before.items():
        assert_truncation(after[name], delta, 2, name)


def test_resize_refuses_rank_larger_than_the_module_and_no_op(files, tmp_path):
    with pytest.raises(UserFacingError, match="larger than module .* allows"):
        resize_adapter(files[0], tmp_path / "x.safetensors", rank=4096)
    with pytest.raises(UserFacingError, match="already has rank 8"):
        resize_adapter(files[0], tmp_path / "x.safetensors", rank=8)


def test_a_wrong_resize_fails_its_check(files, tmp_path, monkeypatch):
    """Keep the wrong singular vectors (the smallest) and the Eckart–Young check must refuse the file."""
    import trainer.tools.resize as resize
    from trainer.tools.lowrank import LowRank

    def smallest(u, s, vh, rank):
        return LowRank(up=u[:, -rank:] * s[-rank:], down=vh[-rank:], sv=s)

    monkeypatch.setattr(resize, "truncate", smallest)
    with pytest.raises(UserFacingError, match="check failed for module"):
        resize_adapter(files[0], tmp_path / "bad.safetensors", rank=3)


def test_combine_exact_is_the_weighted_sum(files, tmp_path):
    out = tmp_path / "c.safetensors"
    result = combine_adapters([WeightedAdapter(files[0], 0.5), WeightedAdapter(files[1], -1.5)], out)
    a, b, c = _deltas(files[0]), _deltas(files[1]), _deltas(out)
    for name in a:
        torch.testing.assert_close(c[name], 0.5 * a[name] - 1.5 * b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert read_adapter_file(out).modules[name].rank == 12, "exact combine concatenates ranks 8 + 4"
    assert result.energy == 1.0


def test_combine_to_rank_is_the_truncated_sum(files, tmp_path):
    out = tmp_path / "c4.safetensors"
    result = combine_adapters([WeightedAdapter(files[0], 1.0), WeightedAdapter(files[1], 1.0)], out, rank=4)
    a, b, c = _deltas(files[0]), _deltas(files[1]), _deltas(out)
    for row in result.rows:
        total = a[row.name] + b[row.name]
        assert_truncation(c[row.name], total, 4, row.name)
        sv = torch.linalg.svdvals(total)
        assert row.energy == pytest.approx(float(sv[:4].pow(2).sum() / sv.pow(2).sum()), rel=1e-5)


def test_combine_refuses_mixed_formats_and_too_large_rank(files, tmp_path):
    with pytest.raises(UserFacingError, match="different formats.*convert"):
        combine_adapters([WeightedAdapter(files[0]), WeightedAdapter(files[2])], tmp_path / "x.safetensors")
    with pytest.raises(UserFacingError, match="larger than module"):
        combine_adapters([WeightedAdapter(files[0]), WeightedAdapter(files[1])], tmp_path / "x.safetensors", rank=5000)


def test_cli_resize_prints_the_table_and_ends_the_events(files, tmp_path, capsys):
    out, events = tmp_path / "r.safetensors", tmp_path / "e.jsonl"
    assert main(["resize", str(files[0]), "--rank", "2", "--out", str(out), "--events", str(events)]) == 0
    printed = capsys.readouterr().out
    assert "energy kept" in printed and "lora_unet_" in printed
    last = json.loads(events.read_text().splitlines()[-1])
    assert last == {**last, "event": "finished", "ok": True, "output": str(out)}
    assert main(["resize", str(files[0]), "--rank", "2", "--out", str(out)]) == 2, "output exists"
    assert main(["combine", str(files[0]), f"{files[1]}:0.5", "--out", str(tmp_path / "c.safetensors")]) == 0
