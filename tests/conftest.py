import os

# MuJoCo needs a headless GL backend; EGL works on these machines without a display.
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

