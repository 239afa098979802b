"""Pre-flight: every problem with a run that can be found in a second, before a run folder exists.

A wrong model path or dataset folder used to pass Start and fail in the trainer half a minute later,
leaving a failed run folder that then blocked its name. ``preflight(cfg)`` answers first, without
torch (the UI calls it in-process, and ``python -m trainer train`` before it creates the run folder):

1. the config's own validation (``trainer.config.validate``);
2. ``model.base`` from its files alone (``models.probe``: configs and safetensors headers, no loading,
   builtins never built, a hub id looked up in the local cache or asked with a short timeout) and
   ``model.vae``;
3. ``dataset.path`` and ``dataset.reg_path`` scanned as the trainer scans them, each image opened
   header-only (the trainer decodes them; this catches empty, renamed and non-image files cheaply);
4. ``network.init_from`` against the network settings and the base (``adapter_probe``);
5. ``dataset.resolution`` against the base's native size (a warning);
6. the run's disk use (``disk_estimate``) against the free space where the run folder goes;
7. the run folder itself (``run_folder.run_dir_problem``: the trainer's own rule).

A check whose setting validation already refused is skipped, so each problem is said once.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.adapter_probe import check_init_from
from trainer.config import Config, validate
from trainer.data.images import IMAGE_EXTENSIONS, ImageReadError
from trainer.data.images import _open as open_header  # header only; probe_image would decode every image
from trainer.data.scan import ImageRecord, scan_folder
from trainer.disk_estimate import DiskEstimate, estimate_run_disk, mb
from trainer.distributed import sharding_problem
from trainer.errors import UserFacingError
from trainer.models.probe import CONFIGS, FAMILY_NAMES, ModelProbe, probe_base_model, vae_problems
from trainer.models.quantize_rules import cuda_if_known, machine_problem
from trainer.networks.settings import export_warnings
from trainer.optim_settings import optimizer_warnings
from trainer.run_folder import run_dir_problem

HEADER_BUDGET_S = 0.5  # opening image headers stops after this; the trainer checks every image anyway
LISTED = 5  # items shown per problem before "and N more"


@dataclass
class PreflightReport:
    """Errors stop the run; warnings are shown and the run goes ahead; notes are facts for ``--dry-run``."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    disk: DiskEstimate | None = None
    resources: Any = None  # trainer.estimate.ResourceEstimate, when the model's configs are known
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def format_text(self, notes: bool = False) -> str:
        """The report as the CLI prints it: one problem per line, each naming its setting."""
        lines = []
        if self.errors:
            lines.append(f"{len(self.errors)} problem(s) to fix before training:")
            lines += [f"  - {e}" for e in self.errors]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s):")
            lines += [f"  - {w}" for w in self.warnings]
        if notes:
            lines += [f"  {n}" for n in self.notes]
        if self.ok:
            lines.append(f"pre-flight check passed ({self.seconds:.2f} s)")
        return "\n".join(lines)


class PreflightError(UserFacingError):
    """The pre-flight check found errors; the message is the report (one error alone reads like any CLI error)."""

    def __init__(self, report: PreflightReport):
        self.report = report
        alone = len(report.errors) == 1 and not report.warnings
        super().__init__(report.errors[0] if alone else report.format_text())


def preflight(cfg: Config, resume: bool = False) -> PreflightReport:
    """Check ``cfg`` before a run starts; creates nothing and loads no model (see the module doc)."""
    start = time.monotonic()
    report = PreflightReport(errors=list(validate(cfg)), warnings=export_warnings(cfg) + optimizer_warnings(cfg.optimizer))
    if (problem := sharding_problem()) is not None:  # an accelerate launch with a DeepSpeed / FSDP config
        report.errors.append(problem)
    flagged = {e.split("`")[1] for e in report.errors if e.count("`") >= 2}

    def unflagged(key: str) -> bool:
        return key not in flagged

    probed = _unless_os_error(report, "model.base", lambda: probe_base_model(cfg.model)) if unflagged("model.base") else None
    model = probed or ModelProbe()
    model_ok = probed is not None and not probed.errors
    report.errors += model.errors
    report.warnings += model.warnings
    if cfg.model.vae.strip() and unflagged("model.vae"):
        report.errors += _unless_os_error(report, "model.vae", lambda: vae_problems(cfg.model.vae)) or []
    images, items = _unless_os_error(report, "dataset.path", lambda: _check_datasets(cfg, report, unflagged)) or (0, 0)
    if (problem := _adalora_epoch_schedule(cfg, items)) is not None:
        report.errors.append(problem)
    if cfg.model.quantize != "none" and (problem := machine_problem(cfg.model.quantize, cuda_if_known())) is not None:
        report.errors.append(problem)
    if cfg.network.init_from.strip() and unflagged("network.init_from"):
        adapter = check_init_from(cfg.network.init_from, cfg.network, model if model_ok else ModelProbe())
        report.errors += adapter.errors
        report.warnings += adapter.warnings
    if model_ok:
        family = FAMILY_NAMES.get(model.family or "", "family known once loaded")
        report.notes.append(f"model.base: {model.kind}, {family}")
        if (problem := demo_regularization_problem(cfg)) is not None:
            report.errors.append(problem)
    if not flagged and model_ok:  # these compute with the settings and the model's facts
        _check_resolution(cfg, model, report)
        _unless_os_error(report, "run.output_dir", lambda: _check_disk(cfg, model, images, items, report))
        _estimate(cfg, model, report)
    if unflagged("run.name") and (problem := _unless_os_error(report, "run.name", lambda: run_dir_problem(cfg, resume))):
        report.errors.append(problem)
    report.seconds = time.monotonic() - start
    return report


