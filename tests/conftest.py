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


@pytest.fixture(autouse=True, scope="session")
def _private_feature_cache(tmp_path_factory):
    """Tests never read or write the user's real-feature cache (~/.cache/colorgan/features)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("COLORGAN_FEATURE_CACHE", str(tmp_path_factory.mktemp("feature-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True, scope="session")
def _few_base_samples():
    """`colorgan train`'s near check scores shots against 20 base samples instead of 1000, and its strength pick
    20 samples per strength instead of 300 (speed; where an Inception network is installed both run in every test
    that trains with the default settings)."""
    mp = pytest.MonkeyPatch()
    mp.setattr("colorgan.train.near.BASE_SAMPLES", 20)
    mp.setattr("colorgan.train.strength.PICK_SAMPLES", 20)
    yield
    mp.undo()


class _TinyFeat(torch.nn.Module):
    """A small random conv net standing in for Inception (saved as TorchScript like the real file)."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.c2(torch.relu(self.c1(x))))


@pytest.fixture
def tiny_net_path(tmp_path):
    """Path of a TorchScript feature network (random weights, 16-d features) for FID/KID tests."""
    import warnings

    torch.manual_seed(0)
    path = tmp_path / "tiny_feat.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_TinyFeat().eval()).save(str(path))
    return path
