"""How predictable is a world-model latent from the robot's own state? (issue #4 diagnostic)

The post-training bar is a held-out latent L1 at most half that of copying the last frame. This
script asks whether any predictor could reach it on a given latent, by fitting two oracles that
are handed the *true next* end-effector position (which the world model only knows through the
integrated action), on a post-training feature cache (`<data>/.feature_cache/<key>`):

* nearest neighbour: the latent of the training frame whose end effector is closest;
* renderer difference: z_t + g(ee_{t+1}) - g(ee_t), with g an MLP trained on the training
  episodes' frame pairs (the static, episode-specific content cancels; g must only "render" the arm).

If even these stay near copy-last, the latent moves in ways the end-effector position does not
explain smoothly at this data size, and no action-conditioned predictor will halve copy-last.

    python benchmarks/prediction_headroom.py outputs/r4/data/.feature_cache/<key> [--steps 4000]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


def frame_pairs(starts: torch.Tensor, lengths: torch.Tensor, episodes: range) -> torch.Tensor:
    """Indices i with frame i+1 in the same episode."""
    return torch.cat([torch.arange(int(starts[e]), int(starts[e] + lengths[e]) - 1) for e in episodes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cache", type=Path, help="a feature cache directory holding features.safetensors")
    parser.add_argument("--val-episodes", type=int, default=40, help="the last N episodes are held out")
    parser.add_argument("--position-dims", type=int, nargs="+", default=[0, 1, 2], help="state dims of the end effector")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    cache = load_file(args.cache / "features.safetensors")
    latents, states = cache["latents"], cache["states"]  # (F, N, D), (F, S)
    starts, lengths = cache["episode_start"], cache["episode_length"]
    num_episodes = len(starts)
    if not 0 < args.val_episodes < num_episodes:
        raise SystemExit(f"--val-episodes={args.val_episodes} must be in (0, {num_episodes})")
    train_episodes = range(num_episodes - args.val_episodes)
    train = frame_pairs(starts, lengths, train_episodes)
    val = frame_pairs(starts, lengths, range(num_episodes - args.val_episodes, num_episodes))
    position = states[:, args.position_dims]
    position = (position - position[train].mean(0)) / position[train].std(0)
    frames_per_latent = latents.shape[1:]

    def l1(predicted: torch.Tensor) -> float:
        return (predicted - latents[val + 1]).abs().mean().item()

    copy_last = l1(latents[val])
    rows = [("copy last frame", copy_last, 0.0)]

    # Nearest neighbour over every training frame's end-effector position.
    start = time.perf_counter()
    train_frames = torch.cat([torch.arange(int(starts[e]), int(starts[e] + lengths[e])) for e in train_episodes])
    nearest = torch.cdist(position[val + 1], position[train_frames]).argmin(1)
    rows.append(("nearest neighbour in ee_{t+1}", l1(latents[train_frames[nearest]]), time.perf_counter() - start))

    # Renderer difference: only the arm's change has to be modelled.
    start = time.perf_counter()
    width, out_dim = 512, frames_per_latent.numel()
    render = nn.Sequential(nn.Linear(len(args.position_dims), width), nn.GELU(), nn.Linear(width, width), nn.GELU(),
                           nn.Linear(width, width), nn.GELU(), nn.Linear(width, out_dim))
    optimizer = torch.optim.AdamW(render.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)

    def step_prediction(i: torch.Tensor) -> torch.Tensor:
        change = render(position[i + 1]) - render(position[i])  # (B, N*D)
        return latents[i] + change.view(-1, *frames_per_latent)

    for _ in range(args.steps):
        batch = train[torch.randint(0, len(train), (256,))]
        loss = (step_prediction(batch) - latents[batch + 1]).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        rows.append((f"z_t + g(ee_t+1) - g(ee_t), MLP {args.steps} steps", l1(step_prediction(val)), time.perf_counter() - start))

    print(f"{args.cache}: {len(train)} train / {len(val)} held-out frame pairs, latent {tuple(frames_per_latent)}")
    print("| 1-step predictor | held-out L1 | / copy-last | fit s |\n|---|---|---|---|")
    for name, value, seconds in rows:
        print(f"| {name} | {value:.4f} | {value / copy_last:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