def demo_regularization_problem(cfg: Config) -> str | None:
    """The first run's regularization images (circles, squares and triangles for builtin:shapes-sd) kept in a
    config whose base was changed: they would teach that model a wrong prior without a word. Checked once
    the base is known to exist, so a missing model is reported first."""
    from trainer.presets import DEMO_BASE, uses_demo_regularization

    if not uses_demo_regularization(cfg) or cfg.model.base == DEMO_BASE:
        return None
    return (
        f"`dataset.reg_path` is the first run's regularization images (circles, squares and triangles for "
        f"{DEMO_BASE}), which would teach {cfg.model.base!r} a wrong prior: clear `dataset.reg_path`, or point "
        "it at images of your subject's class made with this model"
    )


def _unless_os_error(report: PreflightReport, key: str, check: Any) -> Any:
    """``check()``; a file system error on the way (no permission, a vanished disk) becomes an error naming ``key``."""
    try:
        return check()
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        report.errors.append(f"`{key}`: cannot read{where}: {err.strerror or err}; check the path and its permissions")
        return None


def _check_datasets(cfg: Config, report: PreflightReport, unflagged: Any) -> tuple[int, int]:
    """(images, items per epoch) of the training and regularization folders that will be used."""
    ds = cfg.dataset
    records: list[ImageRecord] = []
    if unflagged("dataset.path"):
        scan = scan_folder(Path(ds.path), repeats=ds.repeats, trigger=ds.trigger_word, class_word=ds.class_word, probe=False)
        records += _checked(scan, "dataset.path", ds.path, cfg, report)
    if ds.reg_path.strip() and unflagged("dataset.reg_path"):
        reg = scan_folder(Path(ds.reg_path), repeats=1, class_word=ds.class_word, regularization=True, probe=False)
        # dataset.py's rule: with `class_images` a missing or empty folder is filled before training.
        pending = ds.class_images > 0 and (reg.missing or not (reg.records or reg.problems or reg.bad_files))
        if pending:
            report.notes.append(f"dataset.reg_path: {ds.class_images} class images will be generated into {ds.reg_path}")
            return len(records) + ds.class_images, sum(r.repeats for r in records) + ds.class_images
        records += _checked(reg, "dataset.reg_path", ds.reg_path, cfg, report)
    if cfg.validation.fraction and unflagged("validation.fraction") and records:
        from trainer.data.holdout import held_out_split

        try:
            records, _ = held_out_split(records, cfg.validation.fraction, cfg.validation.seed)
        except UserFacingError as err:
            report.errors.append(str(err))
    return len(records), sum(r.repeats for r in records)


def _checked(scan: Any, key: str, folder: str, cfg: Config, report: PreflightReport) -> list[ImageRecord]:
    """``dataset._checked_records``'s rules on a header-only scan; returns the usable records."""
    if scan.missing:
        where = folder if Path(folder).expanduser().is_absolute() else f"{folder} (that is, {Path(folder).resolve()})"
        report.errors.append(f"`{key}` folder not found: {where}; point it at a folder of images")
        return []
    if scan.problems:
        report.errors.append(f"`{key}` ({folder}) has {len(scan.problems)} problem(s) to fix: {_listed(scan.problems)}")
        return []
    bad = _unreadable(scan.records)
    listed = [f"{path}: {reason}" for path, reason in bad.items()]
    if bad and not cfg.dataset.skip_bad_images:
        report.errors.append(
            f"`{key}` ({folder}) has {len(bad)} unreadable image(s); fix or remove them, or set "
            f"`dataset.skip_bad_images = true` to train without them: {_listed(listed)}"
        )
        return []
    if bad:
        report.warnings.append(f"`{key}`: {len(bad)} unreadable image(s) will be skipped: {_listed(listed)}")
    if scan.warnings:
        report.warnings.append(f"`{key}` ({folder}): {_listed(scan.warnings)}")
    usable = [r for r in scan.records if r.path not in bad]
    if not usable:
        report.errors.append(
            f"`{key}` ({folder}) holds no usable images (looked for {' '.join(IMAGE_EXTENSIONS)} in the folder "
            "and in `N_name class` subfolders)"
        )
    return usable


