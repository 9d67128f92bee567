"""Early elimination of hopeless candidates (issue #14's route): would ranking the candidates on their
first predicted steps keep the ones a full rollout ranks best, and how much rollout work would it save?

    MUJOCO_GL=egl python benchmarks/early_elimination.py [--model checkpoints/reach-default] [--pairs 20]

For each (observation, goal image) pair of the reach env (observation of seed i, goal of seed i + 1000),
a CEM planner runs at each horizon with the model's default objective. At every iteration its
candidates are also scored by a proxy, the same objective on the latents predicted after the first
``step`` actions only. Eliminating all but a fraction ``keep`` of the candidates by that proxy
would keep, of the full rollout's elites (the planner's ``elites``), the fraction printed as
"elite recall", and the full rollout's best candidate with the printed rate. The work column is the
rollout FLOPs of such a pruned rollout (all candidates to ``step``, the kept ones on from the KV
cache) as a fraction of the full rollout's.
Nothing is pruned in the planner: this measures whether the route is worth building.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import envs  # noqa: E402
from jepa_world import evaluation as ev  # noqa: E402
from planners import make_planner  # noqa: E402
from planners.objectives import ObjectiveConfig, build_cost_fn, uses_states  # noqa: E402
from planning import count_flops  # noqa: E402  (sibling benchmark script)

ROOT = Path(__file__).resolve().parent.parent


def pruned_work(world_model, z0, state0, samples: int, horizon: int, step: int, keep: float) -> float:
    """Rollout FLOPs of all ``samples`` to ``step``, then the kept ones on to ``horizon``, over a full rollout's."""
    kept = max(1, round(keep * samples))
    action_dim = world_model.predictor.config.action_dim

    def flops(count: int, steps: int) -> int:
        actions = torch.zeros(count, steps, action_dim)
        return count_flops(lambda: world_model.rollout(z0, state0, actions))

    full = flops(samples, horizon)
    # Kept candidates re-run from the start here, so subtract their share of the first ``step`` steps.
    return (flops(samples, step) + flops(kept, horizon) - flops(kept, step)) / full


@dataclass
class EliminationRow:
    horizon: int
    keep: float
    elite_recall: float  # mean fraction of the full rollout's elites that the proxy keeps
    best_kept: float  # fraction of planner iterations whose best candidate the proxy keeps
    work: float  # rollout FLOPs of the pruned rollout over the full one's


@torch.no_grad()
def measure(world_model, planner_cfg: dict, pairs: int, horizons: list[int], keeps: list[float],
            step: int = 1) -> list[EliminationRow]:
    """Run the planner on ``pairs`` reach (observation, goal) pairs at each horizon; at every iteration, rank its
    candidates by the full objective and by the proxy (the objective after ``step`` actions) (module doc)."""
    planner_cfg = dict(planner_cfg)
    planner = make_planner(planner_cfg.pop("name"), **planner_cfg)
    elites, samples = planner_cfg["elites"], planner_cfg["samples"]
    env, goal_env = envs.make("reach"), envs.make("reach")
    low, high = env.action_space.low, env.action_space.high
    recall: dict[tuple[int, float], list[float]] = {(h, k): [] for h in horizons for k in keeps}
    best_kept: dict[tuple[int, float], list[float]] = {key: [] for key in recall}
    for pair in range(pairs):
        obs, _ = env.reset(seed=pair)
        goal, _ = goal_env.reset(seed=pair + 1000)
        z = world_model.encode(torch.as_tensor(np.stack([obs["pixels"], goal["pixels"]])).permute(0, 3, 1, 2))
        state0 = torch.as_tensor(obs["state"], dtype=torch.float32)[None] if uses_states(world_model) else None
        full_cost = build_cost_fn(world_model, z[:1], state0, z[1:], ObjectiveConfig())
        for horizon in horizons:
            def scored(actions: torch.Tensor, horizon: int = horizon) -> torch.Tensor:
                costs = full_cost(actions)  # (1, S)
                proxy = full_cost(actions[:, :, :step])  # the same objective on the first steps' latents
                top = costs[0].topk(elites, largest=False).indices  # best first
                for keep in keeps:
                    kept = proxy[0].topk(max(1, round(keep * costs.shape[1])), largest=False).indices
                    survivors = torch.isin(top, kept)
                    recall[(horizon, keep)].append(survivors.float().mean().item())
                    best_kept[(horizon, keep)].append(float(survivors[0]))
                return costs

            planner.plan(scored, 1, horizon, low, high, generator=torch.Generator().manual_seed(pair))
    return [EliminationRow(h, k, float(np.mean(recall[(h, k)])), float(np.mean(best_kept[(h, k)])),
                          pruned_work(world_model, z[:1], state0, samples, h, step, k)) for h, k in recall]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "checkpoints" / "reach-default"))
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--horizons", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--keeps", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--planner", default="cem_fast", help="a conf/planner/*.yaml name")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world_model = ev.load_world_model(args.model, "reach")
    planner_cfg = yaml.safe_load((ROOT / "conf" / "planner" / f"{args.planner}.yaml").read_text())
    rows = measure(world_model, planner_cfg, args.pairs, args.horizons, args.keeps)
    print(f"model {args.model}, planner {args.planner} ({planner_cfg['samples']} x {planner_cfg['iterations']}, "
          f"{planner_cfg['elites']} elites), {args.pairs} pairs, proxy after 1 step")
    print("| horizon | keep | elite recall | best candidate kept | rollout work |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.horizon} | {row.keep:.2f} | {100 * row.elite_recall:.0f}% | {100 * row.best_kept:.0f}% | "
              f"{100 * row.work:.0f}% |")


if __name__ == "__main__":
    main()
