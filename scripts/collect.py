"""Collect exploration + expert episodes into a LeRobotDataset v3.0.

    python scripts/collect.py env=reach episodes=200 output_dir=data/reach seed=0 expert_ratio=0.5 workers=2
"""

import logging
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from jepa_world.data.collection import collect, config_from_hydra  # noqa: E402

log = logging.getLogger("collect")


@hydra.main(config_path="../conf", config_name="collect", version_base=None)
def main(cfg: DictConfig) -> None:
    config = config_from_hydra(OmegaConf.to_container(cfg, resolve=True))
    summary = collect(config)
    rates = ", ".join(f"{policy} {rate:.0%}" for policy, rate in summary.success_rate.items())
    print(f"{summary.output_dir}: {summary.episodes} episodes ({summary.new_episodes} new, {summary.frames} frames) "
          f"in {summary.seconds:.1f}s = {summary.episodes_per_second:.2f} episodes/s; success: {rates}")


if __name__ == "__main__":
    main()
