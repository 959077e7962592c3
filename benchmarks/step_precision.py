"""Seconds per RAT-TRADES training step of the default preset, bfloat16 against float32 attack.

Why: on CPUs without native bfloat16 (AVX2 only) the preset's bfloat16 attack is many times slower
than float32; this tells in a minute whether a machine can run the study grids.

Example::

    python benchmarks/step_precision.py          # prints one line per precision
"""
import time

import torch

from ratkit.config import load_config
from ratkit.data import dataset_info
from ratkit.models import build_model, model_kwargs_for
from ratkit.train import build_method


def seconds_per_step(precision: str, steps: int = 3) -> float:
    """Mean wall time of `steps` steps after one warm-up step, on random Fashion-MNIST-shaped data."""
    cfg = load_config(None, [f"attack.precision={precision}"])
    torch.manual_seed(0)
    model = build_model("smallcnn", **model_kwargs_for("smallcnn", dataset_info("fashion-mnist"), **cfg.model.kwargs))
    method = build_method(cfg)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    method.step(model, optimizer, x, y)
    start = time.perf_counter()
    for _ in range(steps):
        method.step(model, optimizer, x, y)
    return (time.perf_counter() - start) / steps


if __name__ == "__main__":
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads")
    for precision in ("bfloat16", "float32"):
        print(f"{precision} attack: {seconds_per_step(precision):.2f} s/step")
