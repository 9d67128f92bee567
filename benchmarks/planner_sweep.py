"""Planner/objective sweep: success rate and plan time of `scripts/evaluate.py` settings, side by side.

    MUJOCO_GL=egl python benchmarks/planner_sweep.py [--model DIR] [--episodes 20] [--seed 2000]
        [--variant NAME="override override ..."] ... [--out outputs/sweep]

Each variant is a list of evaluate.py overrides (Hydra syntax) run over the same seeded episodes;
the default grid is the one that chose the shipped default (docs/frozen_readout_baseline.md). Sweep on seeds
other than the 1000-1049 of the reported evaluation, so the default is not tuned on its own test.
Prints a markdown table and writes OUT/sweep.json.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from jepa_world import evaluation as ev  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_GRID = {
    "latent only (CEM 64x5, H2)": ["objective.readout_weight=0"],
    "readout only": ["objective.latent_weight=0"],
    "latent + readout 0.3": ["objective.readout_weight=0.3"],
    "latent + readout 1": ["objective.readout_weight=1.0"],
    "latent + readout 3": ["objective.readout_weight=3.0"],
    "latent + readout 1, H1": ["objective.readout_weight=1.0", "horizon=1"],
    "latent + readout 1, CEM 32x3": ["objective.readout_weight=1.0", "planner.samples=32", "planner.iterations=3",
                                     "planner.elites=4"],
}


def load_evaluate():
    spec = importlib.util.spec_from_file_location("script_evaluate", ROOT / "scripts" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.evaluate


def parse_variant(text: str) -> tuple[str, list[str]]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--variant {text!r}: expected NAME=\"override override ...\"")
    name, overrides = text.split("=", 1)
    return name, overrides.split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="world-model dir (default: the env's shipped model)")
    parser.add_argument("--env", default="reach")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2000)
    parser.add_argument("--num-envs", type=int, default=10)
    parser.add_argument("--variant", type=parse_variant, action="append", default=None)
    parser.add_argument("--out", default="outputs/sweep")
    args = parser.parse_args()
    grid = dict(args.variant) if args.variant else DEFAULT_GRID
    evaluate = load_evaluate()
    rows = []
    for index, (name, overrides) in enumerate(grid.items()):
        common = [f"env={args.env}", f"episodes={args.episodes}", f"seed={args.seed}", f"num_envs={args.num_envs}",
                  "max_videos=0", f"output_dir={Path(args.out) / f'variant_{index}'}"]
        if args.model:
            common.append(f"model={args.model}")
        with initialize_config_dir(str(ROOT / "conf"), version_base=None):
            cfg = OmegaConf.to_container(compose("evaluate", overrides=ev.route_model_override(common + overrides)),
                                         resolve=True)
        start = time.perf_counter()
        aggregated = evaluate(cfg)["aggregated"]
        rows.append({"variant": name, "overrides": overrides, "wall_s": round(time.perf_counter() - start, 1),
                     **{k: aggregated.get(k) for k in ("pc_success", "avg_final_distance", "plan_ms_median")}})
        print(f"{name}: {rows[-1]}", flush=True)
    print(f"\n{args.env}, {args.episodes} episodes from seed {args.seed}, {args.num_envs} envs planned together; "
          "plan ms is per planning call for all envs\n")
    print("| variant | success % | mean final distance (m) | plan ms (median) | wall s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['pc_success']:.0f} | {row['avg_final_distance']:.3f} | "
              f"{row['plan_ms_median']:.0f} | {row['wall_s']:.0f} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
