"""Train the VL-JEPA language head on a frozen world model; see conf/train_language.yaml.

    python scripts/train_language.py world_model=outputs/posttrain/<run>/checkpoints/last
    python scripts/train_language.py encoder.checkpoint=outputs/pretrain/<run>/checkpoints/last
    torchrun --nproc_per_node 2 scripts/train_language.py device=cpu
"""
import logging
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")

import hydra
from omegaconf import DictConfig

from jepa_world.language.train import train_language
from jepa_world.model_format import CheckpointError
from jepa_world.training.distributed import finish_distributed
from jepa_world.training.run import NonFiniteLossError

log = logging.getLogger("train_language")


@hydra.main(config_path="../conf", config_name="train_language", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone reports progress
    try:
        results = train_language(cfg)
    except (ValueError, CheckpointError, NonFiniteLossError, ImportError) as err:
        log.error("%s: %s", type(err).__name__, err)
        finish_distributed(exit_code=1)
        sys.exit(1)
    for key, value in sorted(results.items()):
        if key.startswith("heldout_templates") and "R@" in key:
            print(f"{key}: {value:.3f}")
    finish_distributed(exit_code=0)


if __name__ == "__main__":
    main()
