"""The file key suffixes of each adapter kind, as sd-scripts and LyCORIS write them (no torch: the
pre-flight check reads files by these names too). ``alpha`` is every kind's scalar beside them."""

from __future__ import annotations

LORA = ("lora_down.weight", "lora_up.weight", "dora_scale")
LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
FULL = ("diff",)  # a layer's whole ΔW (LyCORIS ``full``): how DoRA is written with ``export.dora_layout = "full"``

# Kind -> (every suffix it may write, the suffixes any one of which marks a module as that kind).
KINDS = {
    "lora": (LORA, ("lora_down.weight",)),
    "loha": (LOHA, ("hada_w1_a",)),
    "lokr": (LOKR, ("lokr_w1", "lokr_w1_a", "lokr_w2", "lokr_w2_a")),
    "full": (FULL, FULL),
}


def needed(kind: str, present: set[str]) -> set[str]:
    """The suffixes a module of ``kind`` must hold, given those it has (LoKr: each factor whole or as a pair)."""
    if kind == "lora":
        return {"lora_down.weight", "lora_up.weight"}
    if kind == "loha":
        return set(LOHA)
    if kind == "full":
        return set(FULL)
    w1 = {"lokr_w1"} if "lokr_w1" in present else {"lokr_w1_a", "lokr_w1_b"}
    w2 = {"lokr_w2"} if "lokr_w2" in present else {"lokr_w2_a", "lokr_w2_b"}
    return w1 | w2


def kind_of(present: set[str]) -> str | None:
    return next((kind for kind, (_, markers) in KINDS.items() if any(m in present for m in markers)), None)
