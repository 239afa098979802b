"""Block-wise ranks, alphas and learning-rate weights (sd-scripts' ``block_dims``, ``block_alphas``,
``conv_block_dims``, ``down/mid/up_lr_weight``).

The expected block of each file module is computed here with sd-scripts' own formula
(``networks/lora.py: get_block_index``: down ``1 + 3i + j``, samplers ``3i + 2`` (+1), mid ``NUM_OF_BLOCKS``,
up ``NUM_OF_BLOCKS + 1 + 3i + j``; for SDXL the LDM index of ``input_blocks``/``middle_block``/
``output_blocks`` plus 1 / 10 / 13), with NUM_OF_BLOCKS = 6 and 3 mid blocks for the tiny builtins —
not with the trainer's own mapping, which goes through the LDM paths of ``export.keys``.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

from trainer.config import Config, ModelConfig
from trainer.errors import UserFacingError
from trainer.export import TrainingMetadata, export_adapter
from trainer.export.file_modules import read_kohya_file
from trainer.models.loading import load_base_model
from trainer.network import inject_lora
from trainer.optim import build_optimizer

SD_BLOCKS = 13  # tiny-sd: IN00-IN05, MID, OUT00-OUT05 (2 down blocks x 3)
SDXL_BLOCKS = 17  # tiny-sdxl: BASE, IN00-IN05, MID0-MID2, OUT00-OUT05, OUT
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def sd_scripts_block(name: str, num_blocks: int = 6) -> int:
    """sd-scripts' ``get_block_index`` for SD 1.x names, with its 12 blocks per side replaced by ``num_blocks``."""
    if match := _UPDOWN.search(name):
        side, i, kind, j = match[1], int(match[2]), match[3], int(match[4])
        idx = 3 * i + 2 if kind in ("upsamplers", "downsamplers") else 3 * i + j
        return 1 + idx if side == "down" else num_blocks + 1 + idx
    return num_blocks if "mid_block_" in name else -1


def sd_scripts_block_sdxl(name: str, num_blocks: int = 6) -> int:
    """sd-scripts' SDXL ``get_block_index``: BASE 0, input_blocks N -> 1 + N, middle_block k ->
    1 + num_blocks + k, output_blocks N -> 1 + num_blocks + 3 + N."""
    rest = name.removeprefix("lora_unet_")
    n = int(rest.split("_")[2])
    if rest.startswith("input_blocks_"):
        return 1 + n
    if rest.startswith("middle_block_"):
        return 1 + num_blocks + n
    return 1 + num_blocks + 3 + n


@pytest.fixture(scope="module")
def sd():
    return load_base_model(ModelConfig(base="builtin:tiny-sd"))


def file_ranks(model, cfg, tmp_path) -> dict[str, int]:
    cfg.export.dtype = "fp32"
    [result] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=True)
    assert result.verified, result.message
    file = read_kohya_file(result.path)
    from trainer.networks import kind

    return {name: kind(m.kind).file_rank(m.parts) for name, m in file.modules.items()}


def test_block_dims_set_each_modules_rank_and_zero_blocks_have_no_keys(sd, tmp_path):
    dims = [0, 2, 3, 0, 4, 5, 6, 7, 8, 0, 9, 10, 11]
    conv_dims = [0, 1, 1, 0, 2, 2, 3, 3, 3, 0, 4, 4, 4]
    cfg = Config()
    cfg.network.type = "locon"
    cfg.network.block_dims = ",".join(map(str, dims))
    cfg.network.conv_block_dims = ",".join(map(str, conv_dims))
    model = copy.deepcopy(sd)
    inject_lora(model, cfg.network)
    with torch.no_grad():  # B != 0 so the self-check in file_ranks compares something
        for name, p in model.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ranks = file_ranks(model, cfg, tmp_path)
    conv3x3 = re.compile(r"(conv1|conv2|samplers_0_conv)$")
    seen = set()
    for name, rank in ranks.items():
        block = sd_scripts_block(name)
        want = (conv_dims if conv3x3.search(name) else dims)[block]
        assert rank == want, f"{name}: block {block} wants rank {want}, the file has {rank}"
        seen.add(block)
    assert seen == {b for b in range(SD_BLOCKS) if dims[b] and b != 0}, f"blocks with modules: {sorted(seen)}"


def test_block_alphas_are_written_per_module(sd, tmp_path):
    alphas = [1.0 + i for i in range(SD_BLOCKS)]
    cfg = Config()
    cfg.network.block_alphas = ",".join(map(str, alphas))
    model = copy.deepcopy(sd)
    inject_lora(model, cfg.network)
    cfg.export.dtype = "fp32"
    [result] = export_adapter(model, cfg, tmp_path, metadata=TrainingMetadata(), verify=False)
    file = read_kohya_file(result.path)
    for name, module in file.modules.items():
        assert module.alpha == pytest.approx(alphas[sd_scripts_block(name)]), name


def test_sdxl_block_dims_follow_sd_scripts_sdxl_numbering(tmp_path):
    sdxl = load_base_model(ModelConfig(base="builtin:tiny-sdxl"))
    dims = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0]
    cfg = Config()
    cfg.model.base = "builtin:tiny-sdxl"
    cfg.network.block_dims = ",".join(map(str, dims))
    model = copy.deepcopy(sdxl)
    inject_lora(model, cfg.network)
    ranks = file_ranks(model, cfg, tmp_path)
    assert any(name.startswith("lora_unet_middle_block_1_") for name in ranks), "MID1 (the attention) is adapted"
    for name, rank in ranks.items():
        assert rank == dims[sd_scripts_block_sdxl(name)], name


def test_block_list_of_the_wrong_length_names_the_field_and_the_count(sd):
    cfg = Config()
    cfg.network.block_dims = ",".join(["4"] * 25)  # SD 1.5's 25 blocks on a 13-block UNet
    with pytest.raises(UserFacingError, match=r"`network.block_dims` must have 13 values for this SD 1.x/2.x UNet.*got 25"):
        inject_lora(copy.deepcopy(sd), cfg.network)


def test_lr_weights_become_parameter_groups_and_zero_removes_the_block(sd):
    cfg = Config()
    cfg.network.type = "locon"
    cfg.network.down_lr_weight = "1,0,0.5"  # IN00, IN01 = 0 (no adapter), IN02 = 0.5, the rest 1
    cfg.network.mid_lr_weight = "2"
    cfg.network.up_lr_weight = "zeros+0.25"
    model = copy.deepcopy(sd)
    network = inject_lora(model, cfg.network)
    names = [n for n, p in model.unet.named_parameters() if p.requires_grad]
    assert not any(_UPDOWN.search(n.replace(".", "_")) and sd_scripts_block(n.replace(".", "_") + "_") == 1 for n in names), \
        "a block with learning-rate weight 0 gets no adapter"
    optimizer = build_optimizer(cfg.optimizer, network.unet_params, [], torch.device("cpu"), 10,
                                unet_lr_weights=network.unet_lr_weights)
    lr = cfg.optimizer.learning_rate
    by_param = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.unet.named_parameters():
        if not param.requires_grad:
            continue
        block = sd_scripts_block(name.replace(".", "_") + "_")
        want = 2.0 if block == 6 else 0.25 if block > 6 else 0.5 if block == 2 else 1.0
        assert by_param[id(param)] == pytest.approx(lr * want), f"{name} (block {block})"
