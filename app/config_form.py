"""Form ↔ config: the UI's settings form is generated from the trainer's own field docs.

One source of truth: every widget, label, help text, choice list and basic/advanced placement comes from
``trainer.config.field_infos()``, so a setting added to the trainer shows up in the UI with no second
list of flags to keep in sync (the bmaltais kohya_ss GUI re-declares every flag by hand and drifts).
Pure functions only — no Gradio here — so the mapping is unit-tested without a browser.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import (
    PRESETS,
    Config,
    ConfigError,
    FieldInfo,
    SamplingConfig,
    config_from_dict,
    config_to_dict,
    dumps_config,
    field_infos,
    preset_config,
    validate,
)
from trainer.models.builtin import RECOMMENDED_GUIDANCE, recommended_guidance
from trainer.presets import DEMO_BASE, DEMO_PRESET, DEMO_REGULARIZATION, uses_demo_regularization

# The demo's regularization images, in the repository beside sample_data/.
SAMPLE_REGULARIZATION = Path(__file__).resolve().parents[1] / DEMO_REGULARIZATION

# The form's section titles, for people; a section without one is shown capitalised ("Tracking").
SECTION_TITLES = {
    "run": "Run name",
    "model": "Model",
    "dataset": "Dataset",
    "network": "Adapter (network)",
    "optimizer": "Optimizer and learning rate",
    "training": "Training",
    "sampling": "Previews",
    "checkpoint": "Checkpoints",
    "export": "Export",
    "validation": "Validation",
    "tracking": "Experiment tracking",
}
# Set by the UI itself, never typed by the user: runs always go under the UI's runs dir.
UI_MANAGED_KEYS = ("run.output_dir",)
LIST_SEPARATOR = "\n"


@dataclass(frozen=True)
class FormField:
    """One widget of the settings form, derived from a trainer config field."""

    info: FieldInfo

    @property
    def key(self) -> str:
        return self.info.key

    @property
    def kind(self) -> str:
        """``dropdown``, ``checkbox``, ``int``, ``float``, ``lines`` (a list, one item a line) or ``text``."""
        if self.info.choices:
            return "dropdown"
        return {"bool": "checkbox", "int": "int", "float": "float", "list[str]": "lines"}.get(self.info.type, "text")

    @property
    def label(self) -> str:
        return self.info.name.replace("_", " ")

    @property
    def help(self) -> str:
        return self.info.doc.replace("`", "")

    @property
    def advanced(self) -> bool:
        return self.info.advanced


def section_title(section: str) -> str:
    """``"optimizer"`` → ``"Optimizer and learning rate"``: the words above a group of settings."""
    return SECTION_TITLES.get(section, section.replace("_", " ").capitalize())


def form_fields() -> list[FormField]:
    """Every user-editable setting, in the trainer's declaration order."""
    return [FormField(info) for info in field_infos() if info.key not in UI_MANAGED_KEYS]


def ui_default_config(runs_dir: Path, sample_data: Path, sample_regularization: Path = SAMPLE_REGULARIZATION) -> Config:
    """What a first-time user sees: the ``shapes-demo`` preset on ``sample_data/``, so Train works at once on a CPU.

    The preset names its regularization folder relative to the repository (as ``init-config`` writes it);
    the UI runs the trainer from elsewhere, so it gets the absolute path. The UI exports both formats by
    default so that both download buttons have a file behind them.
    """
    cfg = preset_config(DEMO_PRESET)
    cfg.run.output_dir = str(runs_dir)
    cfg.dataset.path = str(sample_data)
    cfg.dataset.reg_path = str(sample_regularization)
    cfg.export.format = "both"
    return cfg


def apply_preset(cfg: Config, preset: str) -> Config:
    """The preset's values over ``cfg``; the run name, model, dataset path and trigger word are kept."""
    if preset not in PRESETS:
        return cfg
    fresh = config_to_dict(preset_config(preset))
    current = config_to_dict(cfg)
    for section, values in PRESETS[preset].items():
        current[section].update({k: fresh[section][k] for k in values})
    return config_from_dict(current)


