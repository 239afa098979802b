"""Per-prompt preview options in sd-scripts' syntax: parsed, validated, and applied to the rendered preview."""

from __future__ import annotations

import pytest
from PIL import Image

from trainer.config import Config, validate
from trainer.prompt_options import PromptSpec, parse_prompt
from trainer.sampling import preview_specs


def test_sd_scripts_prompt_line_is_parsed():
    spec = parse_prompt("a photo of sks dog, best quality --n blurry, lowres --w 512 --h 768 --d 42 --s 28 --l 6.5")
    assert spec == PromptSpec("a photo of sks dog, best quality", "blurry, lowres", 512, 768, 42, 28, 6.5)
    assert parse_prompt("just a prompt") == PromptSpec("just a prompt")


@pytest.mark.parametrize(
    ("line", "message"),
    [("x --q 3", "unknown option `--q`"), ("x --w big", "`--w` needs a whole number"), ("x --h 100", "multiple of 8"),
     ("x --l", "`--l` needs a number")],
)
def test_bad_options_are_errors_naming_the_prompt(line, message):
    with pytest.raises(ValueError, match=message):
        parse_prompt(line)
    cfg = Config()
    cfg.sampling.prompts = ["fine", line]
    assert any(p.startswith("`sampling.prompts` entry 2") and message.split("`")[0] in p for p in validate(cfg))


def test_options_override_the_sampling_settings_and_the_rest_fall_back():
    cfg = Config()
    cfg.sampling.prompts = ["{trigger} a --d 7 --w 32", "{trigger} b"]
    cfg.sampling.seed, cfg.sampling.steps, cfg.sampling.negative_prompt = 100, 5, "ugly"
    first, second = preview_specs(cfg)
    assert (first.prompt, first.seed, first.width, first.height, first.steps, first.negative) == ("sks a", 7, 32, 64, 5, "ugly")
    assert (second.prompt, second.seed, second.width) == ("sks b", 101, 64), "prompt i without --d gets seed + i"


def test_preview_is_rendered_with_its_own_size(tmp_path):
    from tests.test_sampling import lora_model, preview_config
    from trainer.sampling import generate_previews

    cfg = preview_config(prompts=["zxq wide --w 48 --h 16 --s 1"])
    (result,) = generate_previews(lora_model(), cfg, tmp_path, 1, device="cpu")
    assert Image.open(result.path).size == (48, 16)
