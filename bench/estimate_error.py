"""How far the pre-launch estimate (trainer/estimate.py) is from every measurement in bench/results, and the
coefficients that fit those measurements best (least squares per device kind).

    python bench/estimate_error.py                       # bench/results/*.jsonl and *.json
    python bench/estimate_error.py --measured OUT/*.json # plus new throughput runs (bench/throughput.py)

Measurements: ``train_speed.py`` lines (engine steps/s, peak VRAM/RSS) and ``throughput.py`` documents (the
``engine`` variant of each batch size). A model path that no longer exists is read as the architecture its name
says (``sd15``/``sdxl`` random models have the real architectures' sizes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.config import Config  # noqa: E402
from trainer.estimate import (  # noqa: E402
    CALIBRATION,
    COMPUTE_BYTES,
    MB,
    component_params,
    estimate_resources,
    latent_pixels,
    unet_units,
)
from trainer.models.probe import CONFIGS, ModelProbe, probe_base_model  # noqa: E402


@dataclass
class Measurement:
    source: str
    model: str
    device: str
    cfg: Config
    peak_mb: float
    seconds: float


def _model(name: str) -> tuple[dict, dict]:
    """(component configs, parameter counts) for a measured model name."""
    from trainer.config import ModelConfig

    probe = None
    if name.startswith("builtin:") or Path(name).is_dir():
        probe = probe_base_model(ModelConfig(base=name))
    if probe is None or probe.config_dir is None:
        family = "sdxl" if "sdxl" in name else "sd1"
        if "small" in name:
            raise LookupError(f"{name}: gone; rebuild it with bench/random_models.py to include it")
        probe = ModelProbe(family=family, config_dir=CONFIGS / family)
        params = component_params(None, family)
    else:
        params = component_params(probe.config_dir, probe.family)
    configs = {c: probe.config(c) for c in ("unet", "vae", "text_encoder", "text_encoder_2")}
    return {c: v for c, v in configs.items() if v is not None}, params


def _cfg(resolution: int, batch: int, precision: str, ckpt: bool, optimizer: str, rank: int) -> Config:
    cfg = Config()
    cfg.dataset.resolution, cfg.training.batch_size, cfg.training.mixed_precision = resolution, batch, precision
    cfg.training.gradient_checkpointing, cfg.optimizer.name, cfg.network.rank = ckpt, optimizer, rank
    return cfg


def load(paths: list[Path]) -> list[Measurement]:
    out = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            for line in filter(None, text.splitlines()):
                r = json.loads(line)
                if not isinstance(r.get("engine"), dict) or "steps_per_s" not in r["engine"]:
                    continue  # another bench's record (not bench/train_speed.py's)
                engine = r["engine"]
                device = "cuda" if "peak_vram_mb" in engine else "cpu"
                cfg = _cfg(r["resolution"], r["batch_size"], r["mixed_precision"], r["gradient_checkpointing"], r["optimizer"], 16)
                peak = engine.get("peak_vram_mb", engine.get("peak_rss_mb"))
                out.append(Measurement(path.name, r["model"], device, cfg, peak, 1 / engine["steps_per_s"]))
        else:
            doc = json.loads(text)
            if "batches" not in doc:
                continue
            for batch, row in doc["batches"].items():
                engine = row.get("engine", {})
                if "images_per_s" not in engine:
                    continue
                cfg = _cfg(doc["resolution"], int(batch), doc["mixed_precision"], doc.get("gradient_checkpointing", False),
                           "adamw", doc.get("rank", 4))
                out.append(Measurement(path.name, doc["model"], doc["device"], cfg, engine["peak_mb"], int(batch) / engine["images_per_s"]))
    return out


def _terms(m: Measurement) -> dict[str, float]:
    configs, params = _model(m.model)
    tr = m.cfg.training
    px = latent_pixels(m.cfg.dataset.resolution, configs.get("vae"))
    act, compute = unet_units(configs["unet"], px)
    base = estimate_resources(m.cfg, configs, params, m.device)
    return {
        "fixed": base.parts_mb["weights"] + base.parts_mb["adapter"],
        "act": tr.batch_size * px * act * COMPUTE_BYTES.get(tr.mixed_precision, 4) / MB,
        "work": tr.batch_size * px * compute * (CALIBRATION[m.device].recompute_factor if tr.gradient_checkpointing else 1.0),
        "configs": configs, "params": params,
    }


def _line(xs: list[float], ys: list[float], intercept: float) -> tuple[float, float]:
    """Least squares y = a + b·x; with one distinct x, keep ``intercept`` and fit b alone."""
    if len(set(xs)) < 2:
        return intercept, statistics.fmean((y - intercept) / x for x, y in zip(xs, ys, strict=True))
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def fit(points: list[tuple[Measurement, dict]], device: str):
    cal = CALIBRATION[device]
    plain = [(m, t) for m, t in points if not m.cfg.training.gradient_checkpointing]
    ckpt = [(m, t) for m, t in points if m.cfg.training.gradient_checkpointing]
    runtime, act_bytes = cal.runtime_mb, cal.act_bytes
    if plain:
        runtime, act_bytes = _line([t["act"] for _, t in plain], [m.peak_mb - t["fixed"] for m, t in plain], cal.runtime_mb)
        runtime, act_bytes = max(runtime, 0.0), max(act_bytes, 1.0)
    fraction = cal.checkpoint_fraction
    if ckpt:
        fraction = statistics.fmean(max(0.05, (m.peak_mb - t["fixed"] - runtime) / (act_bytes * t["act"])) for m, t in ckpt)
    overhead, per_unit = _line([t["work"] for _, t in points], [m.seconds for m, _ in points], cal.overhead_s)
    overhead, per_unit = max(overhead, 0.0), max(per_unit, 1e-15)
    return replace(cal, runtime_mb=round(runtime, 1), act_bytes=round(act_bytes, 2), checkpoint_fraction=round(fraction, 3),
                   overhead_s=round(overhead, 4), units_per_s=float(f"{1 / per_unit:.3g}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measured", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    paths = sorted((REPO / "bench" / "results").glob("*.json*")) + list(args.measured)
    points = []
    for m in load(paths):
        try:
            points.append((m, _terms(m)))
        except LookupError as err:
            print(f"skipped: {err}")
    import trainer.estimate as E

    for device in sorted({m.device for m, _ in points}):
        mine = [(m, t) for m, t in points if m.device == device]
        fitted = fit(mine, device)
        print(f"\n{device}: shipped {CALIBRATION[device]}\n{device}: best fit {fitted}")
        for label, cal in (("shipped", CALIBRATION[device]), ("fitted", fitted)):
            E.CALIBRATION[device] = cal
            print(f"  {label}:  {'source':26s} {'model':18s} res batch prec ckpt | peak MB meas/pred (err) | s/step meas/pred (err)")
            for m, t in mine:
                est = estimate_resources(m.cfg, t["configs"], t["params"], device)
                tr = m.cfg.training
                print(f"    {m.source[:26]:26s} {Path(m.model).name[:18]:18s} {m.cfg.dataset.resolution:4d} {tr.batch_size:4d} "
                      f"{tr.mixed_precision:4s} {'y' if tr.gradient_checkpointing else 'n':4s} | "
                      f"{m.peak_mb:8.0f} / {est.peak_mb:8.0f} ({(est.peak_mb / m.peak_mb - 1) * 100:+5.0f}%) | "
                      f"{m.seconds:7.3f} / {est.seconds_per_step:7.3f} ({(est.seconds_per_step / m.seconds - 1) * 100:+5.0f}%)")
        E.CALIBRATION[device] = CALIBRATION[device]


if __name__ == "__main__":
    main()