def settings_for_new_base(cfg: Config) -> tuple[Config, list[str]]:
    """When the form's base leaves builtin:shapes-sd, what only made sense for it goes, and each change is
    said: the first run's regularization folder (circles, squares and triangles; kept, the pre-flight check
    refuses it for another base) is cleared, and guidance still at that model's own 3 returns to the new
    base's (SD's 7.5). ``cfg`` already holds the new base."""
    if cfg.model.base == DEMO_BASE:
        return cfg, []
    changes = []
    if uses_demo_regularization(cfg):
        changes.append(f"dataset.reg_path: {cfg.dataset.reg_path!r} → '' (images made for {DEMO_BASE})")
        cfg.dataset.reg_path = ""
    guidance = recommended_guidance(cfg.model.base, SamplingConfig().guidance_scale)
    if cfg.sampling.guidance_scale == RECOMMENDED_GUIDANCE[DEMO_BASE] != guidance:
        changes.append(f"sampling.guidance_scale: {cfg.sampling.guidance_scale:g} → {guidance:g} ({DEMO_BASE}'s own was 3)")
        cfg.sampling.guidance_scale = guidance
    return cfg, changes


def preset_changes(before: Config, after: Config) -> list[str]:
    """What applying a preset changed, one ``section.name: old → new`` a setting, in the form's order."""
    old, new = config_to_dict(before), config_to_dict(after)
    return [
        f"{field.key}: {old[field.info.section][field.info.name]!r} → {new[field.info.section][field.info.name]!r}"
        for field in form_fields()
        if old[field.info.section][field.info.name] != new[field.info.section][field.info.name]
    ]


def config_to_values(cfg: Config) -> list[Any]:
    """Widget values for ``cfg``, in ``form_fields()`` order."""
    data = config_to_dict(cfg)
    values = []
    for field in form_fields():
        value = data[field.info.section][field.info.name]
        values.append(LIST_SEPARATOR.join(value) if field.kind == "lines" else value)
    return values


def values_to_config(values: list[Any], runs_dir: Path) -> tuple[Config | None, list[str]]:
    """The config the form describes, and every problem with it (type errors and trainer validation).

    Problems name fields as the config file does (``network.rank``), the same words the CLI prints.
    """
    fields = form_fields()
    if len(values) != len(fields):
        raise ValueError(f"expected {len(fields)} form values, got {len(values)}")
    data: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for field, raw in zip(fields, values, strict=True):
        value, problem = _parse(field, raw)
        if problem:
            problems.append(problem)
            continue
        data.setdefault(field.info.section, {})[field.info.name] = value
    data.setdefault("run", {})["output_dir"] = str(runs_dir)
    if problems:
        return None, problems
    try:
        cfg = config_from_dict(data)
    except ConfigError as err:
        return None, err.problems
    return cfg, validate(cfg)


def _parse(field: FormField, raw: Any) -> tuple[Any, str | None]:
    key = f"`{field.key}`"
    kind = field.kind
    if kind == "checkbox":
        return bool(raw), None
    if kind in ("int", "float"):
        if raw is None or raw == "":
            return None, f"{key} needs a number"
        try:
            number = float(raw)
        except (TypeError, ValueError):
            return None, f"{key} must be a number, got {raw!r}"
        if kind == "int":
            if not number.is_integer():
                return None, f"{key} must be a whole number, got {raw!r}"
            return int(number), None
        return number, None
    if kind == "lines":
        text = raw if isinstance(raw, str) else LIST_SEPARATOR.join(raw or [])
        return [line.strip() for line in text.splitlines() if line.strip()], None
    return ("" if raw is None else str(raw)).strip(), None


def config_from_toml_text(text: str, source: str, runs_dir: Path) -> tuple[Config | None, list[str]]:
    """A config loaded from an uploaded TOML file; its run folder is moved under the UI's runs dir."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        return None, [f"{source} is not valid TOML: {err}"]
    try:
        cfg = config_from_dict(data, source)
    except ConfigError as err:
        return None, [f"{source}: {p}" for p in err.problems]
    cfg.run.output_dir = str(runs_dir)
    return cfg, []


def config_to_toml_text(cfg: Config) -> str:
    """The commented TOML the CLI writes (``python -m trainer train`` runs it as is)."""
    return dumps_config(cfg, comments=True)


def unique_run_name(runs_dir: Path, name: str, reserved: set[str] | frozenset[str] = frozenset()) -> str:
    """``name``, or ``name-2``, ``name-3``… so a new run never lands in a folder that holds another run.

    ``reserved``: names of queued runs whose folders do not exist yet.
    """
    taken = {p.name for p in runs_dir.iterdir()} if runs_dir.is_dir() else set()
    taken |= set(reserved)
    if name not in taken:
        return name
    # `my-lora-2` taken (the form reopens with the newest run's name): `my-lora-3`, not `my-lora-2-2`.
    stem, dash, number = name.rpartition("-")
    if dash and number.isdigit() and stem in taken:
        name = stem
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"
