import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def np_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_divergence(p, q, name, alpha=0.5):
    """Independent float64 reference: the textbook definitions over the last axis."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if name == "reverse_kl":
        return (p * np.log(p / q)).sum(-1)
    if name == "forward_kl":
        return (q * np.log(q / p)).sum(-1)
    if name == "js":
        m = (p + q) / 2
        return 0.5 * (p * np.log(p / m)).sum(-1) + 0.5 * (q * np.log(q / m)).sum(-1)
    if name == "alpha":
        # sum_x Q f_alpha(P/Q) with the f-DPO paper's f_alpha, written out directly
        u = p / q
        f = (u ** (1 - alpha) - (1 - alpha) * u - alpha) / (alpha * (alpha - 1))
        return (q * f).sum(-1)
    if name == "tv":
        return 0.5 * np.abs(p - q).sum(-1)
    if name == "chi2":
        return ((p - q) ** 2 / q).sum(-1)
    raise ValueError(name)


@pytest.fixture
def one_thread():
    """One torch thread (restored after): on a small shared machine two threads are many times slower for the tiny
    models of the tests. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def ray_home(tmp_path_factory):
    """One HOME for every in-process Ray cluster of the test session. Ray 2.60 keeps an auth token under ~/.ray
    (kept out of the real home here), and a second ``ray.init()`` in the same process under a different HOME
    times out waiting for its GCS. Modules that start Ray depend on this instead of setting HOME themselves."""
    import os as _os

    home = tmp_path_factory.mktemp("ray_home")
    _os.environ["HOME"] = str(home)
    return home


@pytest.fixture(scope="module")
def cluster(ray_home):
    """A local Ray cluster (2 CPUs) for the tests of one module."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny model and tokenizer saved with ``save_pretrained`` (a real model directory)."""
    from rlkit.models.tiny import save_tiny

    return str(save_tiny(tmp_path_factory.mktemp("tiny") / "model"))


class LargestOutput(TorchDispatchMode):
    """Largest numel of any op output (forward and backward) not sharing storage with the given inputs: the memory
    structure tests use it to show that no ``[N, V]`` tensor is ever allocated."""

    def __init__(self, inputs):
        super().__init__()
        self.skip = {t.untyped_storage().data_ptr() for t in inputs}
        self.largest, self.ops = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.skip:
                self.largest = max(self.largest, t.numel())
        return out
