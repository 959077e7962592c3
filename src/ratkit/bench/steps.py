"""`rat bench`: what a training step of each method costs, measured in one run.

Timing: every configuration (AT, TRADES, MART, AWP-TRADES, each with and without RAT, plus
the reference-style naive TRADES and RAT-TRADES of ``benchmarks/naive_trades.py``) gets its
own model (same initialisation) and optimizer in this one process. After a warm-up, rounds
run the configurations in an order reshuffled every round, a few full training steps each
(attack + loss + backward + optimizer step), so slow drifts of the machine hit every
configuration alike; the figure per configuration is the median seconds per step. A ratio of two
configurations is the quotient of their medians, with a 95% confidence interval from a paired
bootstrap over rounds (:func:`ratio_ci`): the run-to-run spread of a ratio is several percent on
a busy machine, as large as the targets are about, and the interval shows it.

FLOPs: one extra, untimed step of each configuration under PyTorch's ``FlopCounterMode``
(matmuls and convolutions, forward and backward) gives its FLOPs per step, and with the median
time its achieved FLOP rate; a square matmul at each precision, timed in the same run
(:func:`gemm_gflops`), gives the machine's dense-matmul rate that the step rates are read against.

Memory: one subprocess per configuration, so one configuration's allocations cannot hide
another's. On CUDA the figure is ``max_memory_allocated`` during the timed steps minus the
memory allocated before them. On CPU it is the peak resident set during the steps (VmHWM,
reset through /proc/self/clear_refs) minus the resident set before them, with glibc told to
return every large block to the system (``MALLOC_MMAP_THRESHOLD_``) so that freed
activations do not linger as resident memory. Both measure the step's working memory
(activations, gradients, attack state), not the interpreter or the weights.

Ratios are quotients of figures from the same run, never of numbers from different runs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ..data import dataset_info
from ..device import environment
from ..methods import Method, StepPrecision, compose_method
from ..models import build_model, model_kwargs_for

BENCHMARKS_DIR_ENV = "RAT_BENCHMARKS_DIR"

# the library's configurations: name -> (base method, RAT's keyword arguments, AWP's; None: no wrapper),
# built by compose_method; every argument not given is the class's default (the papers' values)
METHODS = {"at": ("at", None, None), "rat-at": ("at", {}, None), "trades": ("trades", None, None),
           "rat-trades": ("trades", {}, None), "mart": ("mart", None, None), "rat-mart": ("mart", {}, None),
           "awp-trades": ("trades", None, {}), "awp-rat-trades": ("trades", {}, {}),
           "rat-exact-trades": ("trades", {"taylor": "exact-head"}, None),
           "rat-exact-at": ("at", {"taylor": "exact-head"}, None)}
NAIVE = ("naive-trades", "naive-rat-trades")
CONFIGS = (*METHODS, *NAIVE)

# ratio name -> (numerator, denominator) configurations
TIME_RATIOS = {
    "rat_trades_over_trades": ("rat-trades", "trades"),
    "awp_rat_trades_over_awp_trades": ("awp-rat-trades", "awp-trades"),
    "rat_at_over_at": ("rat-at", "at"),
    "rat_mart_over_mart": ("rat-mart", "mart"),
    "rat_exact_trades_over_trades": ("rat-exact-trades", "trades"),
    "rat_exact_at_over_at": ("rat-exact-at", "at"),
    "rat_exact_trades_over_rat_trades": ("rat-exact-trades", "rat-trades"),
    "trades_over_naive_trades": ("trades", "naive-trades"),
    "rat_trades_over_naive_rat_trades": ("rat-trades", "naive-rat-trades"),
}
MEMORY_PAIRS = {"trades": ("rat-trades", "trades"), "awp-trades": ("awp-rat-trades", "awp-trades"),
                "at": ("rat-at", "at"), "mart": ("rat-mart", "mart"),
                "exact-trades": ("rat-exact-trades", "trades"), "exact-at": ("rat-exact-at", "at")}
# The targets (upper bounds). rat_peak_mem_over_base is RAT-TRADES over TRADES, the
# paper's method; the other bases' memory ratios are reported beside it.
TARGETS = {
    "rat_trades_over_trades": 1.05,
    "awp_rat_trades_over_awp_trades": 1.05,
    "rat_at_over_at": 1.12,
    # exact-head (taylor="exact-head") costs what the soft targets cost: the same targets over the
    # base (over PGD-AT both pay the extra clean forward), and at most 5% over the soft-target RAT
    "rat_exact_trades_over_trades": 1.05,
    "rat_exact_at_over_at": 1.12,
    "rat_exact_trades_over_rat_trades": 1.05,
    "rat_peak_mem_over_base": 1.10,
    "trades_over_naive_trades": 0.6,
    "rat_trades_over_naive_rat_trades": 0.4,
}


@dataclass
class BenchSettings:
    """What to time. The defaults are the paper's training recipe (10 attack steps of eps/4, each
    method with its class's defaults, SGD momentum 0.9) on the dataset's shape."""

    dataset: str = "fashion-mnist"
    model: str = "smallcnn"
    model_kwargs: dict = field(default_factory=dict)
    batch_size: int = 128
    attack_steps: int = 10
    rounds: int = 60  # 60 x 1 step: a 95% CI of +-0.024 on RAT-TRADES/TRADES here (docs/performance.md)
    steps_per_round: int = 1
    warmup: int = 2
    memory_steps: int = 2
    configs: tuple[str, ...] = CONFIGS
    device: str = "cpu"
    seed: int = 0
    memory: bool = True
    attack_precision: str = "float32"  # the library's training attack; the naive baselines stay float32
    step_precision: str = "float32"  # the library's whole step (train.precision); the naive baselines stay float32
    channels_last: bool = True  # the library's layout (train.channels_last); the naive baselines stay NCHW
    compile: bool = False  # torch.compile the library's model (train.compile: true); the naive baselines stay eager


# ----------------------------------------------------------------------------- building


def naive_module():
    """``benchmarks/naive_trades.py`` (or $RAT_BENCHMARKS_DIR's), or None outside a source tree."""
    root = os.environ.get(BENCHMARKS_DIR_ENV) or Path(__file__).resolve().parents[3] / "benchmarks"
    path = Path(root) / "naive_trades.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("ratkit_bench_naive_trades", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_model(settings: BenchSettings, seed: int | None = None) -> nn.Module:
    """The benchmarked architecture for the dataset's shape, seeded so every configuration starts alike."""
    kwargs = model_kwargs_for(settings.model, dataset_info(settings.dataset), **settings.model_kwargs)
    torch.manual_seed(settings.seed if seed is None else seed)
    return build_model(settings.model, **kwargs)


def bench_method(name: str, eps: float, attack_steps: int, precision: str = "float32") -> Method:
    """A library method by its benchmark name (:data:`METHODS`), with the classes' defaults.

    Example: ``bench_method("awp-rat-trades", 8 / 255, 10)`` is AWP(RAT(TRADES)), attack steps of eps / 4."""
    if name not in METHODS:
        raise ValueError(f"unknown benchmark configuration {name!r}; expected one of {', '.join(METHODS)}")
    base, rat, awp = METHODS[name]
    return compose_method(base, eps, steps=attack_steps, step_size=eps / 4, precision=precision, rat=rat, awp=awp)


StepFn = Callable[[nn.Module, torch.optim.Optimizer, Tensor, Tensor, torch.Generator], object]


def make_step(name: str, settings: BenchSettings) -> StepFn:
    """``step(model, optimizer, x, y, generator)`` for one configuration."""
    eps = dataset_info(settings.dataset).linf_eps
    if name in NAIVE:
        naive = naive_module()
        if naive is None:
            raise FileNotFoundError("benchmarks/naive_trades.py not found; set $RAT_BENCHMARKS_DIR")
        rat = bench_method("rat-trades", eps, settings.attack_steps)  # the library's settings, for the naive copies
        common = dict(eps=eps, step_size=eps / 4, steps=settings.attack_steps, beta=rat.base.beta)
        if name == "naive-rat-trades":
            loss_fn, common = naive.naive_rat_trades_loss, {**common, "alpha": rat.alpha, "sigma": rat.sigma}
        else:
            loss_fn = naive.naive_trades_loss

        def naive_step(model, optimizer, x, y, generator):
            return naive.naive_step(loss_fn, model, optimizer, x, y, generator=generator, **common)

        return naive_step
    method = bench_method(name, eps, settings.attack_steps, settings.attack_precision)
    precision = StepPrecision(settings.step_precision, torch.device(settings.device).type)

    def library_step(model, optimizer, x, y, generator):
        return method.step(model, optimizer, x, y, generator=generator, precision=precision)

    return library_step


def _synthetic_batches(settings: BenchSettings, device: torch.device, count: int = 4) -> list[tuple[Tensor, Tensor]]:
    info = dataset_info(settings.dataset)
    g = torch.Generator().manual_seed(settings.seed)
    return [(torch.rand((settings.batch_size, *info.image_shape), generator=g).to(device),
             torch.randint(0, info.num_classes, (settings.batch_size,), generator=g).to(device))
            for _ in range(count)]


@dataclass
class _Runner:
    """One configuration's model, optimizer, step and generator."""

    name: str
    step: StepFn
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    batches: list
    calls: int = 0

    def run(self) -> None:
        x, y = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        self.step(self.model, self.optimizer, x, y, self.generator)


def _runner(name: str, settings: BenchSettings, device: torch.device, batches) -> _Runner:
    model = bench_model(settings).to(device)
    if settings.channels_last and name not in NAIVE:
        model.to(memory_format=torch.channels_last)
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    if settings.compile and name not in NAIVE:  # as train.compile: true (its recompile limit, its fallback)
        from ..compile import compile_model, print_line

        print_line(compile_model(model, "true", batches[0][0])[1], quiet=True)  # a fallback's warning only
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    return _Runner(name, make_step(name, settings), model, optimizer, generator, batches)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- timing


def time_configs(settings: BenchSettings,
                 progress: Callable[[str], None] | None = None) -> dict[str, list[list[float]]]:
    """Seconds of every timed step per configuration and round (``times[name][round]``), the
    configurations interleaved in an order reshuffled every round.

    Example::

        times = time_configs(BenchSettings(configs=("trades", "rat-trades"), rounds=20))
        print(ratio_ci(times["rat-trades"], times["trades"]))
    """
    device = torch.device(settings.device)
    batches = _synthetic_batches(settings, device)
    runners = [_runner(name, settings, device, batches) for name in settings.configs]
    for r in runners:
        for _ in range(settings.warmup):
            r.run()
    _sync(device)
    order = random.Random(settings.seed)
    times: dict[str, list[list[float]]] = {r.name: [] for r in runners}
    for round_index in range(settings.rounds):
        order.shuffle(runners)
        for r in runners:
            times[r.name].append([])
            for _ in range(settings.steps_per_round):
                start = time.perf_counter()
                r.run()
                _sync(device)
                times[r.name][-1].append(time.perf_counter() - start)
        if progress:
            progress(f"round {round_index + 1}/{settings.rounds}")
    return times


def summarise_times(times: dict[str, list[list[float]]], batch_size: int) -> dict[str, dict]:
    """Median, interquartile range and throughput per configuration; the per-round seconds stay in
    ``rounds_s`` so that any ratio's interval can be recomputed from the JSON."""
    out = {}
    for name, rounds in times.items():
        values = [t for round_times in rounds for t in round_times]
        median = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) >= 2 else [median, median, median]
        out[name] = {"median_s_per_step": median, "iqr_s": q[2] - q[0], "images_per_s": batch_size / median,
                     "timed_steps": len(values), "rounds_s": rounds}
    return out


