"""What rank each block ended with: for AdaLoRA's moving budget and importance-based ranks.

Blocks are sd-scripts' (``blocks.py``: IN00…, MID, OUT…); text-encoder layers are grouped as ``TE`` (``TE1``,
``TE2`` with two encoders). A layer's rank is its kind's ``layer_rank`` (AdaLoRA: the triplets whose λ is not
zero, which is what its file keeps). The report goes into the ``ranks`` event, the adapter's metadata and the
UI's bar chart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RankReport:
    """Total rank per block (in block order), and the layer count and total over all blocks."""

    blocks: dict[str, int] = field(default_factory=dict)
    layers: int = 0

    @property
    def total(self) -> int:
        return sum(self.blocks.values())

    def event_fields(self) -> dict[str, Any]:
        return {"blocks": self.blocks, "layers": self.layers, "total_rank": self.total}


def rank_report(model: Any) -> RankReport:
    from trainer.export.keys import KohyaNaming, adapted_components, sgm_unet_path
    from trainer.network import ADAPTER_NAME, adapter_layers
    from trainer.networks import kind_of_layer
    from trainer.networks.plan import block_layout

    layout = block_layout(model)
    naming = KohyaNaming.for_model(model)
    encoders = [n for n in model.component_modules() if n.startswith("text_encoder")]
    order = {name: i for i, name in enumerate(layout.names)}
    ranks: dict[str, int] = {}
    layers = 0
    for component, module in adapted_components(model).items():
        for name, layer in adapter_layers(module).items():
            rank = kind_of_layer(layer).layer_rank(layer, ADAPTER_NAME)
            if component == "unet":
                index = layout.index(sgm_unet_path(name, naming.layers_per_block, naming.plain_up_blocks))
                block = layout.names[index] if index is not None else "other"
            else:
                block = "TE" if len(encoders) == 1 else f"TE{encoders.index(component) + 1}"
            ranks[block] = ranks.get(block, 0) + rank
            layers += 1
    ordered = sorted(ranks, key=lambda b: (b.startswith("TE"), order.get(b, len(order)), b))
    return RankReport({b: ranks[b] for b in ordered}, layers)


def adapter_size_fields(net: Any, model: Any) -> dict[str, Any]:
    """For the ``started`` event: VeRA's trainable count is shown beside what LoRA would train at the same rank
    on the same layers, r·(in + out) per layer."""
    if net.type != "vera":
        return {}
    from trainer.export.keys import adapted_components
    from trainer.network import ADAPTER_NAME, adapter_layers

    lora = sum(int(layer.r[ADAPTER_NAME]) * (layer.in_features + layer.out_features)
               for module in adapted_components(model).values() for layer in adapter_layers(module).values())
    return {"lora_parameters_same_rank": lora}
