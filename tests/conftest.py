"""Shared fixtures: tiny networks with every construct the pipeline handles.

The tiny models keep the fast tests fast; the zoo models (tests/test_zoo.py)
exercise the real networks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tvm_shuffle.models import channel_shuffle, randomize_batchnorm

TINY_SHAPE = (1, 3, 16, 16)


class TinyShuffleUnit(torch.nn.Module):
    """conv(+bias)+BN, chunk, a branch with conv(no bias)+BN, cat, shuffle: both BN-fold forms."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1, bias=True)
        self.stem_bn = torch.nn.BatchNorm2d(16)
        self.branch = torch.nn.Conv2d(8, 8, 1, bias=False)
        self.branch_bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        a, b = x.chunk(2, dim=1)
        x = channel_shuffle(torch.cat([a, torch.relu(self.branch_bn(self.branch(b)))], 1), 2)
        return self.head(x.mean((2, 3)))


@pytest.fixture
def tiny_module() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(TinyShuffleUnit()).eval()


@pytest.fixture
def tiny_input() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(TINY_SHAPE).astype("float32")


@pytest.fixture
def tiny_onnx(tmp_path, tiny_module):
    """The tiny model as ONNX, as torch.onnx.export(dynamo=True) writes it."""
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_module, (torch.randn(*TINY_SHAPE),), str(path), dynamo=True, verbose=False)
    return path


@pytest.fixture
def tiny_onnx_classic(tmp_path, tiny_module):
    """The classic TorchScript exporter at opset 11 (constant-shape Reshape->Transpose->Reshape)."""
    path = tmp_path / "tiny_classic.onnx"
    torch.onnx.export(tiny_module, (torch.randn(*TINY_SHAPE),), str(path), dynamo=False, opset_version=11,
                      input_names=["image"], output_names=["logits"])
    return path
