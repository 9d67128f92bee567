"""Planning speed: the default world model + default planner (conf/planner/cem.yaml, conf/plan.yaml).

    MUJOCO_GL=egl python benchmarks/planning.py [--model DIR] [--planner cem] [--samples 300]
        [--iterations 10] [--horizons 1 5] [--envs 1 4] [--contexts 1 4] [--repeats 3] [--threads 2]
    MUJOCO_GL=egl python benchmarks/planning.py --random [--size tiny] [--latent global] [--conditioning additive] ...

For each horizon it times, in one process:
  * predictor: the rollout calls a planning call makes (iterations x one KV-cached rollout of all
    candidates), with no planner around them: the floor the planner cannot beat;
  * plan: a full planning call (sampling, cost, elites, bookkeeping);
  * naive plan: the same planner with a rollout that re-runs the whole history through the
    predictor at every horizon step (no KV cache; what the V-JEPA 2-AC reference does);
  * agent: ms per action of MPCAgent.act on a real reach observation (encode + plan);
--contexts T0 feeds T0 history frames before the planned steps (the agent's context_frames);
the KV cache runs that context once per call, the naive rollout at every horizon step.
and reports planner overhead = plan / predictor - 1, speed-up = naive / plan, and achieved
GFLOP/s (FLOPs counted by torch's FlopCounterMode) against a measured fp32 matmul peak.
Ratios and GFLOP/s use process CPU time (x threads), which counts the work done even when other
jobs starve the process; wall times are shown too (cpu/wall well below the thread count means
the process was starved while measuring). --threads 1 avoids a spinning 2-thread pool on a busy box.
Without --model (and no shipped checkpoints/reach-default), or with --random, the model is the default
posttrain architecture with random weights (speed does not depend on the weights); --size, --latent and
--conditioning resize it.
Timings on a shared machine swing; compare ratios within one run (cpu/wall ~ threads means the
process was not starved).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import envs  # noqa: E402
from envs.arm import ARM_STATE_DIM, ArmEnv  # noqa: E402
from jepa_world import evaluation as ev  # noqa: E402
from jepa_world.models.ac_predictor import CONDITIONINGS  # noqa: E402
from jepa_world.models.vit import build_encoder  # noqa: E402
from jepa_world.world_model import WorldModel, split_world_model_config  # noqa: E402
from planners import make_planner  # noqa: E402
from planners.agent import MPCAgent  # noqa: E402
from planners.objectives import build_cost_fn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def default_world_model(model: str | None) -> tuple[WorldModel, str]:
    candidate = model or "checkpoints/reach-default"
    try:
        return ev.load_world_model(candidate, "reach"), candidate
    except FileNotFoundError:
        if model is not None:
            raise
    return random_world_model({})


def random_world_model(overrides: dict[str, str]) -> tuple[WorldModel, str]:
    """The posttrain default architecture (conf/posttrain.yaml) with random weights (speed does not depend
    on them); ``overrides`` may replace its ``latent`` and its predictor's ``size`` and ``conditioning``."""
    posttrain = yaml.safe_load((ROOT / "conf" / "posttrain.yaml").read_text())
    encoder = build_encoder("tiny", img_size=64, patch_size=posttrain["random_encoder"]["patch_size"])
    fields = {**posttrain["world_model"], "integrated_state_dims": ArmEnv.action_state_map}  # null there: the data's map
    predictor = {**posttrain["predictor"], **{k: v for k, v in overrides.items() if k != "latent"}}
    if overrides.get("latent") == "global":  # one projected embedding per frame, shaped by SIGReg, not normalised
        fields.update(latent="global", normalize_latents=False)
    wm = WorldModel.create(encoder, len(ArmEnv.action_names), ARM_STATE_DIM, *split_world_model_config(fields),
                           **predictor)
    described = ", ".join(f"{k} {v}" for k, v in {"latent": fields["latent"], **predictor}.items())
    return wm.eval().requires_grad_(False), f"random-init posttrain default (encoder tiny, {described})"


