"""What validation, EMA and the recipe options cost a run: wall time of the same run with each switched on.

Each variant trains the builtin model on sample_data/ (CPU unless CUDA is there) in a fresh run folder and
reports its wall time from the first to the last step event, and for validation the time of one evaluation
(the gap its event adds). Variants run one after another in this process, so a shared machine's noise shows.

    python bench/validation_cost.py [--steps 60] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

VARIANTS = {
    "baseline": {},
    "ema 0.999": {"training.ema_decay": 0.999},
    "validation 2 img x 4 t, every 10": {"validation.fraction": 0.25, "validation.every_n_steps": 10},
    "recipe (logit-normal, multires, ip, debiased, huber)": {
        "training.timestep_sampling": "logit_normal", "training.multires_noise_iterations": 6,
        "training.ip_noise_gamma": 0.1, "training.debiased_estimation": True, "training.loss_type": "huber",
    },
}


def run(name: str, overrides: dict, steps: int, root: Path) -> tuple[float, int]:
    from trainer.config import Config
    from trainer.events import read_events
    from trainer.train import train

    cfg = Config()
    cfg.run.output_dir, cfg.run.name = str(root), f"{len(list(root.iterdir()))}"
    cfg.dataset.path = str(REPO / "sample_data")
    cfg.training.max_steps, cfg.sampling.every_n_steps, cfg.sampling.at_end = steps, 0, False
    cfg.checkpoint.every_n_steps, cfg.export.verify = 0, False
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(getattr(cfg, section), field, value)
    train(cfg, show_progress=False)
    events = read_events(cfg.run_dir)
    steps_seen = [e for e in events if e["type"] == "step"]
    last = steps_seen[-1]["step"]
    # Evaluations between the first and last step event (the final one runs after the last step).
    inside = sum(e["type"] == "validation" and e["step"] < last for e in events)
    return steps_seen[-1]["time"] - steps_seen[0]["time"], inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: [] for name in VARIANTS}
        for _ in range(args.repeat):
            for name, overrides in VARIANTS.items():
                started = time.perf_counter()
                seconds, validations = run(name, overrides, args.steps, Path(tmp))
                results[name].append((seconds, validations, time.perf_counter() - started))
    base = statistics.median(s for s, _, _ in results["baseline"])
    print(f"{args.steps} steps, median of {args.repeat}; first to last step event (whole run incl. setup)")
    for name, rows in results.items():
        seconds = statistics.median(s for s, _, _ in rows)
        validations = rows[0][1]
        extra = f", {(seconds - base) / validations:.2f} s per evaluation" if validations else ""
        print(f"  {name:55s} {seconds:6.2f} s ({seconds / base:4.2f}x){extra}  "
              f"[{statistics.median(w for _, _, w in rows):.1f} s]")


if __name__ == "__main__":
    main()