def _unreadable(records: list[ImageRecord]) -> dict[Path, str]:
    """Why each image whose header cannot be read is unusable; stops after HEADER_BUDGET_S."""
    deadline = time.monotonic() + HEADER_BUDGET_S
    bad = {}
    for record in records:
        if time.monotonic() > deadline:
            break
        try:
            open_header(record.path).close()
        except ImageReadError as err:
            bad[record.path] = str(err)
    return bad


def _listed(items: list[str]) -> str:
    more = f" (and {len(items) - LISTED} more)" if len(items) > LISTED else ""
    return "; ".join(items[:LISTED]) + more


def _check_resolution(cfg: Config, model: ModelProbe, report: PreflightReport) -> None:
    """Warn far from the native size; the random builtins carry none (any size is as good as another)."""
    if model.native is None or model.family is None:
        return
    low, high = model.native
    res = cfg.dataset.resolution
    if res < low * 3 // 4 or res > high * 2:
        native = f"{low}" if low == high else f"{low} or {high}"
        report.warnings.append(
            f"`dataset.resolution` is {res} px but this {FAMILY_NAMES[model.family]} model was made for {native} px; "
            f"set `dataset.resolution = {low if res < low else high}` (far from its native size a model learns poorly)"
        )


def _adalora_epoch_schedule(cfg: Config, items: int) -> str | None:
    """AdaLoRA's schedule against a run given in epochs (``validate`` checks one given in ``max_steps``)."""
    net, tr = cfg.network, cfg.training
    if net.type != "adalora" or tr.max_steps or not items or tr.batch_size < 1 or tr.gradient_accumulation_steps < 1:
        return None
    steps = tr.epochs * math.ceil(math.ceil(items / tr.batch_size) / tr.gradient_accumulation_steps)
    if net.adalora_tinit + net.adalora_tfinal < steps:
        return None
    from trainer.networks.settings import schedule_problem

    return schedule_problem(net, steps)


def _check_disk(cfg: Config, model: ModelProbe, images: int, items: int, report: PreflightReport) -> None:
    configs = _model_configs(model)
    try:
        estimate = estimate_run_disk(cfg, configs, images, items)
    except (KeyError, TypeError, ValueError, IndexError):  # an unusual UNet config: no estimate, no false alarm
        return
    where = _existing_parent(cfg.run_dir)
    free = shutil.disk_usage(where).free
    report.disk = estimate
    report.notes.append(f"disk: about {mb(estimate.total)} MB for this run ({estimate.describe()}), {mb(free)} MB free on {where}")
    if estimate.total > free:
        report.errors.append(
            f"not enough disk space for this run: about {mb(estimate.total)} MB needed, {mb(free)} MB free on {where} "
            f"({estimate.describe()}); free some space, lower `checkpoint.keep_last` or `checkpoint.every_n_steps`, "
            "or set `run.output_dir` to a bigger disk"
        )


def _estimate(cfg: Config, model: ModelProbe, report: PreflightReport) -> None:
    """Peak memory and seconds per step (``trainer.estimate``); a GPU run that cannot fit is a warning naming
    the settings that shrink it (the estimate is a model, so it never stops a run)."""
    from trainer.estimate import component_params, estimate_resources, memory_advice
    from trainer.gpus import visible_gpus

    gpus = [] if cfg.training.device == "cpu" else visible_gpus()
    configs = _model_configs(model)
    if "unet" not in configs:
        return
    try:
        estimate = estimate_resources(cfg, configs, component_params(model.config_dir, model.family), "cuda" if gpus else "cpu")
    except (KeyError, TypeError, ValueError, IndexError):  # an unusual UNet config: no estimate
        return
    report.resources = estimate
    report.notes.append(estimate.describe())
    smallest = min((g.memory_mb for g in gpus), default=0)
    if gpus and estimate.peak_mb > smallest:
        report.warnings.append(
            f"this run may not fit in GPU memory: about {estimate.peak_mb:,.0f} MB needed, {smallest:,} MB on the GPU; "
            + memory_advice(cfg)
        )


def _model_configs(model: ModelProbe) -> dict[str, dict[str, Any]]:
    """The base's component configs; an unknown non-builtin model (a .ckpt, an uncached hub id) counts as SD 1.x."""
    if model.config_dir is None and model.kind not in ("builtin", ""):
        model = ModelProbe(config_dir=CONFIGS / "sd1")
    configs = {c: model.config(c) for c in ("unet", "vae", "text_encoder", "text_encoder_2")}
    return {c: v for c, v in configs.items() if v is not None}


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
