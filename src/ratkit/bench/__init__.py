"""Measurement, not library: ``rat bench`` (:mod:`.steps`: what a training step of each method
costs, in time, memory and FLOPs) and the device check (:mod:`.device_check`: a GPU against the
CPU, and the presets' cost on it; ``scripts/device_check.sh``); :mod:`.command` is ``rat bench``'s
work behind its flags."""

from ..device import environment  # the record of the machine, in ratkit.device; its old name here still works
from .steps import (BENCHMARKS_DIR_ENV, CONFIGS, MEMORY_PAIRS, METHODS, NAIVE, TARGETS, TIME_RATIOS, BenchSettings,
                    add_flop_rates, bench_method, bench_model, dominant_precision, format_bench, gemm_gflops,
                    gemm_precision, make_step, measure_memory, naive_module, ratio_ci, ratio_cis, ratios, run_bench,
                    scaling, step_flops, step_peak_memory, summarise_times, time_configs, width_kwargs)
