import os

import pytest

# MuJoCo needs a headless GL backend; EGL works on these machines without a display.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


@pytest.fixture
def one_thread():
    """Tiny models: a 2-thread torch pool mostly spins on the shared 2-core box. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # here, not at collection: envs/__init__ controls what loads before torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
