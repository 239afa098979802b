"""Config: TOML round trip, every problem reported at once with the user's field names."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainer.config import (
    Config,
    ConfigError,
    config_from_dict,
    dumps_config,
    field_infos,
    load_config,
    preset_config,
    validate,
)


def test_defaults_are_valid():
    assert validate(Config()) == []


def test_toml_round_trip_with_comments(tmp_path):
    cfg = preset_config("character")
    path = tmp_path / "c.toml"
    path.write_text(dumps_config(cfg, comments=True))
    text = path.read_text()
    assert "# LoRA rank (network dim)" in text, "every field carries its doc as a comment"
    assert load_config(path) == cfg


def test_validation_collects_every_problem_with_field_names():
    cfg = Config()
    cfg.network.rank = 0
    cfg.optimizer.learning_rate = -1
    cfg.optimizer.scheduler = "warp"
    cfg.dataset.caption_dropout = 1.5
    problems = validate(cfg)
    assert "`network.rank` must be a positive integer, got 0" in problems
    assert any(p.startswith("`optimizer.learning_rate`") for p in problems)
    assert any(p.startswith("`optimizer.scheduler` must be one of") and "cosine" in p for p in problems)
    assert any(p.startswith("`dataset.caption_dropout`") for p in problems)
    assert len(problems) == 4


FLOAT_KEYS = [info.key for info in field_infos() if info.type == "float"]


@pytest.mark.parametrize("literal", ["nan", "inf", "-inf"])
def test_every_float_setting_refuses_non_finite_values(tmp_path, literal):
    # TOML itself accepts nan/inf literals, so each float field gets one in a file and must be named.
    assert {"optimizer.learning_rate", "network.alpha", "training.noise_offset"} <= set(FLOAT_KEYS)
    sections: dict[str, list[str]] = {}
    for key in FLOAT_KEYS:
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"{name} = {literal}")
    path = tmp_path / "nonfinite.toml"
    path.write_text("\n".join(f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items()))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    problems = info.value.problems
    for key in FLOAT_KEYS:
        assert f"`{key}` must be a finite number, got {literal}" in problems, f"{key} = {literal} was not refused"
    assert len(problems) == len(FLOAT_KEYS), f"one message per field, no misleading range message too: {problems}"


def test_nan_learning_rate_is_named_not_blamed_elsewhere():
    cfg = Config()
    cfg.optimizer.learning_rate = float("nan")
    cfg.network.alpha = float("nan")
    assert validate(cfg) == [
        "`network.alpha` must be a finite number, got nan",
        "`optimizer.learning_rate` must be a finite number, got nan",
    ]


def test_cli_set_nan_exits_2_with_the_field_and_no_run_folder(tmp_path):
    cfg = Config()
    cfg.run.output_dir = str(tmp_path / "runs")
    path = tmp_path / "c.toml"
    path.write_text(dumps_config(cfg))
    out = subprocess.run(
        [sys.executable, "-m", "trainer", "train", str(path), "--set", "optimizer.learning_rate=nan"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert "`optimizer.learning_rate` must be a finite number, got nan" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists(), "a refused config must not create a run folder"


def test_unknown_keys_and_wrong_types_are_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[network]\nrank = "big"\nrnak = 4\n[trainig]\nmax_steps = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "`network.rank` must be an integer, got 'big'" in message
    assert "unknown setting `network.rnak`" in message
    assert "unknown section `[trainig]`" in message


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[network\nrank = 4")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_newer_schema_is_refused():
    with pytest.raises(ConfigError, match="newer than this lora-studio"):
        config_from_dict({"schema_version": 99})


def test_field_infos_document_every_field():
    infos = field_infos()
    assert all(info.doc for info in infos), [i.key for i in infos if not i.doc]
    assert {"network.rank", "optimizer.scheduler", "export.format"} <= {i.key for i in infos}


def test_config_module_does_not_import_torch():
    code = "import sys, trainer.config, trainer.events; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_help_lists_settings_from_field_docs():
    out = subprocess.run([sys.executable, "-m", "trainer", "train", "--help"], capture_output=True, text=True, check=True)
    assert "[network]" in out.stdout and "LoRA rank (network dim)" in out.stdout


def test_init_config_writes_a_loadable_preset(tmp_path):
    path = tmp_path / "style.toml"
    subprocess.run([sys.executable, "-m", "trainer", "init-config", str(path), "--preset", "style"], check=True, capture_output=True)
    assert load_config(path).network.unet_targets == "kohya"
    again = subprocess.run([sys.executable, "-m", "trainer", "init-config", str(path)], capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
