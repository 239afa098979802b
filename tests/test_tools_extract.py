"""``extract``: from a base and the base with a known LoRA merged in, the extracted LoRA's ΔW is that
LoRA's ΔW in every layer it changed (Linear and conv), and nothing else; bad requests are refused."""

from __future__ import annotations

import pytest
import torch
from test_export import export, lora_model

from trainer.config import ModelConfig
from trainer.errors import UserFacingError
from trainer.export.formats import read_adapter_file, resolve_modules
from trainer.models.loading import load_base_model
from trainer.tools.common import WeightedAdapter
from trainer.tools.extract import extract_lora
from trainer.tools.lora_files import module_delta
from trainer.tools.merge import merge_into_base

BASE = "builtin:tiny-sd"


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A LoCon (attention and ResNet convolutions, text encoder) of rank 4 with B ~ N(0, 0.1), merged into the
    base in fp32: the "fine-tune" whose difference from the base is exactly that LoRA."""
    out = tmp_path_factory.mktemp("extract")
    base = load_base_model(ModelConfig(base=BASE))
    model, cfg = lora_model(base, network_type="locon", rank=4, alpha=2.0)
    cfg.run.name = "known"
    lora = export(model, cfg, out)[0].path
    tuned = out / "tuned"
    merge_into_base(BASE, [WeightedAdapter(lora)], tuned, "diffusers", "fp32")
    return base, lora, tuned


def _by_layer(path, base):
    modules, unknown = resolve_modules(read_adapter_file(path), base)
    assert not unknown
    return {(m.component, m.path): m for m in modules}


def test_extract_recovers_the_merged_lora(known, tmp_path):
    base, lora, tuned = known
    out = tmp_path / "x.safetensors"
    result = extract_lora(BASE, str(tuned), out, rank=4, dtype="fp32")
    want, got = _by_layer(lora, base), _by_layer(out, base)
    assert set(got) == set(want), "exactly the layers the LoRA changed are extracted"
    assert any(m.down.dim() == 4 and m.down.shape[-1] == 3 for m in got.values()), "3x3 convolutions are extracted"
    for key, m in want.items():
        # Merging in fp32 rounds W + ΔW once: |error| ≤ u32·|W'| per weight, far below ΔW itself.
        torch.testing.assert_close(module_delta(got[key]), module_delta(m), rtol=0, atol=2e-6,
                                   msg=f"{'.'.join(key)}: extracted ΔW is not the merged LoRA's")
    assert result.energy == pytest.approx(1.0, abs=1e-9), "a rank-4 LoRA is all kept at rank 4"


def test_extract_at_lower_rank_keeps_the_reported_energy(known, tmp_path):
    base, lora, tuned = known
    out = tmp_path / "x2.safetensors"
    result = extract_lora(BASE, str(tuned), out, rank=2, dtype="fp32")
    want = _by_layer(lora, base)
    kept = sum(float(module_delta(m).double().pow(2).sum()) for m in _by_layer(out, base).values())
    total = sum(float(module_delta(m).double().pow(2).sum()) for m in want.values())
    assert result.energy == pytest.approx(kept / total, rel=1e-4), "reported energy is ‖ΔW'‖² / ‖ΔW‖²"
    assert result.energy < 0.99


def test_extract_refuses_bad_requests(known, tmp_path):
    _, _, tuned = known
    with pytest.raises(UserFacingError, match="larger than layer"):
        extract_lora(BASE, str(tuned), tmp_path / "a.safetensors", rank=4096)
    with pytest.raises(UserFacingError, match="nothing to extract"):
        extract_lora(BASE, BASE, tmp_path / "b.safetensors", rank=4)
    with pytest.raises(UserFacingError, match="is SD 1.x but TUNED"):
        extract_lora(BASE, "builtin:tiny-sdxl", tmp_path / "c.safetensors", rank=4)
    (tmp_path / "d.safetensors").write_bytes(b"x")
    with pytest.raises(UserFacingError, match="already exists"):
        extract_lora(BASE, str(tuned), tmp_path / "d.safetensors", rank=4)
