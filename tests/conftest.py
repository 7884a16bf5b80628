"""Test set-up. Without CUDA, Triton kernels run in Triton's interpreter on the CPU:
TRITON_INTERPRET=1 must be set before any module with @triton.jit is imported, so it
is set here, first."""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402  (torch itself does not import the project's kernels)

# The tests use tiny tensors: one intra-op thread is faster than two and cannot oversubscribe the CPU.
torch.set_num_threads(1)
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def kernel_device() -> str:
    """Where Triton kernels run in this session: the GPU, or the CPU under the interpreter."""
    return "cuda" if HAS_CUDA else "cpu"
