"""A stand-in for ``python -m trainer train CONFIG [--resume] [--no-progress]`` in the job manager tests.

Same arguments, run folder, ``events.jsonl``, ``train.log``, STOP file and SIGTERM handling as the real
trainer, but no torch: a run takes a fraction of a second. The config's ``[fake]`` table picks the
behaviour:

- ``mode``: ``normal`` (default), ``crash`` (prints a traceback, exit 3, no finished event), ``fail``
  (a ``finished``/``failed`` event, exit 1), ``ignore_stop`` (ignores STOP and SIGTERM/SIGINT), ``hang``
  (stops emitting after ``started``; SIGTERM kills it the default way)
- ``steps`` (5), ``step_seconds`` (0.05)
- ``export_check``: ``failed`` writes an ``export`` event whose self-check failed (``verified: false``
  and its ``message``) before ``finished``/``completed`` and exit 0, as an engine that records a failed
  check but still calls the run completed
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import tomllib
import traceback
from pathlib import Path

from trainer.events import EVENTS_FILE, EventWriter


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--wait-for-start", action="store_true")  # the warm standby: as the real trainer
    args = parser.parse_args()
    if args.wait_for_start:
        while not (args.config.parent / "go.json").exists():
            time.sleep(0.02)
        start = json.loads((args.config.parent / "go.json").read_text(encoding="utf-8"))
        args.resume = bool(start.get("resume"))
        os.chdir(start["cwd"])
    data = tomllib.loads(args.config.read_text(encoding="utf-8"))
    run, fake = data.get("run", {}), data.get("fake", {})
    mode = fake.get("mode", "normal")
    steps, step_seconds = int(fake.get("steps", 5)), float(fake.get("step_seconds", 0.05))
    run_dir = Path(run.get("output_dir", "runs")) / run.get("name", "my-lora")
    if (run_dir / EVENTS_FILE).exists() and not args.resume:
        print(f"error: run folder {run_dir} already holds a run; pass --resume", file=sys.stderr)
        return 2
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "STOP").unlink(missing_ok=True)
    (run_dir / "config.toml").write_text(args.config.read_text(encoding="utf-8"), encoding="utf-8")  # the UI lists folders by it

    signalled: list[str] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        if mode == "ignore_stop":
            signal.signal(sig, signal.SIG_IGN)
        elif mode != "hang":
            signal.signal(sig, lambda signum, frame: signalled.append(signal.Signals(signum).name))

    events = EventWriter(run_dir)
    with open(run_dir / "train.log", "a", encoding="utf-8") as train_log:

        def say(message: str) -> None:
            print(message, file=sys.stderr, flush=True)
            train_log.write(message + "\n")
            train_log.flush()

        events.emit("started", total_steps=steps, epochs=1, resumed_from_step=0, device="fake")
        say(f"fake trainer started: {mode}, {steps} steps")
        if mode == "hang":
            while True:
                time.sleep(1)
        try:
            for step in range(1, steps + 1):
                time.sleep(step_seconds)
                if mode == "crash" and step == 2:
                    raise RuntimeError("fake crash at step 2")
                if mode == "fail" and step == 2:
                    say("training failed: ValueError: fake failure")
                    events.emit("finished", status="failed", step=step, error="ValueError: fake failure", adapter=None)
                    return 1
                events.emit("step", step=step, total_steps=steps, epoch=0, loss=1.0 / step, lr=1e-4)
                if mode != "ignore_stop" and (signalled or (run_dir / "STOP").exists()):
                    events.emit("finished", status="stopped", step=step, error=None, adapter=None)
                    say(f"stopped at step {step} ({signalled[0] if signalled else 'STOP file'})")
                    return 0
        except RuntimeError:
            traceback.print_exc()
            return 3
        if fake.get("export_check") == "failed":
            events.emit("export", step=steps, path="fake.safetensors", format="kohya", verified=False,
                        max_abs_diff=0.5, keys=4, message="fake: max |dW| difference 0.5 > tolerance 0.001")
        events.emit("finished", status="completed", step=steps, error=None, adapter=None)
        say(f"completed at step {steps}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
