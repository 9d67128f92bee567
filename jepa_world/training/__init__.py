"""Training engine shared by the pretraining, post-training and language-head scripts."""
from jepa_world.model_format import (
    CheckpointError,
    load_modules,
    module_tensors,
    read_config,
    read_tensors,
    read_train_state,
    save_checkpoint,
)
from jepa_world.training.checkpoint import check_config_matches
from jepa_world.training.ema import EMA, MomentumSchedule, make_target
from jepa_world.training.optim import OptimConfig, apply_schedule, build_optimizer, clip_gradients, lr_at, param_groups
from jepa_world.training.run import (
    MetricsWriter,
    NonFiniteGuard,
    NonFiniteLossError,
    capture_rng_state,
    restore_rng_state,
    seed_everything,
    setup_logging,
)

__all__ = [
    "CheckpointError",
    "EMA",
    "MetricsWriter",
    "MomentumSchedule",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "OptimConfig",
    "apply_schedule",
    "build_optimizer",
    "capture_rng_state",
    "check_config_matches",
    "clip_gradients",
    "load_modules",
    "lr_at",
    "make_target",
    "module_tensors",
    "param_groups",
    "read_config",
    "read_tensors",
    "read_train_state",
    "restore_rng_state",
    "save_checkpoint",
    "seed_everything",
    "setup_logging",
]
