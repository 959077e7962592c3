"""Does torch.compile pay on this machine? Seconds per training step of the default preset, eager
against compiled (``nn.Module.compile(dynamic=False)``, as ``train.compile: true``), interleaved
in one run; the compile time; the graphs and graph breaks ``torch._dynamo.explain`` reports; and,
with ``--run RUN_DIR``, AutoAttack images per second on that run's best model, eager and compiled.

    python benchmarks/compile_step.py                       # RAT-TRADES and TRADES, float32 (+ bf16 if native)
    python benchmarks/compile_step.py --run runs/main-job   # + AutoAttack on the main job's model
    python benchmarks/compile_step.py --json docs/performance/compile-cpu.json

docs/performance.md ("Compiled steps") quotes it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ratkit.compile import compile_model
from ratkit.config import load_config
from ratkit.data import dataset_info
from ratkit.device import environment, native_bfloat16
from ratkit.models import build_model, model_kwargs_for
from ratkit.train import build_method


def _setup(method: str, precision: str, compiled: bool):
    rat = "method.rat={}" if method == "rat-trades" else "method.rat=null"
    cfg = load_config(None, [f"attack.precision={precision}", rat])
    torch.manual_seed(0)
    model = build_model("smallcnn", **model_kwargs_for("smallcnn", dataset_info("fashion-mnist"), **cfg.model.kwargs))
    model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(128, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), generator=g)
    if compiled:  # as train.compile: true (the recompile limit raised: one graph per mode, grad mode, autocast)
        compile_model(model, "true", x)
    step = build_method(cfg)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    return lambda: step.step(model, optimizer, x, y), model, x


def time_steps(precisions, methods, rounds: int) -> dict:
    variants, setup_s = {}, {}
    for key in [(m, p, c) for m in methods for p in precisions for c in (False, True)]:
        start = time.perf_counter()  # a compiled variant compiles here (the trial of train.compile)
        variants[key] = _setup(*key)
        setup_s[key] = time.perf_counter() - start
    first = {}
    for key, (run, _, _) in variants.items():  # the first two steps: compile time for the compiled ones
        start = time.perf_counter()
        run()
        run()
        first[key] = time.perf_counter() - start
    times = {key: [] for key in variants}
    for _ in range(rounds):  # interleaved, so drift hits every variant alike
        for key, (run, _, _) in variants.items():
            start = time.perf_counter()
            run()
            times[key].append(time.perf_counter() - start)
    rows = []
    for (m, p, c), t in times.items():
        median = statistics.median(t)
        eager = statistics.median(times[(m, p, False)])
        rows.append({"method": m, "attack_precision": p, "compiled": c, "s_per_step": median,
                     "vs_eager": median / eager, "first_two_steps_s": first[(m, p, c)],
                     "setup_s": setup_s[(m, p, c)],
                     "compile_s": setup_s[(m, p, c)] - setup_s[(m, p, False)] + max(0.0, first[(m, p, c)] - 2 * median)
                     if c else 0.0})
    import torch._dynamo.utils

    return {"rows": rows, "unique_graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"], "explain": explain(variants[(methods[0], precisions[0], False)][1],
                                             variants[(methods[0], precisions[0], False)][2])}


def explain(model, x) -> dict:
    """Graphs and graph breaks of the model's forward (train mode, with features, as RAT calls it)."""
    import torch._dynamo

    out = torch._dynamo.explain(model)(x, with_features=True)
    return {"graphs": out.graph_count, "graph_breaks": out.graph_break_count,
            "break_reasons": [str(r.reason)[:200] for r in out.break_reasons]}


def autoattack_rate(run_dir: str, n: int) -> list[dict]:
    from ratkit.attacks.autoattack import autoattack_correct
    from ratkit.checkpoints import load_model
    from ratkit.config import data_source
    from ratkit.data.source import load_split
    from ratkit.train import load_run_config

    cfg = load_run_config(run_dir)
    test = load_split(data_source(cfg), "test").first(n).as_float()
    rows = []
    for compiled in (False, True):
        model, _ = load_model(f"{run_dir}/best", torch.device("cpu"))
        model.to(memory_format=torch.channels_last).eval()
        if compiled:
            compile_model(model, "true", test.x[:64].contiguous(memory_format=torch.channels_last))
        start = time.perf_counter()
        robust = autoattack_correct(model, test.x, test.y, eps=0.1, norm="Linf", batch_size=256)
        seconds = time.perf_counter() - start
        rows.append({"compiled": compiled, "images": n, "seconds": seconds, "images_per_s": n / seconds,
                     "robust": int(robust.sum())})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--run", default=None, help="a trained run directory: time AutoAttack on its best model too")
    p.add_argument("--aa-n", type=int, default=100)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    precisions = ["float32"] + (["bfloat16"] if native_bfloat16("cpu")[0] else [])
    result = {"environment": environment("cpu"), **time_steps(precisions, ["rat-trades", "trades"], args.rounds)}
    for r in result["rows"]:
        print(f"{r['method']:10s} attack {r['attack_precision']:8s} {'compiled' if r['compiled'] else 'eager   '} "
              f"{r['s_per_step']:.3f} s/step ({r['vs_eager']:.2f}x eager), first two steps {r['first_two_steps_s']:.1f} s"
              + (f", compile ~{r['compile_s']:.1f} s" if r["compiled"] else ""))
    print("explain:", json.dumps(result["explain"]), "unique graphs compiled:", result["unique_graphs"])
    if args.run:
        result["autoattack"] = autoattack_rate(args.run, args.aa_n)
        for r in result["autoattack"]:
            print(f"AutoAttack {'compiled' if r['compiled'] else 'eager'}: {r['images_per_s']:.2f} img/s "
                  f"({r['images']} images, {r['seconds']:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
