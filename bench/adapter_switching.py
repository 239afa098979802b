"""What switching adapters on one pipeline saves over reloading: the cost of going to another adapter.

Baseline (measured in the same run): a fresh pipeline per adapter, i.e. load the base model, build the
pipeline, ``load_lora_weights``. Against it: on one bench (``trainer.adapter_switching``) loading one more
adapter (``bench.load``) and switching between loaded ones (``bench.activate``, a ``set_adapters`` call).
Adapters are random LoRA files (B ≠ 0) for the base, written to a temporary folder. Medians of --repeat.

    python bench/adapter_switching.py [--base builtin:tiny-sd] [--adapters 3] [--repeat 3]
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


def make_adapters(base: str, count: int, folder: Path) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    from trainer.config import Config, ModelConfig
    from trainer.export import kohya_state_dict
    from trainer.models.loading import load_base_model
    from trainer.network import inject_lora

    paths = []
    for index in range(count):
        model = load_base_model(ModelConfig(base=base))
        inject_lora(model, Config().network, train_text_encoder=True)
        torch.manual_seed(index)
        with torch.no_grad():
            for module in model.component_modules().values():
                for name, param in module.named_parameters():
                    if "lora_B" in name:
                        param.normal_(std=0.1)
        paths.append(folder / f"adapter{index}.safetensors")
        save_file(kohya_state_dict(model, dtype=torch.float32), paths[-1])
    return paths


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="builtin:tiny-sd")
    parser.add_argument("--adapters", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from trainer.adapter_files import open_adapter
    from trainer.adapter_switching import open_bench
    from trainer.config import Config, ModelConfig
    from trainer.models.loading import load_base_model
    from trainer.sampling import build_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_adapters(args.base, args.adapters, Path(tmp))
        files = [open_adapter(p) for p in paths]

        def fresh(path: Path) -> None:
            pipe = build_pipeline(load_base_model(ModelConfig(base=args.base)), Config().sampling.sampler)
            pipe.load_lora_weights(str(path), adapter_name="a")

        reload_s = [timed(lambda p=p: fresh(p)) for _ in range(args.repeat) for p in paths]
        bench, names = open_bench(args.base, files[:1], Config().sampling.sampler, "cpu")
        load_s = []
        for file in files[1:]:
            load_s.append(timed(lambda f=file: names.append(bench.load(f))))
        switch_s = [timed(lambda n=n: bench.activate({n: 1.0})) for _ in range(args.repeat) for n in names]
    reload_m, load_m, switch_m = (statistics.median(v) for v in (reload_s, load_s or [float("nan")], switch_s))
    print(f"base {args.base}, {args.adapters} adapters, median of {len(reload_s)} / {len(load_s)} / {len(switch_s)}")
    print(f"  fresh pipeline + adapter (baseline)  {reload_m:8.3f} s   1.00")
    print(f"  load one more adapter on the bench   {load_m:8.3f} s   {load_m / reload_m:.3f}")
    print(f"  switch to a loaded adapter           {switch_m:8.4f} s   {switch_m / reload_m:.4f}")


if __name__ == "__main__":
    main()