def planner_config(name: str, overrides: dict) -> dict:
    cfg = yaml.safe_load((ROOT / "conf" / "planner" / f"{name}.yaml").read_text())
    cfg.pop("name")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def timed(fn, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """(median wall seconds, median process-CPU seconds) per call, after one warm-up call unless warmup=False.

    CPU seconds measure the work done even when other jobs starve the process of cores."""
    if warmup:
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    _, cpu = timed(lambda: a @ b, repeats)
    return 2 * size**3 / cpu / 1e9 * torch.get_num_threads()  # per CPU-second x threads = wall rate unstarved


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class NaiveRollout:
    """World-model view whose rollout re-runs the full history at every horizon step."""

    def __init__(self, wm: WorldModel):
        self.wm = wm

    def rollout(self, z0, state0, actions, context_actions=None):
        return self.wm.rollout(z0, state0, actions, context_actions=context_actions, use_kv_cache=False)

    def next_states(self, states, actions):
        return self.wm.next_states(states, actions)


def bench(wm: WorldModel, planner_name: str, cfg: dict, horizon: int, num_envs: int, context: int, repeats: int,
          observation: dict, goal: np.ndarray, low: np.ndarray, high: np.ndarray, peak: float) -> dict:
    planner = make_planner(planner_name, **cfg)
    samples, iterations = cfg["samples"], cfg["iterations"]
    pixels = torch.as_tensor(np.stack([observation["pixels"]] * num_envs)).permute(0, 3, 1, 2)
    z0 = wm.encode(pixels)[:, None].expand(-1, context, -1, -1)  # (E, T0, N, D): the frame repeated as history
    z_goal = wm.encode(torch.as_tensor(np.stack([goal] * num_envs)).permute(0, 3, 1, 2))
    state0 = torch.as_tensor(np.stack([observation["state"]] * num_envs))[:, None].expand(-1, context, -1)
    context_actions = torch.zeros(num_envs, context - 1, len(low)) if context > 1 else None
    actions = torch.empty(num_envs * samples, horizon, len(low)).uniform_(float(low.min()), float(high.max()))
    rows = (lambda x: x) if num_envs == 1 else (lambda x: x.repeat_interleave(samples, 0))
    z_ctx, s_ctx = rows(z0), rows(state0)
    a_ctx = None if context_actions is None else rows(context_actions)

    def predictor_only():
        with torch.no_grad():
            for _ in range(iterations):
                wm.rollout(z_ctx, s_ctx, actions, context_actions=a_ctx)

    def plan(model):
        cost_fn = build_cost_fn(model, z0, state0, z_goal, context_actions=context_actions)
        planner.plan(cost_fn, num_envs, horizon, low, high, generator=torch.Generator().manual_seed(0))

    # The predictor-only pass warms up the model's kernels and allocations for everything after it.
    predictor_wall, predictor_cpu = timed(predictor_only, repeats)
    plan_wall, plan_cpu = timed(lambda: plan(wm), repeats, warmup=False)
    _, naive_cpu = timed(lambda: plan(NaiveRollout(wm)), max(1, repeats // 2), warmup=False)
    with torch.no_grad():  # FLOPs of one rollout call; a planning call makes `iterations` of them
        flops = iterations * count_flops(lambda: wm.rollout(z_ctx, s_ctx, actions, context_actions=a_ctx))

    agent = MPCAgent(wm, planner, horizon=horizon, action_low=low, action_high=high, context_frames=context)
    agent.reset(np.stack([goal] * num_envs))
    for _ in range(context - 1):  # fill the agent's history so every timed call uses the full context
        agent.act_batch([observation] * num_envs)
    act_wall, act_cpu = timed(lambda: agent.act_batch([observation] * num_envs), repeats, warmup=False)
    threads = torch.get_num_threads()
    gflops = flops / (plan_cpu / threads) / 1e9  # the rate an unstarved process would reach
    return {
        "H": horizon, "E": num_envs, "T0": context,
        "predictor cpu-ms": predictor_cpu * 1e3, "plan cpu-ms": plan_cpu * 1e3, "overhead": plan_cpu / predictor_cpu - 1,
        "naive cpu-ms": naive_cpu * 1e3, "speed-up": naive_cpu / plan_cpu, "act cpu-ms/env": act_cpu * 1e3 / num_envs,
        "plan wall ms": plan_wall * 1e3, "act wall ms/env": act_wall * 1e3 / num_envs,
        "GFLOP/s": gflops, "% peak": 100 * gflops / peak, "cpu/wall": plan_cpu / plan_wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="world-model dir (default: checkpoints/reach-default or random init)")
    parser.add_argument("--random", action="store_true",
                        help="a random-init model of the posttrain default architecture, resized by the options below")
    parser.add_argument("--size", default=None, help="--random: predictor size (micro, mini, tiny, small, vjepa2-ac)")
    parser.add_argument("--latent", default=None, choices=["tokens", "global"],
                        help="--random: tokens (16 per frame) or global (1 per frame)")
    parser.add_argument("--conditioning", default=None, choices=list(CONDITIONINGS),
                        help="--random: action/state tokens (V-JEPA 2-AC) or added to the frame tokens")
    parser.add_argument("--planner", default="cem", choices=["cem", "mppi", "adam"])
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--envs", type=int, nargs="+", default=[1])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1], help="context frames fed before planning")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="time the KV-cached rollout through Dynamics.compile_rollout() (torch.compile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random_overrides = {k: v for k, v in (("size", args.size), ("latent", args.latent),
                                          ("conditioning", args.conditioning)) if v is not None}
    if random_overrides and not args.random:
        parser.error("--size, --latent and --conditioning shape the --random model")
    if args.random and args.model:
        parser.error("--random and --model are alternatives")
    wm, model_name = random_world_model(random_overrides) if args.random else default_world_model(args.model)
    if args.compile:
        wm.dynamics.compile_rollout()
        model_name += ", compiled rollout"
    cfg = planner_config(args.planner, {"samples": args.samples, "iterations": args.iterations})
    env = envs.make("reach", image_size=ev.model_image_size(wm) or 64)
    observation, _ = env.reset(seed=0)
    goal = env.unwrapped.goal_image()
    low, high = env.action_space.low, env.action_space.high
    env.close()
    peak = matmul_peak_gflops()
    tokens = wm.predictor.config.frame_tokens
    print(f"model: {model_name}; {sum(p.numel() for p in wm.predictor.parameters()) / 1e6:.2f}M predictor params, "
          f"{tokens} tokens/frame; planner {args.planner} {cfg['samples']} samples x {cfg['iterations']} iterations; "
          f"{torch.get_num_threads()} threads; fp32 matmul peak {peak:.0f} GFLOP/s (2048^2, from CPU time)")
    for i, (e, t0, h) in enumerate((e, t0, h) for e in args.envs for t0 in args.contexts for h in args.horizons):
        row = bench(wm, args.planner, cfg, h, e, t0, args.repeats, observation, goal, low, high, peak)
        if i == 0:
            print("| " + " | ".join(row) + " |")
            print("|" + "---|" * len(row))
        cells = [f"{v:.0%}" if k == "overhead" else f"{v:.1f}x" if k == "speed-up" else f"{v:.2f}" if k == "cpu/wall"
                 else f"{v:.0f}" if isinstance(v, float) else str(v) for k, v in row.items()]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
