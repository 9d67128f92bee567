"""Train the VL-JEPA language head on a frozen world model; see conf/train_language.yaml.

    python scripts/train_language.py world_model=outputs/posttrain/<run>/world_model train.steps=400
    torchrun --nproc_per_node 2 scripts/train_language.py device=cpu
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import hydra
from omegaconf import DictConfig

from jepa_world.language.train import train_language


@hydra.main(config_path="../conf", config_name="train_language", version_base="1.3")
def main(cfg: DictConfig) -> None:
    results = train_language(cfg)
    for key, value in sorted(results.items()):
        if key.startswith("heldout_templates") and "R@" in key:
            print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
