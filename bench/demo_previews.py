"""The README's before/after picture: the default first run's previews, step 0 (the base) to the last step.

Runs exactly what a newcomer starts (``init-config``'s ``shapes-demo`` config on ``sample_data/``, CPU), then
lays the previews side by side and prints what the shapes analyser reads in each, so the picture and the
claim under it come from the same run.

    python bench/demo_previews.py [--out docs/before_after.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "before_after.png")
    parser.add_argument("--scale", type=int, default=2, help="enlarge each 64 px preview this many times")
    args = parser.parse_args()

    from PIL import Image

    from app.config_form import ui_default_config
    from trainer.shapes.analyser import read_scene
    from trainer.train import train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = ui_default_config(Path(tmp) / "runs", REPO / "sample_data")
        cfg.training.device = "cpu"
        started = time.time()
        result = train(cfg, show_progress=True)
        seconds = time.time() - started
        if result.status != "completed":
            print(f"the default run ended {result.status}", file=sys.stderr)
            return 1
        samples = sorted((Path(tmp) / "runs" / cfg.run.name / "samples").glob("step_*_00.png"))
        images = [Image.open(p).convert("RGB") for p in samples]
        size = images[0].width * args.scale
        strip = Image.new("RGB", (size * len(images) + 4 * (len(images) - 1), size), "white")
        for i, image in enumerate(images):
            strip.paste(image.resize((size, size), Image.NEAREST), (i * (size + 4), 0))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        strip.save(args.out, optimize=True)
        readings = ", ".join(f"{p.name.split('_')[1].lstrip('0') or '0'}: {read_scene(im).shape}"
                             for p, im in zip(samples, images, strict=True))
    print(f"{args.out}: prompt {cfg.sampling.prompts[0]!r}; the analyser reads (step: shape) {readings}; "
          f"run {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
