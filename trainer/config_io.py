"""The config as data: to and from plain dicts and TOML files, with every problem named by its dotted key.

``load_config`` reads a TOML file (upgrading older schema versions), ``dumps_config`` writes one (with the
field docs as comments for ``init-config``), ``set_dotted`` applies a CLI ``--set section.name=value``.
No torch here either: the UI process reads and writes configs.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from trainer.config import SCHEMA_VERSION, Config, ConfigError, field_infos, section_doc, section_types


def config_to_dict(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"schema_version": config.schema_version}
    for name, section in config.section_items():
        out[name] = dataclasses.asdict(section)
    return out


def config_from_dict(data: dict[str, Any], source: str | Path | None = None) -> Config:
    """Build a Config from plain data, collecting every unknown key and type error at once."""
    problems: list[str] = []
    data = upgrade_config_dict(dict(data), problems)
    types = section_types()
    sections: dict[str, Any] = {}
    for key, value in data.items():
        if key == "schema_version":
            continue
        if key not in types:
            problems.append(f"unknown section `[{key}]`; known sections: {', '.join(types)}")
            continue
        if not isinstance(value, dict):
            problems.append(f"`{key}` must be a table (`[{key}]`), got {type(value).__name__}")
            continue
        sections[key] = _section_from_dict(key, types[key], value, problems)
    if problems:
        raise ConfigError(problems, source)
    config = Config(**sections)
    return config


def _section_from_dict(section: str, cls: type, values: dict, problems: list[str]) -> Any:
    defaults = cls()
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in values.items():
        if name not in known:
            problems.append(f"unknown setting `{section}.{name}`; known: {', '.join(known)}")
            continue
        expected = getattr(defaults, name)
        coerced, ok = _coerce(value, expected)
        if not ok:
            problems.append(
                f"`{section}.{name}` must be {_describe(expected)}, got {value!r} ({type(value).__name__})"
            )
            continue
        kwargs[name] = coerced
    return cls(**kwargs)


def _coerce(value: Any, expected: Any) -> tuple[Any, bool]:
    if isinstance(expected, bool):
        return value, isinstance(value, bool)
    if isinstance(expected, int):
        return value, isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value), True
        return value, False
    if isinstance(expected, str):
        return value, isinstance(value, str)
    if isinstance(expected, list):
        return value, isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value, True


def _describe(expected: Any) -> str:
    if isinstance(expected, bool):
        return "true or false"
    if isinstance(expected, int):
        return "an integer"
    if isinstance(expected, float):
        return "a number"
    if isinstance(expected, list):
        return "a list of strings"
    return "a string"


def upgrade_config_dict(data: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Bring an older saved config up to SCHEMA_VERSION (OneTrainer keeps such upgrade steps)."""
    version = data.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version < 1:
        problems.append(f"`schema_version` must be a positive integer, got {version!r}")
    elif version > SCHEMA_VERSION:
        problems.append(
            f"`schema_version` {version} is newer than this lora-studio understands ({SCHEMA_VERSION}); "
            "upgrade lora-studio"
        )
    data["schema_version"] = SCHEMA_VERSION
    return data


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config; raises ConfigError naming the file and every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path}"], path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError([f"not valid TOML: {err}"], path) from None
    config = config_from_dict(data, path)
    from trainer.config_validation import validate

    problems = validate(config)
    if problems:
        raise ConfigError(problems, path)
    return config


def dumps_config(config: Config, comments: bool = False) -> str:
    """TOML text for a config; with ``comments`` every field carries its documentation."""
    import tomli_w

    data = config_to_dict(config)
    if not comments:
        return tomli_w.dumps(data)
    docs = {info.key: info for info in field_infos()}
    lines = [
        "# lora-studio training config. Run it with: python -m trainer train THIS_FILE.toml",
        f"schema_version = {SCHEMA_VERSION}",
        "",
    ]
    for name, values in data.items():
        if name == "schema_version":
            continue
        lines.append(f"# {section_doc(name)}")
        lines.append(f"[{name}]")
        for key, value in values.items():
            info = docs[f"{name}.{key}"]
            doc = info.doc + (f" One of: {', '.join(repr(c) for c in info.choices)}." if info.choices else "")
            lines.append(f"# {doc}")
            lines.append(tomli_w.dumps({key: value}).strip())
        lines.append("")
    return "\n".join(lines)


def set_dotted(config: Config, key: str, value: Any) -> None:
    """Set `section.field` on a config, with the same type checks as loading."""
    section, _, name = key.partition(".")
    problems: list[str] = []
    current = config_to_dict(config)
    if section not in current or name not in current[section]:
        raise ConfigError([f"unknown setting `{key}`"])
    current[section][name] = value
    new = config_from_dict(current)
    setattr(config, section, getattr(new, section))
    if problems:
        raise ConfigError(problems)
