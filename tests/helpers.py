"""Tiny models and a command runner shared by the tests."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv + BatchNorm + dropout: enough to expose mode and parameter side effects."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x):
        z = torch.relu(self.bn(self.conv(x)))
        z = nn.functional.adaptive_avg_pool2d(z, 4).flatten(1)
        return self.fc(self.drop(z))


SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_rat(*args, timeout=600, cwd=None):
    """Run the ``rat`` command in a fresh interpreter, as a user would."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ratkit", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=cwd)
