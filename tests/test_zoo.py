"""Every v2 width and every v1 group count (at 1.0x), compiled through the CLI and checked against PyTorch eager.

BatchNorm statistics are randomized and passed with ``--weights``, so BN
folding and weight loading are both on the path. Tolerance: atol 1e-3 and
rtol 1e-3 on the logits (they reach ~10; the graph passes reassociate sums
over up to 2048 channels in fp32), and top-1 identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import zoo_at_full_size
from tvm_shuffle import compile as compile_cli
from tvm_shuffle import models, runtime

ATOL = RTOL = 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_at_full_size())
def test_zoo_model_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    module = models.randomize_batchnorm(models.build_model(name), seed=1)
    weights = tmp_path / "weights.pt"
    torch.save(module.state_dict(), weights)

    out = tmp_path / "out"
    assert compile_cli.main(["--model", name, "--weights", str(weights), "--target", "x86", "--out", str(out)]) == 0

    x = np.random.default_rng(0).standard_normal(models.MODELS[name].input_shape).astype("float32")
    (y,) = runtime.load(out)(x)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, atol=ATOL, rtol=RTOL)
    assert y.argmax() == expected.argmax()
