"""The prepared GPU check runs where a CUDA device is (never in CI) and says so where none is."""
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


def test_gpu_check_says_it_measured_nothing_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "no CUDA device" in out.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_reports_throughput_and_memory():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--steps", "20", "--n-sample", "64",
                          "--sample-steps", "10"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("train:", "sample:", "peak GPU memory:"):
        assert line in out.stdout
