"""Which torch device a command runs on (``auto`` is CUDA when there is one, else the CPU), and
the record of the machine a measurement ran on (:func:`environment`).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """"auto" picks CUDA when available; asking for CUDA without it is a ValueError.

    Example: ``resolve_device("auto")`` is ``device(type='cuda')`` on a GPU machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested but torch.cuda.is_available() is False")
    return device


def environment(device: str) -> dict:
    """The machine a measurement ran on (torch, Python, threads, CPU model and cores; the GPU on CUDA):
    ``rat bench``, the device check and every study record carry it, since seconds compare only
    between runs on one machine."""
    env = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
           "device": device, "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
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
