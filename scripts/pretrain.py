"""JEPA pretraining entry point (Hydra).

    python scripts/pretrain.py                                   # CPU default: micro ViT, synthetic shapes
    python scripts/pretrain.py max_steps=N output_dir=DIR        # metrics.jsonl + checkpoints/last/
    python scripts/pretrain.py output_dir=DIR resume=true        # continue exactly where DIR stopped
    torchrun --nproc_per_node=8 scripts/pretrain.py model=vit_large data=video_folder data.root=...
    python scripts/pretrain.py -m hydra/launcher=slurm ...       # SLURM through submitit

See docs/pretraining.md. Configuration errors, bad checkpoints and non-finite losses
are reported as one clear message with exit code 1 (not a traceback).
"""
from __future__ import annotations

import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from jepa_world.model_format import CheckpointError
from jepa_world.training.distributed import finish_distributed
from jepa_world.training.pretrain import ConfigError, pretrain
from jepa_world.training.run import NonFiniteLossError

log = logging.getLogger("pretrain")


@hydra.main(version_base="1.3", config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 alone reports progress
    try:
        config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        config["output_dir"] = HydraConfig.get().runtime.output_dir  # the per-job dir under -m sweeps
        result = pretrain(config)
    except (ConfigError, CheckpointError, NonFiniteLossError) as err:
        log.error("%s: %s", type(err).__name__, err)
        finish_distributed(exit_code=1)
        sys.exit(1)
    except MissingMandatoryValue as err:  # a '???' key such as data.root was not given
        log.error("missing required config value %s: set it on the command line, e.g. %s=...", err.full_key, err.full_key)
        finish_distributed(exit_code=1)
        sys.exit(1)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"pretrained {result.steps} steps, final loss {result.final_loss:.4f}; checkpoint {result.checkpoint}")
    finish_distributed(exit_code=0)


if __name__ == "__main__":
    main()
