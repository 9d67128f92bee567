"""World-model rollout speed: KV-cached vs naive (re-run the whole history every step).

    python benchmarks/rollout.py [--model DIR] [--samples 64 128 256 512] [--horizons 1 2 4 8]
        [--context 1] [--repeats 3] [--threads 2]

For every (samples S, horizon H) it times ``WorldModel.rollout(z0, state0, actions[S, H, A])``
with ``use_kv_cache=True`` and ``False`` on the same inputs, checks they agree (max |diff|), and
prints ms per call and achieved GFLOP/s (FLOPs counted once by torch's FlopCounterMode; the naive
path does more FLOPs for the same answer, so its GFLOP/s flatters it: compare ms). Times are
process CPU time / threads, which is robust to other jobs starving the process on a shared box;
wall ms is shown too. Without --model the model is the default post-training architecture
(conf/posttrain.yaml: tiny encoder on 64 px, patch 8, latent_pool 2 -> 16 tokens per frame, tiny
6x192 predictor, reach's 3-D actions and 9-D states) with random weights; speed does not depend
on the weights.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from envs.arm import ARM_STATE_DIM, ArmEnv
from jepa_world.models.vit import build_encoder
from jepa_world.dynamics import DynamicsConfig
from jepa_world.latent_encoder import LatentConfig
from jepa_world.world_model import WorldModel


def default_model() -> WorldModel:
    torch.manual_seed(0)
    encoder = build_encoder("tiny", img_size=64, patch_size=8)
    return WorldModel.create(encoder, action_dim=len(ArmEnv.action_names), state_dim=ARM_STATE_DIM,
                             latent_config=LatentConfig(latent_pool=2),
                             dynamics_config=DynamicsConfig(integrated_state_dims=ArmEnv.action_state_map), size="tiny")  # absolute head: random weights give non-trivial outputs to compare


def timed(fn, repeats: int, threads: int) -> tuple[float, float]:
    """Median (cpu-time/threads, wall) ms over ``repeats`` calls after one warm-up."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append((time.process_time() - c0) / threads * 1e3)
        wall.append((time.perf_counter() - w0) * 1e3)
    return statistics.median(cpu), statistics.median(wall)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="world-model directory (WorldModel.from_pretrained); default: random default arch")
    parser.add_argument("--samples", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--horizons", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--context", type=int, default=1, help="context frames T0 before the planned steps")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wm = (WorldModel.from_pretrained(args.model) if args.model else default_model()).eval()
    pc = wm.predictor.config
    n_tokens, dim = pc.frame_tokens, pc.encoder_dim
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(1, args.context, n_tokens, dim, generator=g)
    state0 = torch.randn(1, args.context, pc.state_dim, generator=g) if pc.state_dim else None
    past = torch.randn(1, args.context - 1, pc.action_dim, generator=g) * 0.05 if args.context > 1 else None
    params = sum(p.numel() for p in wm.predictor.parameters()) / 1e6
    print(f"predictor {pc.depth}x{pc.dim} ({params:.2f}M params), {n_tokens} tokens/frame + {pc.cond_tokens} action/state, "
          f"context {args.context}, threads {args.threads}")
    header = (f"{'S':>5} {'H':>3} | {'cached ms':>10} {'wall':>8} {'GFLOP/s':>8} | {'naive ms':>10} {'wall':>8} "
              f"{'GFLOP/s':>8} | {'speed-up':>8} {'max|diff|':>10}")
    print(header)
    print("-" * len(header))
    for samples in args.samples:
        for horizon in args.horizons:
            actions = torch.randn(samples, horizon, pc.action_dim, generator=g) * 0.05

            def cached():
                return wm.rollout(z0, state0, actions, context_actions=past)

            def naive():
                return wm.rollout(z0, state0, actions, context_actions=past, use_kv_cache=False)

            diff = (cached() - naive()).abs().max().item()
            flops_cached, flops_naive = count_flops(cached), count_flops(naive)
            cpu_c, wall_c = timed(cached, args.repeats, args.threads)
            cpu_n, wall_n = timed(naive, args.repeats, args.threads)
            print(f"{samples:>5} {horizon:>3} | {cpu_c:>10.1f} {wall_c:>8.1f} {flops_cached / cpu_c / 1e6:>8.1f} | "
                  f"{cpu_n:>10.1f} {wall_n:>8.1f} {flops_naive / cpu_n / 1e6:>8.1f} | {cpu_n / cpu_c:>7.2f}x {diff:>10.1e}",
                  flush=True)


if __name__ == "__main__":
    main()
