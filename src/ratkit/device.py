"""Which torch device a command runs on (``auto``: CUDA, else Apple's MPS, else the CPU), which
precision that device computes natively (:func:`resolve_precision`, ``attack.precision: auto``),
and the record of the machine a measurement ran on (:func:`environment`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from .choices import AUTO  # attack.precision: "auto" is resolved here, per device, into a precision
from .exits import UserError

# Expected cost of an emulated bfloat16 step against float32, measured with benchmarks/step_precision.py
# (docs/performance.md, "Precision follows the hardware"): 9.1 s against 1.9 s a step on an AVX2-only
# CPU, 3.09 s against 0.352 s on an AVX-512 CPU restricted to AVX2 kernels.
EMULATED_BF16_SLOWDOWN = "5-9x"


def mps_available() -> bool:
    """Whether PyTorch reports Apple's MPS backend (False on builds without it)."""
    backend = getattr(torch.backends, "mps", None)
    try:
        return bool(backend is not None and backend.is_available())
    except Exception:  # noqa: BLE001 - a build without the backend may raise instead of saying False
        return False


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when available, else MPS (Apple silicon), else the CPU; asking for CUDA or
    MPS without it is a ValueError.

    Example: ``resolve_device("auto")`` is ``device(type='cuda')`` on a GPU machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch.cuda.is_available() is False")
    if device.type == "mps" and not mps_available():
        raise ValueError("MPS was requested but torch.backends.mps.is_available() is False")
    return device


def resolve_device_flag(name: str) -> torch.device:
    """:func:`resolve_device` for a command's ``--device`` (or the config's ``train.device``): a
    device that is not there is a one-line :class:`~ratkit.exits.UserError`."""
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise UserError(f"--device: {exc}") from None


def _cpu_check(name: str) -> bool:
    """One of torch.cpu's private capability checks, False where this torch lacks it."""
    check = getattr(torch.cpu, name, None)
    try:
        return bool(check()) if callable(check) else False
    except Exception:  # noqa: BLE001 - private API: any failure means "not known to be native"
        return False


def cpu_bfloat16() -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX), and why.

    ``RAT_CPU_BF16=1`` or ``0`` overrides the detection. ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``
    is not used: it is true on CPUs that only emulate bfloat16 (AVX2, AVX-512 without BF16)."""
    forced = os.environ.get("RAT_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1", f"RAT_CPU_BF16={forced} says bfloat16 is {'native' if forced == '1' else 'not native'} here"
    if _cpu_check("_is_amx_tile_supported"):
        return True, "the CPU has AMX"
    if _cpu_check("_is_avx512_bf16_supported"):
        return True, "the CPU has AVX512_BF16"
    return False, f"the CPU has no AVX512_BF16 or AMX (torch's CPU capability: {cpu_capability()})"


def cpu_capability() -> str:
    """The vector instruction set torch's CPU kernels use here (AVX2, AVX512, ...; ATEN_CPU_CAPABILITY caps it)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001
        return "unknown"


def native_bfloat16(device: torch.device | str) -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and why: CUDA when the GPU supports it, a CPU
    with AVX512_BF16 or AMX (:func:`cpu_bfloat16`); MPS is taken as not native (untested here).

    Example: ``native_bfloat16("cpu")`` is ``(False, "the CPU has no AVX512_BF16 or AMX ...")`` on an AVX2 laptop."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, "the GPU supports bfloat16" if ok else "the GPU has no bfloat16 support"
    if device.type == "mps":
        return False, "MPS: bfloat16 autocast is not tested here, float32 is the safe choice"
    return cpu_bfloat16()


def resolve_precision(precision: str, device: torch.device | str) -> tuple[str, str]:
    """The attack precision to run (``float32`` or ``bfloat16``) for a configured one, and a line
    that says why: ``auto`` is bfloat16 where the device computes it natively, float32 elsewhere
    (an emulated bfloat16 attack is many times slower: PyTorch PR #86550, issue #118499).

    Example: ``resolve_precision("auto", "cpu")`` is ``("float32", "auto -> float32: the CPU has no ...")``
    on an AVX2 machine, ``("bfloat16", "auto -> bfloat16: the CPU has AVX512_BF16")`` on a newer one."""
    native, why = native_bfloat16(device)
    if precision == AUTO:
        chosen = "bfloat16" if native else "float32"
        return chosen, f"auto -> {chosen}: {why}"
    if precision == "bfloat16" and not native:
        return precision, (f"bfloat16 as configured, but {why}: expect each step about {EMULATED_BF16_SLOWDOWN} "
                           f"slower than in float32 (attack.precision: auto chooses float32 here)")
    return precision, f"{precision} as configured"


def emulates_bfloat16(precision: str, device: torch.device | str) -> bool:
    """Whether ``precision`` is a bfloat16 that ``device`` only emulates (:func:`resolve_precision`'s
    line then says how much slower it is expected to be)."""
    return precision == "bfloat16" and not native_bfloat16(device)[0]


def environment(device: str) -> dict:
    """The machine a measurement ran on (torch, Python, threads, CPU model, cores and vector
    capability, whether bfloat16 is native; the GPU on CUDA): ``rat bench``, the device check and
    every study record carry it, since seconds compare only between runs on one machine."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "cpu_capability": cpu_capability(), "bf16_native": native_bfloat16(device)[0]}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
