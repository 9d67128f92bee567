"""Frozen-encoder probe on robot trajectory videos: does the latent see the arm?

For each encoder (a pretraining checkpoint dir or ``random:<size>``) every frame of the dataset
is encoded once (``jepa_world.data.feature_cache``, cached on disk) and three things are measured
on the held-out episodes (the last ``--test-episodes`` by index; the readout trains on the rest):

  step L1      copy-last latent L1 per frame step on the planning latents (2x2-pooled, layer-normed
               tokens, as ``WorldModel.encode`` with latent_pool=2): how much the latent moves
               when the arm moves. ``step/pair`` divides it by the L1 between random frame pairs of
               different held-out episodes, so a uniformly shrunk latent does not look insensitive.
  readout      median / p90 error (cm) of the end-effector xyz (state dims 0-2) decoded from the
               full token grid by ``StateReadout``, trained identically (same seed, steps, LR) for
               every encoder.
  erank        effective rank of held-out full-grid tokens (rows: tokens, max D) and of held-out
               frames (rows: frames, flattened pooled latents).
  SIGReg       the pretraining regulariser's statistic (default SIGRegConfig, fixed directions) on
               2400 random held-out full-grid tokens, about the batch of one pretraining step;
               ~1.05 for Gaussian tokens, O(N) for collapsed ones.

    python benchmarks/encoder_probe.py --encoders random:micro outputs/r4/pretrain/checkpoints/last \\
        outputs/sigreg_0.05/checkpoints/last --data outputs/r4/data
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from jepa_world.data.feature_cache import FeatureCache, load_or_build_feature_cache
from jepa_world.models.state_readout import StateReadout, StateReadoutConfig
from jepa_world.probe import effective_rank
from jepa_world.training.posttrain import load_encoder
from jepa_world.training.sigreg import SIGReg, SIGRegConfig, step_generator
from jepa_world.latent_encoder import LatentConfig, LatentEncoder

log = logging.getLogger("encoder_probe")

STATE_DIMS = (0, 1, 2)  # end-effector xyz (m) in reach/push states


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", required=True, help="checkpoint dirs or random:<size>")
    parser.add_argument("--data", required=True, help="LeRobot trajectory dataset dir")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8, help="patch size of random:<size> encoders")
    parser.add_argument("--latent-pool", type=int, default=2, help="pooling of the planning latents (step L1)")
    parser.add_argument("--test-episodes", type=int, default=40, help="last N episodes held out")
    parser.add_argument("--readout-steps", type=int, default=4000)
    parser.add_argument("--readout-batch", type=int, default=256)
    parser.add_argument("--readout-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-root", default=None, help="feature cache root (default <data>/.feature_cache)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.test_episodes < 1 or args.readout_steps < 1 or args.latent_pool < 1:
        parser.error(f"--test-episodes={args.test_episodes}, --readout-steps={args.readout_steps}, "
                     f"--latent-pool={args.latent_pool}: each must be >= 1")
    return args


def episode_split(cache: FeatureCache, test_episodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean row masks (F,) for the train episodes and the last ``test_episodes`` by index."""
    num_episodes = len(cache.episode_index)
    if test_episodes >= num_episodes:
        raise ValueError(f"--test-episodes={test_episodes} leaves no training episodes out of {num_episodes} in {cache.path}")
    rank = torch.argsort(torch.argsort(cache.episode_index))  # position of each episode in index order
    test_episode = rank >= num_episodes - test_episodes  # (E,)
    test_rows = torch.repeat_interleave(test_episode, cache.episode_length)  # (F,)
    return ~test_rows, test_rows


def row_episode(cache: FeatureCache) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(cache.episode_length)), cache.episode_length)  # (F,)


