"""``sample`` with several adapters and ``--grid``: one base pipeline, adapters switched on it, cells that
equal what a fresh pipeline renders with the adapter fused at that weight."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from trainer.adapter_grid import GridColumn, grid_columns
from trainer.cli import main
from trainer.commands.sample import SampleOptions, sample_adapter, sample_grid
from trainer.config import Config, ModelConfig
from trainer.errors import UserFacingError
from trainer.grid import render_grid, wrap
from trainer.models.loading import load_base_model
from trainer.network import inject_lora
from trainer.sampling import build_pipeline, latent_generator

BASE = "builtin:tiny-sd"  # named, not the default config's model, which may change
SIZE = 32  # the tiny model's VAE halves: a 16x16 latent, fast on a CPU
STEPS = 2
SEED = 7
PROMPT = "zxq red circle"


def _adapter(network, seed: int, std: float, te: bool):
    """The builtin model with ``network`` injected and its adapter tensors moved off their init."""
    from trainer.networks import is_adapter_param

    model = load_base_model(ModelConfig(base=BASE))
    inject_lora(model, network, train_text_encoder=te)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.component_modules().values():
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=std)
                elif network.type == "loha" and is_adapter_param(name):
                    param.add_(std * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Two different kohya LoRA files (UNet and text encoder) and a LoHa file (diffusers cannot load it)."""
    from trainer.export import kohya_state_dict

    folder = tmp_path_factory.mktemp("adapters")
    made = {}
    for name, seed in (("a", 3), ("b", 4)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tensors = kohya_state_dict(_adapter(Config().network, seed, 0.5, te=True), dtype=torch.float32)
        made[name] = folder / f"{name}.safetensors"
        save_file(tensors, made[name], metadata={"ss_sd_model_name": "builtin:tiny-sd"})
    network = Config().network
    network.type = "loha"
    made["loha"] = folder / "loha.safetensors"
    save_file(kohya_state_dict(_adapter(network, 5, 0.3, te=False), dtype=torch.float32), made["loha"])
    return made


def _fresh_image(adapters: list[tuple[Path, float]], fuse: bool = True) -> np.ndarray:
    """A new model and pipeline per call: each adapter loaded by diffusers and fused at its weight.

    Fusing writes W + w·ΔW into the weights, a different code path from the bench's live LoRA layers."""
    model = load_base_model(ModelConfig(base=BASE))
    pipe = build_pipeline(model, Config().sampling.sampler)
    for path, weight in adapters:
        pipe.load_lora_weights(str(path), adapter_name=path.stem)
        pipe.fuse_lora(lora_scale=weight, adapter_names=[path.stem])
        pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    image = pipe(
        prompt=PROMPT, num_inference_steps=STEPS, guidance_scale=Config().sampling.guidance_scale,
        width=SIZE, height=SIZE, generator=latent_generator(SEED),
    ).images[0]
    return np.asarray(image.convert("RGB")).astype(int)


def _cell(grid_path: Path, layout, row: int, column: int) -> np.ndarray:
    return np.asarray(Image.open(grid_path).convert("RGB").crop(layout.box(row, column))).astype(int)


def _options(out: Path, **overrides) -> SampleOptions:
    values = dict(adapter=None, base=BASE, prompts=[PROMPT], seed=SEED, steps=STEPS, width=SIZE, height=SIZE, out=out,
                  device="cpu")  # fmt: skip
    return SampleOptions(**{**values, **overrides})


@pytest.fixture
def count_loads(monkeypatch):
    """Counts base-model loads and adapter loads into a pipeline during the test."""
    import diffusers.loaders.lora_pipeline as lora_pipeline

    import trainer.models.loading as loading

    counts = {"model": 0, "adapter": 0}
    real_model, real_adapter = loading.load_base_model, lora_pipeline.StableDiffusionLoraLoaderMixin.load_lora_weights

    def model(*args, **kwargs):
        counts["model"] += 1
        return real_model(*args, **kwargs)

    def adapter(self, *args, **kwargs):
        counts["adapter"] += 1
        return real_adapter(self, *args, **kwargs)

    monkeypatch.setattr(loading, "load_base_model", model)
    monkeypatch.setattr(lora_pipeline.StableDiffusionLoraLoaderMixin, "load_lora_weights", adapter)
    return counts


def test_grid_cells_equal_base_and_a_fresh_fused_pipeline(files, tmp_path, count_loads):
    options = _options(tmp_path, loras=[(files["a"], 1.0)], grid=True, strengths=[0, 0.5, 1])
    result = sample_grid(options)
    assert count_loads == {"model": 1, "adapter": 1}, "one base load and one adapter load for the whole grid"
    assert result.columns == ["base (no adapter)", "strength 0.5", "strength 1"]
    assert Image.open(result.path).size == result.layout.size
    base, half, full = (_cell(result.path, result.layout, 0, c) for c in range(3))
    np.testing.assert_array_equal(base, _fresh_image([]), err_msg="the base column must be the base model exactly")
    assert np.abs(full - base).mean() > 1, "the test adapter must visibly change the image"
    # Fused fp32 weights vs separate LoRA layers: only fp32 summation order differs, then rounding to 8 bits.
    for weight, cell in ((0.5, half), (1.0, full)):
        diff = np.abs(cell - _fresh_image([(files["a"], weight)]))
        assert diff.max() <= 2, f"cell at strength {weight} differs from the fused pipeline by {diff.max()} grey levels"


def test_two_adapters_combined_and_switched_without_reloading(files, tmp_path, count_loads):
    """--lora a:0.8 --lora b:0.5 acts as both fused at those weights; --grid-by adapter gives each alone."""
    combined = sample_adapter(_options(tmp_path / "c", loras=[(files["a"], 0.8), (files["b"], 0.5)]))[0]
    want = _fresh_image([(files["a"], 0.8), (files["b"], 0.5)])
    got = np.asarray(Image.open(combined.path).convert("RGB")).astype(int)
    assert np.abs(got - want).max() <= 2, "two adapters at 0.8 and 0.5 must equal both fused at those weights"
    only_a = _fresh_image([(files["a"], 0.8)])
    assert np.abs(got - only_a).mean() > 1, "the second adapter must take part"

    count_loads.update(model=0, adapter=0)
    options = _options(tmp_path / "g", loras=[(files["a"], 0.8), (files["b"], 1.0)], grid=True, strengths=[1],
                       grid_by="adapter")  # fmt: skip
    result = sample_grid(options)
    assert count_loads == {"model": 1, "adapter": 2}, "each adapter is loaded once, the base model once"
    assert result.columns == ["base (no adapter)", "a @ 0.8", "b @ 1"]
    assert [c.weights for c in result.cells] == [{}, {str(files["a"]): 0.8}, {str(files["b"]): 1.0}]
    cell_a = _cell(result.path, result.layout, 0, 1)
    assert np.abs(cell_a - only_a).max() <= 2, "a's column must be a alone (b switched off)"


def test_loha_beside_lora_on_one_bench(files, tmp_path):
    """LoHa is applied by merging ΔW; switching it off restores the base exactly, even beside a LoRA."""
    options = _options(tmp_path, loras=[(files["loha"], 1.0), (files["a"], 1.0)], grid=True, strengths=[1],
                       grid_by="adapter")  # fmt: skip
    result = sample_grid(options)
    base, loha, lora = (_cell(result.path, result.layout, 0, c) for c in range(3))
    np.testing.assert_array_equal(base, _fresh_image([]), err_msg="base column with a merged LoHa loaded")
    assert np.abs(loha - base).mean() > 1, "the LoHa column must show the LoHa"
    assert np.abs(lora - _fresh_image([(files["a"], 1.0)])).max() <= 2, "the LoRA column must not carry the LoHa"


def test_cli_grid_json_and_events(files, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    argv = ["sample", "--lora", f"{files['a']}:0.8", "--prompt", PROMPT, "--prompt", "zxq blue", "--grid",
            "--strengths", "0, 1", "--steps", "1", "--width", "32", "--seed", "3", "--device", "cpu",
            "--out", str(tmp_path / "out"), "--json", "--events", str(events), "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["columns"] == ["base (no adapter)", "strength 1"] and payload["prompts"] == [PROMPT, "zxq blue"]
    assert len(payload["cells"]) == 4 and {c["row"] for c in payload["cells"]} == {0, 1}
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    grid = [e for e in lines if e["event"] == "progress" and e["what"] == "rendering the grid"]
    assert [e["done"] for e in grid] == [0, 1, 2, 3, 4] and {e["total"] for e in grid} == {4}
    assert lines[-1]["event"] == "finished" and lines[-1]["ok"] is True
    assert lines[-1]["output"] == payload["grid"] and Path(payload["grid"]).is_file()


def test_bad_input_is_a_message_and_a_failed_event(files, tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    base = ["sample", "--prompt", "x", "--device", "cpu", "--out", str(tmp_path / "out"), "--events", str(events)]
    assert main([*base, "--lora", str(files["a"]), "--grid", "--strengths", "0,half"]) == 2
    assert "--strengths must be numbers separated by commas" in capsys.readouterr().err
    finished = json.loads(events.read_text().splitlines()[-1])
    assert finished["event"] == "finished" and finished["ok"] is False and "--strengths" in finished["message"]
    assert main(base) == 2 and "give an adapter" in capsys.readouterr().err
    # A second adapter made for another model: refused by name, nothing written.
    other = tmp_path / "other.safetensors"
    save_file({k.replace("down_blocks_1", "down_blocks_7"): v for k, v in load_file(files["b"]).items()}, other)
    with pytest.raises(UserFacingError, match=r"other.safetensors does not fit base model 'builtin:tiny-sd'"):
        sample_grid(_options(tmp_path / "bad", loras=[(files["a"], 1.0), (other, 1.0)], grid=True))
    assert not (tmp_path / "bad").exists()


def test_grid_columns_and_layout():
    columns = grid_columns(["a0", "a1"], ["a", "b"], [0.8, 0.5], [0, 0.5, 1, 0.5], "combined")
    assert columns == [
        GridColumn("base (no adapter)"),
        GridColumn("strength 0.5", {"a0": 0.4, "a1": 0.25}),
        GridColumn("strength 1", {"a0": 0.8, "a1": 0.5}),
    ]
    by_adapter = grid_columns(["a0", "a1"], ["a", "b"], [0.8, 0.5], [1], "adapter")
    assert [c.label for c in by_adapter] == ["base (no adapter)", "a @ 0.8", "b @ 0.5"]
    colours = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (9, 9, 9)]]
    cells = [[Image.new("RGB", (40, 24), c) for c in row] for row in colours]
    long_prompt = "a prompt long enough that it has to wrap over several lines in the label column"
    grid, layout = render_grid(cells, ["short", long_prompt], ["base", "strength 1"], "title")
    assert grid.size == layout.size and layout.row_height > 24, "a wrapped prompt makes its row taller"
    for r, row in enumerate(colours):
        for c, colour in enumerate(row):
            pixels = np.asarray(grid.crop(layout.box(r, c)))
            assert (pixels == colour).all(), f"cell ({r}, {c}) is not where its box says"
    assert all(len(line) < len(long_prompt) for line in wrap(long_prompt, 180))
