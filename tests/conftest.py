import os
import warnings

import pytest

from featcache.errors import FeatcacheWarning
from tests.fakedata import make_pku

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def pku_root(tmp_path):
    """20 samples (8 I2I sharing 2 image prompts, 12 T2I) = 22 distinct images."""
    root = tmp_path / "pku"
    make_pku(root)
    return root


@pytest.fixture(autouse=True)
def _quiet_random_weights():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*", category=FeatcacheWarning)
        yield


@pytest.fixture(autouse=True)
def _signal_handlers_left_as_found():
    """A test that leaves SIGINT ignored makes every later subprocess ignore Ctrl-C (it inherits the disposition)."""
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    after = {s: signal.getsignal(s) for s in before}
    for s, handler in before.items():
        signal.signal(s, handler)
    assert after == before, f"signal handlers changed by the test: {after} (were {before})"
