"""Shared test parametrization: devices, dtypes, seeds, tolerances per oracle tier."""

import pytest
import torch

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

devices = ["cpu", pytest.param("cuda", marks=CUDA)]
dtypes = [torch.float32, torch.float64]

# Tolerances by oracle tier (relative to the largest entry).
EXACT_F64 = 1e-10  # the same formula computed another way, float64
EXACT_F32 = 2e-5   # float32 against a float64 reference


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.fixture
def one_thread():
    """One torch thread: fastest for tiny problems, immune to other jobs on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
