"""Plot the world model's energy over a grid of first actions around a recorded one.

    python scripts/energy_landscape.py --model DIR --data data/reach [--index 0 --horizon 1 --dims 0 1
        --radius 0.05 --points 21 --out outputs/energy_landscape.png]

The window's first frame is the observation, its last frame (horizon steps later) the goal.
Prints the recorded action, the grid argmin and their distance.
"""
import argparse
import logging
import os
import sys

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from jepa_world import evaluation as ev  # noqa: E402
from jepa_world.data.trajectory import TrajectoryDataset  # noqa: E402
from jepa_world.energy_landscape import compute_landscape, plot_landscape  # noqa: E402
from planners.objectives import METRICS, ObjectiveConfig  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="world-model directory (scripts/posttrain.py output)")
    parser.add_argument("--data", required=True, help="LeRobot dataset root (scripts/collect.py output)")
    parser.add_argument("--index", type=int, default=0, help="window index in the dataset split")
    parser.add_argument("--split", default="val", choices=["train", "val"])
    parser.add_argument("--horizon", type=int, default=1, help="steps between observation and goal frame")
    parser.add_argument("--frame-step", type=int, default=1, help="dataset frame step (actions are summed)")
    parser.add_argument("--dims", type=int, nargs=2, default=[0, 1], help="the two action dims to sweep")
    parser.add_argument("--radius", type=float, default=None, help="sweep half-width (default 2x max |action|)")
    parser.add_argument("--points", type=int, default=21, help="grid points per dim")
    parser.add_argument("--metric", default="l1", choices=METRICS)
    parser.add_argument("--out", default="outputs/energy_landscape.png")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.horizon < 1:
        raise SystemExit(f"--horizon must be >= 1, got {args.horizon}")
    world_model = ev.load_world_model(args.model, "reach", args.device)
    dataset = TrajectoryDataset(args.data, num_frames=args.horizon + 1, frame_step=args.frame_step, split=args.split)
    if not 0 <= args.index < len(dataset):
        raise SystemExit(f"--index {args.index} is out of range: the {args.split} split has {len(dataset)} windows")
    item = dataset[args.index]
    landscape = compute_landscape(world_model, item["frames"], item["actions"], item["states"], tuple(args.dims),
                                  args.radius, args.points, ObjectiveConfig(metric=args.metric))
    path = plot_landscape(landscape, args.out, f"episode {item['episode_index']} window {args.index}: "
                                               f"argmin error {landscape.argmin_error:.4f}")
    print(f"recorded action {np.round(landscape.true_action.astype(float), 4).tolist()} (energy {landscape.true_energy:.4f}), "
          f"grid argmin {np.round(landscape.best_action.astype(float), 4).tolist()} (energy {landscape.energies.min():.4f}), "
          f"error {landscape.argmin_error:.4f} -> {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
