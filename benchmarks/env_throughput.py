"""Environment throughput: env steps per second, each step including its pixel render.

    MUJOCO_GL=egl python benchmarks/env_throughput.py [--steps 300] [--sizes 64 224] [--envs reach push]

For every env and image size it times `env.step` with random actions (physics + control + render),
and splits that into the render alone and the rest (physics, IK/control, bookkeeping). As a baseline
it times gymnasium's own Reacher-v5 with render_mode="rgb_array" (step, then render()).
steps/cpu-s (steps per second of this process's CPU time) is the steadier figure on a shared
machine; cpu/wall well below 1 means the process was starved while measuring. Compare rows of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(calls per wall second, calls per cpu second, cpu seconds / wall seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return repeats / wall, repeats / max(cpu, 1e-9), cpu / wall


def bench_env(name: str, size: int, steps: int) -> dict:
    env = envs.make(name, image_size=size, max_episode_steps=None)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = rng.uniform(env.action_space.low, env.action_space.high, (steps, env.action_space.shape[0])).astype(np.float32)
    u = env.unwrapped
    it = iter(actions)
    for _ in range(10):  # warm up the renderer and caches
        env.step(next(iter(actions)))
    step_rate, step_cpu_rate, ratio = timed(lambda: env.step(next(it)), steps)
    render_rate, _, _ = timed(u.render, steps)
    env.close()
    return {"env": name, "size": size, "steps/s": step_rate, "steps/cpu-s": step_cpu_rate, "renders/s": render_rate,
            "ms/step": 1e3 / step_rate, "ms render": 1e3 / render_rate, "cpu/wall": ratio}


def bench_gym_reacher(size: int, steps: int) -> dict:
    env = gym.make("Reacher-v5", render_mode="rgb_array", width=size, height=size)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(10):
        env.step(env.action_space.sample())
        env.render()

    def step_and_render():
        env.step(env.action_space.sample())
        env.render()

    step_rate, step_cpu_rate, ratio = timed(step_and_render, steps)
    render_rate, _, _ = timed(env.render, steps)
    env.close()
    return {"env": "gym Reacher-v5 (baseline)", "size": size, "steps/s": step_rate, "steps/cpu-s": step_cpu_rate,
            "renders/s": render_rate,
            "ms/step": 1e3 / step_rate, "ms render": 1e3 / render_rate, "cpu/wall": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    available = [n for n in envs.ENV_NAMES if n != "metaworld-reach" or importlib.util.find_spec("metaworld")]
    parser.add_argument("--envs", nargs="+", default=available, choices=list(envs.ENV_NAMES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()

    rows = []
    for size in args.sizes:
        for name in args.envs:
            rows.append(bench_env(name, size, args.steps))
        rows.append(bench_gym_reacher(size, args.steps))

    columns = ["env", "size", "steps/s", "steps/cpu-s", "renders/s", "ms/step", "ms render", "cpu/wall"]
    widths = [max(len(c), *(len(format_cell(r[c])) for r in rows)) for c in columns]
    print(f"MUJOCO_GL={os.environ['MUJOCO_GL']}, {args.steps} steps per row, steps include a render")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(format_cell(row[c]).ljust(w) for c, w in zip(columns, widths)))


def format_cell(value) -> str:
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    main()
