"""ms per action of the shipped model's MPC agent under each speed route, interleaved in one process.

    MUJOCO_GL=egl python benchmarks/agent_speed_routes.py [--models checkpoints/reach-default [OTHER ...]] [--rounds 10]

Routes: fp32 on 1 thread (plan.py's default), fp32 on 2 threads, the compiled rollout alone
(`Dynamics.compile_rollout`) on 1 thread, the compiled observation encoder and rollout (`compile=true`,
`WorldModel.compile_for_planning`) on 1 and 2 threads and bf16 autocast (`rollout_precision=bf16`), for each model given. Each round
runs 10 actions of every model and route in turn, so load changes on a shared machine hit all of them
alike; compare the ratios (against the first model's fp32 on 1 thread).
The planner is conf/planner/cem_fast.yaml at horizon 1, the reach env's observation of seed 3 and
the goal image of seed 4.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from planning import planner_config  # noqa: E402  (sibling benchmark script)

import envs  # noqa: E402
from jepa_world import evaluation as ev  # noqa: E402
from planners import make_planner  # noqa: E402
from planners.agent import MPCAgent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROUTES = {  # name: (rollout path, torch threads)
    "fp32, 1 thread": ("eager", 1),
    "fp32, 2 threads": ("eager", 2),
    "compiled rollout only, 1 thread": ("compile_rollout", 1),
    "compiled, 1 thread": ("compile", 1),
    "compiled, 2 threads": ("compile", 2),
    "bf16, 1 thread": ("bf16", 1),
}


def build_agent(model: str, path: str, goal: np.ndarray, low: np.ndarray, high: np.ndarray) -> MPCAgent:
    wm = ev.load_world_model(model, "reach")
    if path == "compile_rollout":  # the rollout alone, for comparison; not a plan.py option
        wm.dynamics.compile_rollout()
    else:  # what plan.py's rollout_precision= and compile= do
        ev.configure_speed(wm, "bf16" if path == "bf16" else "fp32", compile_planning=path == "compile")
    agent = MPCAgent(wm, make_planner("cem", **planner_config("cem_fast", {})), horizon=1, action_low=low,
                     action_high=high)
    agent.reset(goal)
    return agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[str(ROOT / "checkpoints" / "reach-default")])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    env = envs.make("reach")
    obs, _ = env.reset(seed=3)
    goal, _ = envs.make("reach").reset(seed=4)
    low, high = env.action_space.low, env.action_space.high
    runs = {(model, route): threads for model in args.models for route, (_, threads) in ROUTES.items()}
    agents = {(model, route): build_agent(model, ROUTES[route][0], goal["pixels"], low, high) for model, route in runs}
    for key, threads in runs.items():
        torch.set_num_threads(threads)
        start = time.perf_counter()
        for _ in range(5):
            agents[key].act(obs)
        print(f"{key[0]}, {key[1]}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, threads in runs.items():
            torch.set_num_threads(threads)
            for _ in range(10):
                start = time.perf_counter()
                agents[key].act(obs)
                times[key].append(time.perf_counter() - start)
    base = np.median(times[(args.models[0], "fp32, 1 thread")])
    print("| model | route | median ms per action | p90 | vs first model, fp32 1 thread |\n|---|---|---|---|---|")
    for (model, route), values in times.items():
        print(f"| {model} | {route} | {1e3 * np.median(values):.1f} | {1e3 * np.percentile(values, 90):.1f} | "
              f"{base / np.median(values):.2f}x |")


if __name__ == "__main__":
    main()
