"""The run detail's adapter panel: AdaLoRA's final rank per block as bars, VeRA's parameter count beside LoRA's.

Pure UI helpers fed with the events the trainer writes (``ranks``, ``started``); no torch, no browser.
"""

from __future__ import annotations

import re
from pathlib import Path

from app.run_detail import adapter_shape_html
from app.run_view import RunView


def test_rank_chart_draws_one_bar_per_block_scaled_to_the_largest():
    view = RunView(Path("run"))
    view.apply({"type": "ranks", "step": 12, "method": "adalora", "blocks": {"IN04": 10, "MID": 5, "<TE>": 20},
                "layers": 17, "total_rank": 35})
    page = adapter_shape_html(view)
    widths = [int(w) for w in re.findall(r"width:(\d+)px", page)]
    assert widths == [100, 50, 200], "bars are proportional to each block's rank, the largest 200 px"
    assert "total 35 over 17 layers" in page and "&lt;TE&gt;" in page, "the title sums the ranks; names are escaped"


def test_vera_parameter_count_is_shown_beside_loras():
    view = RunView(Path("run"))
    view.apply({"type": "started", "total_steps": 4, "trainable_parameters": 1200, "lora_parameters_same_rank": 48000})
    page = adapter_shape_html(view)
    assert "1,200" in page and "48,000" in page and "2.5% of it" in page


def test_nothing_is_shown_for_a_plain_lora_run():
    view = RunView(Path("run"))
    view.apply({"type": "started", "total_steps": 4, "trainable_parameters": 1200})
    assert adapter_shape_html(view) == ""
