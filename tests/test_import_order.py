"""Regression: rendering an env, then starting a torch optimizer, must not crash the process.

Mesa's LLVM (loaded by MuJoCo's EGL context) and triton's LLVM (loaded lazily by torch.optim)
clash when Mesa comes first; `envs` loads triton up front. Run in a subprocess because the
failure mode is a segfault.
"""
import os
import subprocess
import sys

SCRIPT = """
import envs, torch
env = envs.make("reach")
env.reset(seed=0)
param = torch.nn.Parameter(torch.zeros(3))
optimizer = torch.optim.AdamW([param], lr=0.1)
param.sum().backward()
optimizer.step()
print("stepped", round(float(param[0].detach()), 3))
"""


def test_env_render_then_torch_optimizer_does_not_crash():
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "stepped -0.1" in result.stdout
