"""Is an energy usable for planning at all? Greedy descent with the simulator as a perfect predictor.

    MUJOCO_GL=egl python benchmarks/oracle_energy.py [--energy pixels|latent|readout] [--model DIR]
        [--episodes 10] [--seed 1000] [--protocol anywhere|near] [--grid 3|5]

At every step each action of a grid ({-0.05, 0, 0.05}^3, or with --grid 5 also +-0.02 per axis) is executed in the real simulator,
rendered and undone (qpos, qvel and servo targets restored). The action whose next frame has the
lowest energy to the goal image is taken. No world model predicts anything, so a failure here
belongs to the energy itself, not to the predictor:
  * pixels: mean |frame - goal| over uint8 RGB pixels scaled to [0, 1];
  * latent: the world model's planning latent L1 (encode, layer-normed, pooled);
  * planning: latent L1 + DEFAULT_CRITIC_WEIGHT x the temporal-distance critic (the default
    planning energy of a model with a critic);
  * readout: the distance between the end effector the action reaches and the readout's decoding
    of the goal image (needs a model with a state readout).
Prints success rate and median final distance (docs/frozen_readout_baseline.md, gap analysis).
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402
from jepa_world import evaluation as ev  # noqa: E402
from jepa_world.world_model import WorldModel  # noqa: E402
from planners.objectives import DEFAULT_CRITIC_WEIGHT  # noqa: E402

GRIDS = {3: [-0.05, 0.0, 0.05], 5: [-0.05, -0.02, 0.0, 0.02, 0.05]}  # per-axis steps


def next_frames(env, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames (K, H, W, 3) and end-effector positions (K, 3) after each action, simulator restored after each."""
    sim = env.unwrapped
    saved = sim.data.qpos.copy(), sim.data.qvel.copy(), sim.data.ctrl.copy()
    frames, positions = [], []
    for action in actions:
        obs, *_ = sim.step(action)  # the unwrapped env: probes must not count against the time limit
        frames.append(obs["pixels"])
        positions.append(obs["state"][:3])
        sim.data.qpos[:], sim.data.qvel[:], sim.data.ctrl[:] = saved
        mujoco.mj_forward(sim.model, sim.data)
    return np.stack(frames), np.stack(positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--energy", choices=("pixels", "latent", "planning", "readout"), default="pixels")
    parser.add_argument("--model", default="checkpoints/reach-default")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--protocol", choices=ev.GOAL_PROTOCOLS, default="anywhere")
    parser.add_argument("--grid", type=int, choices=sorted(GRIDS), default=3)
    args = parser.parse_args()
    grid = np.array(list(itertools.product(GRIDS[args.grid], repeat=3)), dtype=np.float32)  # (K, 3)
    torch.set_num_threads(args.threads)
    model = None if args.energy == "pixels" else WorldModel.from_pretrained(args.model).eval()

    def energies(frames: np.ndarray, positions: np.ndarray, goal: np.ndarray) -> np.ndarray:
        if args.energy == "pixels":
            return np.abs(frames.astype(np.float32) - goal.astype(np.float32)).mean(axis=(1, 2, 3)) / 255
        if args.energy in ("latent", "planning"):
            z = model.encode(torch.from_numpy(np.concatenate([frames, goal[None]])))
            energy = model.energy(z[:-1], z[-1:])
            if args.energy == "planning":
                energy = energy + DEFAULT_CRITIC_WEIGHT * model.critic.distance(z[:-1], z[-1:])
            return energy.detach().numpy()
        goal_position = model.decode_state(torch.from_numpy(goal[None]))[0].numpy()
        return np.linalg.norm(positions - goal_position, axis=-1)

    successes, distances = [], []
    for episode in range(args.episodes):
        env = envs.make("reach")
        [options] = ev.protocol_options([env], [args.seed + episode], args.protocol, 25)
        env.reset(seed=args.seed + episode, options=options)
        goal = env.unwrapped.goal_image()
        info = {}
        for _ in range(env.spec.max_episode_steps):
            frames, positions = next_frames(env, grid)
            _, _, _, _, info = env.step(grid[int(np.argmin(energies(frames, positions, goal)))])
        successes.append(bool(info["is_success"]))
        distances.append(float(info["distance"]))
        env.close()
    print(f"energy={args.energy}: oracle-greedy success {sum(successes)}/{len(successes)}, "
          f"median final distance {statistics.median(distances):.3f} m (seeds {args.seed}-{args.seed + args.episodes - 1}, "
          f"{args.protocol} goals, {len(grid)}-action grid)")


if __name__ == "__main__":
    main()
