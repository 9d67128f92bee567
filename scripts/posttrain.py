"""Post-train the action-conditioned predictor on a trajectory dataset (see conf/posttrain.yaml).

    python scripts/posttrain.py data=DIR encoder=CKPT_DIR max_steps=N output_dir=OUT
    torchrun --nproc_per_node=2 scripts/posttrain.py data=DIR encoder=CKPT_DIR max_steps=N output_dir=OUT
"""
import os
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from jepa_world.training.distributed import finish_distributed
from jepa_world.training.posttrain import PosttrainConfig, run_posttrain

# conf/ also holds the pretraining config group "data/", which would claim the "data=DIR" override
# this script's contract uses. Registering conf/posttrain.yaml as a stored primary config keeps the
# file as the single source while leaving the other groups off this script's search path.
ConfigStore.instance().store(name="posttrain", node=OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "posttrain.yaml"))


@hydra.main(config_path=None, config_name="posttrain", version_base=None)
def main(cfg: DictConfig) -> None:
    config = PosttrainConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
    try:
        result = run_posttrain(config)
    except BaseException:
        finish_distributed(exit_code=1)
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        horizons = ", ".join(
            f"h{h}: {result.eval[f'val_l1_h{h}']:.4f} vs copy-last {result.eval[f'copy_last_l1_h{h}']:.4f}"
            for h in config.eval_horizons if f"val_l1_h{h}" in result.eval
        )
        print(f"{result.output_dir}: {result.steps} steps in {result.seconds:.1f}s, loss {result.final_loss:.4f}"
              + (f"; held-out latent L1 {horizons}" if horizons else ""))
    finish_distributed()  # under torchrun: barrier, destroy the group, os._exit (REFERENCE 7)


if __name__ == "__main__":
    main()