def ratio_ci(numerator: list[list[float]], denominator: list[list[float]], *, resamples: int = 2000,
             level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of median(numerator) / median(denominator), paired by round.

    Each resample draws round indices with replacement and takes the same rounds of both
    configurations, so a slow spell of the machine, which hits both alike within a round, stays
    paired. ``numerator[r]`` is the list of step seconds of round ``r``.

        >>> ratio_ci([[1.0], [1.1], [0.9]], [[2.0], [2.2], [1.8]])
        (0.5, 0.5)
    """
    if len(numerator) != len(denominator) or not numerator:
        raise ValueError("numerator and denominator need the same, non-zero number of rounds")
    num = torch.tensor(numerator, dtype=torch.float64)
    den = torch.tensor(denominator, dtype=torch.float64)
    picks = torch.randint(len(numerator), (resamples, len(numerator)),
                          generator=torch.Generator().manual_seed(seed))
    boot = _median_of_rows(num[picks].flatten(1)) / _median_of_rows(den[picks].flatten(1))
    low, high = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return low.item(), high.item()


def _median_of_rows(values: Tensor) -> Tensor:
    """statistics.median of each row, to the bit: the mean of the two middle values of an even count."""
    ordered = values.sort(dim=1).values
    n = ordered.shape[1]
    return (ordered[:, (n - 1) // 2] + ordered[:, n // 2]) / 2


# ----------------------------------------------------------------------------- FLOPs


class _NoModuleTracking:
    """Stands in for FlopCounterMode's module tracker, whose hooks break ``torch.autograd.grad`` on a
    leaf input (pytorch/pytorch#131753; the naive baselines' attack does exactly that). We only
    need the total, not the per-module table."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def step_flops(settings: BenchSettings) -> dict[str, int]:
    """FLOPs of one full training step of each configuration, counted by ``FlopCounterMode``
    (matmuls and convolutions, forward and backward; elementwise work is not counted).

    Each configuration gets its own fresh model, as in :func:`time_configs`; the counted step is
    not timed (the counter slows it down)."""
    device = torch.device(settings.device)
    batches = _synthetic_batches(settings, device, count=1)
    out = {}
    for name in settings.configs:
        runner = _runner(name, settings, device, batches)
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = _NoModuleTracking()
        with counter:
            runner.run()
        out[name] = counter.get_total_flops()
    return out


def gemm_gflops(device: str, precisions: tuple[str, ...], repeats: int = 5) -> dict[str, float]:
    """The machine's dense-matmul rate at each precision, in GFLOP/s: the best of ``repeats``
    square matmuls (2048 on CPU, 8192 on CUDA, smaller where one would take over a second), measured in the bench's own run so that the
    steps' FLOP rates are read against the machine as it was during their timing.

        rates = gemm_gflops("cpu", ("float32", "bfloat16"))  # {"float32": ..., "bfloat16": ...}
    """
    dev = torch.device(device)
    largest = 8192 if dev.type == "cuda" else 2048
    generator = torch.Generator().manual_seed(0)
    out = {}
    for precision in precisions:
        # the largest size up to `largest` whose product takes under a second: a precision the CPU
        # has no instructions for (bfloat16 on AVX2 runs ~30x slower) must not take minutes here
        size = 256
        while True:
            a, b = (torch.randn(size, size, generator=generator).to(dev, getattr(torch, precision)) for _ in range(2))
            start = time.perf_counter()
            torch.mm(a, b)  # kernel selection and first-touch allocation
            _sync(dev)
            if size >= largest or (time.perf_counter() - start) * 8 > 1.0:
                break
            size *= 2
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(dev)
            best = min(best, time.perf_counter() - start)
        out[precision] = 2 * size**3 / best / 1e9
    return out


def dominant_precision(step_precision: str, attack_precision: str) -> str:
    """The precision most of a training step runs in: the whole step's when it is reduced, else
    the attack's (the attack is most of a step)."""
    return step_precision if step_precision != "float32" else attack_precision


def gemm_precision(name: str, settings: BenchSettings) -> str:
    """The GEMM precision a configuration's FLOP rate is read against: the library's
    :func:`dominant_precision`, float32 for the naive baselines."""
    return "float32" if name in NAIVE else dominant_precision(settings.step_precision, settings.attack_precision)


# ----------------------------------------------------------------------------- memory


def _rss_kib(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise OSError(f"{field_name} not in /proc/self/status")


def step_peak_memory(name: str, settings: BenchSettings) -> dict:
    """Peak working memory of ``memory_steps`` steps of one configuration, in this process."""
    device = torch.device(settings.device)
    runner = _runner(name, settings, device, _synthetic_batches(settings, device, count=1))
    runner.run()  # lazily created state (optimizer buffers, kernels) is not the step's working memory
    _sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        for _ in range(settings.memory_steps):
            runner.run()
        _sync(device)
        return {"peak_step_bytes": torch.cuda.max_memory_allocated(device) - before, "measure": "cuda allocator"}
    before_kib = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (Linux >= 4.0)
    for _ in range(settings.memory_steps):
        runner.run()
    peak_kib = _rss_kib("VmHWM")
    return {"peak_step_bytes": (peak_kib - before_kib) * 1024, "measure": "resident set (VmHWM - VmRSS)"}


def measure_memory(name: str, settings: BenchSettings) -> dict:
    """:func:`step_peak_memory` in a fresh subprocess, so configurations cannot affect each other."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    payload = json.dumps({"name": name, "settings": asdict(settings)})
    proc = subprocess.run([sys.executable, "-c", "import sys; from ratkit.bench.steps import _memory_worker; "
                           "_memory_worker(sys.argv[1])", payload],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {name} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_worker(payload: str) -> None:
    data = json.loads(payload)
    settings = BenchSettings(**{**data["settings"], "configs": tuple(data["settings"]["configs"])})
    print(json.dumps(step_peak_memory(data["name"], settings)))


# ----------------------------------------------------------------------------- scaling


def scaling(settings: BenchSettings, configs: tuple[str, ...] = ("trades", "rat-trades"),
            batch_sizes: tuple[int, ...] = (32, 64, 128, 256), widths: tuple[float, ...] = (0.5, 1.0, 2.0),
            progress: Callable[[str], None] | None = None) -> dict:
    """Median seconds per step against batch size, and against model width (at the base batch size).

    Two rounds of two steps per point, whatever ``settings.rounds``: a curve of medians, read for its
    shape, not for the few percent that the main table's rounds and intervals are for."""
    quick = replace(settings, rounds=2, steps_per_round=2, warmup=1, configs=configs)
    by_batch = []
    for b in batch_sizes:
        med = summarise_times(time_configs(replace(quick, batch_size=b)), b)
        by_batch.append({"batch_size": b, **{c: med[c]["median_s_per_step"] for c in configs}})
        if progress:
            progress(f"scaling: batch {b}")
    by_width = []
    for w in widths:
        kwargs = width_kwargs(settings.model, settings.model_kwargs, w)
        if kwargs is None:
            break
        model_name, model_kwargs = kwargs
        s = replace(quick, model=model_name, model_kwargs=model_kwargs)
        med = summarise_times(time_configs(s), s.batch_size)
        params = sum(p.numel() for p in bench_model(s).parameters())
        by_width.append({"width": w, "model": model_name, "model_kwargs": model_kwargs, "parameters": params,
                         **{c: med[c]["median_s_per_step"] for c in configs}})
        if progress:
            progress(f"scaling: width x{w}")
    return {"configs": list(configs), "by_batch_size": by_batch, "by_width": by_width}


def width_kwargs(model: str, kwargs: dict, multiplier: float) -> tuple[str, dict] | None:
    """The same architecture ``multiplier`` times as wide: SmallCNN channels, or a WRN's widen factor."""
    if model == "smallcnn":
        c1, c2 = kwargs.get("channels", (32, 64))
        return model, {**kwargs, "channels": [max(1, round(c1 * multiplier)), max(1, round(c2 * multiplier))]}
    if model.startswith("wrn-"):
        _, depth, width = model.split("-")
        return f"wrn-{depth}-{max(1, round(int(width) * multiplier))}", dict(kwargs)
    return None


# ----------------------------------------------------------------------------- the whole run


def ratios(configs: dict[str, dict], memory: dict[str, dict] | None) -> dict[str, float]:
    out = {}
    for key, (num, den) in TIME_RATIOS.items():
        if num in configs and den in configs:
            out[key] = configs[num]["median_s_per_step"] / configs[den]["median_s_per_step"]
    if memory:
        by_base = {base: memory[num]["peak_step_bytes"] / memory[den]["peak_step_bytes"]
                   for base, (num, den) in MEMORY_PAIRS.items() if num in memory and den in memory}
        if "trades" in by_base:
            out["rat_peak_mem_over_base"] = by_base["trades"]
        for base, value in by_base.items():
            out[f"rat_peak_mem_over_base_{base.replace('-', '_')}"] = value
    return out


def ratio_cis(configs: dict[str, dict], seed: int = 0) -> dict[str, list[float]]:
    """``{"<ratio>_ci": [low, high]}``: the 95% interval of every time ratio in :func:`ratios`
    (memory is one measurement per configuration, so its ratios have none)."""
    return {f"{key}_ci": list(ratio_ci(configs[num]["rounds_s"], configs[den]["rounds_s"], seed=seed))
            for key, (num, den) in TIME_RATIOS.items() if num in configs and den in configs}


def add_flop_rates(summary: dict[str, dict], flops: dict[str, int], gemm: dict[str, float],
                   settings: BenchSettings) -> None:
    """FLOPs per step, achieved GFLOP/s at the median time, and that rate as a share of the GEMM
    rate at the configuration's precision, into each configuration's summary."""
    for name, entry in summary.items():
        precision = gemm_precision(name, settings)
        rate = flops[name] / entry["median_s_per_step"] / 1e9
        entry.update(flops_per_step=flops[name], gflops_per_s=rate, gemm_precision=precision,
                     percent_of_gemm=100 * rate / gemm[precision])


def run_bench(settings: BenchSettings, *, with_scaling: bool = True,
              progress: Callable[[str], None] | None = None) -> dict:
    """Time, measure memory, compute ratios and (optionally) scaling; one JSON-able dict."""
    configs = tuple(c for c in settings.configs if c not in NAIVE or naive_module() is not None)
    skipped = [c for c in settings.configs if c not in configs]
    settings = replace(settings, configs=configs)
    started = time.perf_counter()
    times = time_configs(settings, progress)
    summary = summarise_times(times, settings.batch_size)
    gemm = gemm_gflops(settings.device, tuple(dict.fromkeys(("float32", settings.attack_precision,
                                                              settings.step_precision))))
    add_flop_rates(summary, step_flops(settings), gemm, settings)
    if progress:
        progress("FLOPs and GEMM rate")
    memory = None
    if settings.memory:
        memory = {}
        for name in configs:
            memory[name] = measure_memory(name, settings)
            summary[name]["peak_step_bytes"] = memory[name]["peak_step_bytes"]
            if progress:
                progress(f"memory: {name}")
    result = {"settings": {**asdict(settings), "configs": list(configs)}, "environment": environment(settings.device),
              "gemm_gflops": gemm, "configs": summary, "ratios": ratios(summary, memory),
              "ratio_ci": ratio_cis(summary, settings.seed),
              "memory_measure": next(iter(memory.values()))["measure"] if memory else None,
              "skipped": skipped}
    result["targets"] = {k: {"target_at_most": v, "value": result["ratios"].get(k),
                             "met": None if k not in result["ratios"] else result["ratios"][k] <= v}
                         for k, v in TARGETS.items()}
    if with_scaling:
        result["scaling"] = scaling(settings, progress=progress)
    result["wall_s"] = time.perf_counter() - started
    return result


def format_bench(result: dict) -> str:
    s, env = result["settings"], result["environment"]
    lines = [f"rat bench: {s['model']} on {s['dataset']}-shaped synthetic data, batch {s['batch_size']}, "
             f"{s['attack_steps']} attack steps; library: attack {s['attack_precision']}, "
             f"step {s.get('step_precision', 'float32')}, "
             f"{'channels_last' if s['channels_last'] else 'NCHW'}{', compiled' if s.get('compile') else ''} "
             "(naive: float32, NCHW, eager); "
             f"{env['device']} ({env.get('gpu', env['cpu'])}, {env['threads']} threads), torch {env['torch']}",
             "GEMM (square matmul, same run): " + ", ".join(
                 f"{precision} {rate:.0f} GFLOP/s" for precision, rate in result["gemm_gflops"].items())
             + "; % of GEMM is against the configuration's step precision, or its attack precision when the "
             "step is float32 (naive: float32)",
             f"{'configuration':<18}{'s/step':>9}{'IQR':>8}{'img/s':>8}{'GFLOP/step':>12}{'GFLOP/s':>9}"
             f"{'% of GEMM':>11}{'peak step MiB':>15}"]
    for name, c in result["configs"].items():
        mem = f"{c['peak_step_bytes'] / 2**20:.1f}" if "peak_step_bytes" in c else "-"
        lines.append(f"{name:<18}{c['median_s_per_step']:>9.4f}{c['iqr_s']:>8.4f}{c['images_per_s']:>8.0f}"
                     f"{c['flops_per_step'] / 1e9:>12.2f}{c['gflops_per_s']:>9.1f}{c['percent_of_gemm']:>10.1f}%"
                     f"{mem:>15}")
    lines.append("ratios (same run; time ratios with their 95% CI, a paired bootstrap over rounds):")
    for key, value in result["ratios"].items():
        ci = result["ratio_ci"].get(f"{key}_ci")
        interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        target = result["targets"].get(key)
        verdict = "" if target is None else f"  target <= {target['target_at_most']}: " + (
            "met" if target["met"] else "NOT met")
        if target is not None and ci and ci[0] <= target["target_at_most"] < ci[1]:
            verdict += " (the CI reaches across the target)"
        lines.append(f"  {key:<40}{value:>7.3f}{interval:<17}{verdict}".rstrip())
    if result.get("skipped"):
        lines.append(f"skipped: {', '.join(result['skipped'])} (the naive reference implementations live in the "
                     "source tree's benchmarks/, not in the installed package; set $RAT_BENCHMARKS_DIR to a "
                     "checkout's benchmarks/ to include them)")
    sc = result.get("scaling")
    if sc:
        cols = sc["configs"]
        lines.append("seconds per step by batch size: " + "; ".join(
            f"{r['batch_size']}: " + ", ".join(f"{c} {r[c]:.3f}" for c in cols) for r in sc["by_batch_size"]))
        if sc["by_width"]:
            lines.append("seconds per step by width: " + "; ".join(
                f"x{r['width']} ({r['parameters']:,} params): " + ", ".join(f"{c} {r[c]:.3f}" for c in cols)
                for r in sc["by_width"]))
    lines.append(f"wall time {result['wall_s']:.0f} s")
    return "\n".join(lines)
