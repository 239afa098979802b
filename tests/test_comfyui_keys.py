"""Every key we write is one ComfyUI recognises, patches the right weight with, and decodes to the trained ΔW.

ComfyUI's mapping and adapter math come from ``tests/comfyui_reference.py`` (reproduced from ComfyUI's
``comfy/utils.py``, ``comfy/lora.py`` and ``comfy/weight_adapter/``, citing each function).
"""

from __future__ import annotations

import copy

import pytest
import torch
from comfyui_reference import calculate_weight, load_lora, lora_key_map
from safetensors.torch import load_file

from trainer.config import Config, ModelConfig
from trainer.export import TrainingMetadata, export_adapter
from trainer.export.delta_check import trained_delta
from trainer.export.keys import module_path
from trainer.models.loading import load_base_model
from trainer.network import inject_lora
from trainer.networks import is_adapter_param

VARIANTS = {
    "lora": {"type": "lora"},
    "locon": {"type": "locon", "conv_rank": 2},
    "rslora": {"type": "lora", "rslora": True},
    "loha-conv": {"type": "loha", "conv_rank": 2},
    "lokr-conv": {"type": "lokr", "conv_rank": 2},
    "lokr-whole": {"type": "lokr", "rank": 64},  # both Kronecker factors whole: ComfyUI's scale is 1
    "dora": {"type": "lora", "use_dora": True},
    "dora-full": {"type": "lora", "use_dora": True, "dora_layout": "full"},  # export.dora_layout: whole ΔW
}
MODELS = {"sd": "builtin:tiny-sd", "sdxl": "builtin:tiny-sdxl"}


@pytest.fixture(scope="module")
def bases():
    return {name: load_base_model(ModelConfig(base=base)) for name, base in MODELS.items()}


def exported(base_model, variant, tmp_path):
    cfg = Config()
    cfg.network.rank, cfg.network.alpha, cfg.network.train_text_encoder = 4, 2.0, True
    cfg.network.text_encoder_mlp, cfg.network.unet_targets = True, "kohya"
    for key, value in VARIANTS[variant].items():
        setattr(cfg.export if key == "dora_layout" else cfg.network, key, value)
    model = copy.deepcopy(base_model)
    inject_lora(model, cfg.network)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in model.component_modules().values():
            for name, param in module.named_parameters():
                if is_adapter_param(name):
                    param.add_(0.05 * torch.randn_like(param))
    cfg.export.dtype = "fp32"
    [result] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=False)
    return model, load_file(str(result.path))


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_comfyui_reads_every_key_onto_the_trained_layer_with_the_trained_delta(bases, tmp_path, variant, family):
    model, tensors = exported(bases[family], variant, tmp_path)
    key_map = lora_key_map(model)
    names = sorted({k.partition(".")[0] for k in tensors})
    unknown = [n for n in names if n not in key_map]
    assert not unknown, f"ComfyUI does not know {len(unknown)} module names, e.g. {unknown[:3]}"
    patches, loaded = load_lora(tensors, names)
    assert set(tensors) == loaded, f"keys ComfyUI would log as 'not loaded': {sorted(set(tensors) - loaded)[:3]}"
    components = model.component_modules()
    for name, patch in patches.items():
        component, path = key_map[name]
        owner = components[component]
        layer = owner.get_submodule(module_path(component, owner, path))
        base = layer.get_base_layer().weight.detach().float()
        comfy_delta = calculate_weight(patch, base) - base
        want = trained_delta(layer)
        assert want.abs().max() > 1e-4, f"{name}: the test adapter must not be zero"
        if patch[0] == "lora" and patch[1][3] is not None:  # a dora_scale: ComfyUI's output-axis DoRA
            # ComfyUI's output-axis DoRA divides by ‖W‖ instead of ‖W + ΔW‖ (see weight_decompose in the
            # reference): its weight is ours scaled per output row by ‖W + ΔW‖ / ‖W‖. Check exactly that,
            # so the day ComfyUI merges the fix this test says so.
            lora = patch[1]
            adapted = base + lora[2] / lora[1].shape[0] * (lora[0].flatten(1) @ lora[1].flatten(1)).reshape(base.shape)
            ratio = (adapted.flatten(1).norm(dim=1) / base.flatten(1).norm(dim=1)).reshape(-1, *[1] * (base.dim() - 1))
            torch.testing.assert_close(comfy_delta + base, (want + base) * ratio, rtol=1e-5, atol=1e-6,
                                       msg=f"{name}: ComfyUI's DoRA weight")
            continue
        torch.testing.assert_close(comfy_delta, want, rtol=1e-4, atol=1e-6,
                                   msg=f"{variant} {name}: ComfyUI's ΔW != the trained ΔW")