def step_sensitivity(cache: FeatureCache, rows: torch.Tensor, generator: torch.Generator) -> tuple[float, float]:
    """(mean L1 between consecutive frames of an episode, that / mean L1 between frames of different episodes)."""
    latents, episode = cache.latents[rows].float(), row_episode(cache)[rows]  # (F, N, D), (F,)
    same = episode[1:] == episode[:-1]
    step = (latents[1:] - latents[:-1]).abs().mean((1, 2))[same].mean().item()
    first = torch.randint(len(latents), (4096,), generator=generator)
    second = torch.randint(len(latents), (4096,), generator=generator)
    apart = episode[first] != episode[second]
    pair = (latents[first[apart]] - latents[second[apart]]).abs().mean().item()
    return step, step / pair


def readout_errors(cache: FeatureCache, train_rows: torch.Tensor, test_rows: torch.Tensor, args: argparse.Namespace) -> tuple[float, float]:
    """Train a fresh StateReadout on the train rows; median and p90 Euclidean error (cm) on the test rows."""
    torch.manual_seed(args.seed)
    frame_tokens, dim = cache.tokens
    readout = StateReadout(StateReadoutConfig(frame_tokens=frame_tokens, dim=dim, state_dims=STATE_DIMS))
    train_z, train_state = cache.latents[train_rows].float(), cache.states[train_rows]
    targets = train_state[:, list(STATE_DIMS)]
    readout.set_statistics(targets.mean(0), targets.std(0))
    train_y = readout.standardize(train_state)  # (F, 3)
    optimizer = torch.optim.AdamW(readout.parameters(), lr=args.readout_lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.readout_steps)
    generator = torch.Generator().manual_seed(args.seed)
    for _ in range(args.readout_steps):
        batch = torch.randint(len(train_z), (args.readout_batch,), generator=generator)
        loss = (readout.forward_standardized(train_z[batch]) - train_y[batch]).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        predicted = readout(cache.latents[test_rows].float())  # (F, 3)
    errors = (predicted - cache.states[test_rows][:, list(STATE_DIMS)]).norm(dim=-1) * 100.0
    return errors.median().item(), errors.quantile(0.9).item()


def probe(spec: str, args: argparse.Namespace) -> dict[str, float]:
    encoder = load_encoder(spec, {"patch_size": args.patch_size}, args.img_size, args.seed).eval()
    caches = {}
    for pool in sorted({1, args.latent_pool}):
        latent_encoder = LatentEncoder(encoder, LatentConfig(latent_pool=pool))
        caches[pool] = load_or_build_feature_cache(latent_encoder, args.data, cache_root=args.cache_root)
    full, pooled = caches[1], caches[args.latent_pool]
    train_rows, test_rows = episode_split(full, args.test_episodes)
    generator = torch.Generator().manual_seed(args.seed)
    step, step_ratio = step_sensitivity(pooled, test_rows, generator)
    started = time.perf_counter()
    median, p90 = readout_errors(full, train_rows, test_rows, args)
    log.info("%s: readout trained in %.0f s", spec, time.perf_counter() - started)
    test_tokens = full.latents[test_rows].float()  # (F, N, D)
    token_rows = test_tokens.flatten(0, 1)[torch.randperm(test_tokens.shape[0] * test_tokens.shape[1], generator=generator)[:20000]]
    sigreg = SIGReg(SIGRegConfig())
    directions = sigreg.sample_directions(token_rows.shape[1], step_generator(args.seed, 0))
    return {
        "step L1": step,
        "step/pair": step_ratio,
        "readout median cm": median,
        "readout p90 cm": p90,
        "erank tokens": effective_rank(token_rows),
        "erank frames": effective_rank(pooled.latents[test_rows].float().flatten(1)),
        "SIGReg": sigreg(token_rows[:2400], directions).item(),
    }


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    results = {spec: probe(spec, args) for spec in args.encoders}
    columns = list(next(iter(results.values())))
    width = max(len(spec) for spec in results)
    print(f"| {'encoder'.ljust(width)} | " + " | ".join(columns) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
    for spec, row in results.items():
        cells = [f"{row[c]:.4f}" if row[c] < 1 else f"{row[c]:.2f}" for c in columns]
        print(f"| {spec.ljust(width)} | " + " | ".join(cell.rjust(len(c)) for cell, c in zip(cells, columns)) + " |")


if __name__ == "__main__":
    main()
