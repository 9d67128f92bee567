import os

# MuJoCo needs a headless GL backend; EGL works on these machines without a display.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

# Load triton's LLVM (pulled in lazily by torch.optim / torch._dynamo) before any MuJoCo EGL
# context exists: in the reverse order, Mesa's LLVM is loaded first and importing triton segfaults
# (reproduced: envs.make(...) then torch.optim.AdamW(...) -> SIGSEGV in triton/knobs.py).
import torch._dynamo  # noqa: E402,F401
