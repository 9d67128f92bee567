import os

import pytest

# MuJoCo needs a headless GL backend; EGL works on these machines without a display.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


@pytest.fixture
def set_torch_threads():
    """``torch.set_num_threads`` for the test's body; the count from before the test is restored after it."""
    import torch  # here, not at collection: envs/__init__ controls what loads before torch

    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


@pytest.fixture
def one_thread(set_torch_threads):
    """Tiny models: a 2-thread torch pool mostly spins on the shared 2-core box. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    set_torch_threads(1)


class FakeClock:
    """A ``perf_counter`` that moves only when a test advances it: time-budget logic is then
    checked exactly, instead of against a shared CI machine's scheduling jitter."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch):
    """Replace the wall clock the planners and the MPC agent read with a FakeClock."""
    import types

    import planners.agent
    import planners.base
    import planners.gradient

    clock = FakeClock()
    for module in (planners.base, planners.agent, planners.gradient):
        monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=clock))
    return clock
