"""Post-training of the action-conditioned predictor on robot trajectories (V-JEPA 2-AC recipe).

    python scripts/posttrain.py data=DIR encoder=CKPT_DIR max_steps=N output_dir=OUT

The encoder is frozen: every frame is encoded once into a feature cache
(``jepa_world.data.feature_cache``) and training draws windows of cached latents. The loss is
L1 teacher forcing over ``num_frames`` frames plus an L1 ``rollout_steps``-step autoregressive
rollout from the first frame, both on layer-normed targets (predictions are layer-normed the
same way, so what is trained is exactly what ``WorldModel.rollout`` runs). AdamW with a
warmup-stable-decay schedule; DDP when launched by torchrun. ``OUT/checkpoints/last`` is a
world-model directory (``WorldModel.from_pretrained``) that also carries the train state, so a
rerun with the same output_dir resumes exactly; a non-finite loss stops the run before any
checkpoint is written.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from jepa_world.data.feature_cache import (
    FeatureCache,
    WindowSampler,
    load_or_build_feature_cache,
)
from jepa_world.data.lerobot import DatasetFormatError, read_meta
from jepa_world.data.trajectory import split_episodes
from jepa_world.models.ac_predictor import ACPredictor, layer_norm_tokens
from jepa_world.models.state_readout import StateReadout
from jepa_world.models.vit import VIT_SIZES, VisionTransformer, ViTConfig, build_encoder
from jepa_world.training.checkpoint import (
    CheckpointError,
    load_modules,
    module_tensors,
    read_config,
    read_tensors,
    remove_stale_temp_dirs,
    resume_from,
    save_checkpoint,
)
from jepa_world.training.curves import refresh_run_curves
from jepa_world.training.distributed import (
    all_reduce_mean,
    barrier,
    init_distributed,
    wrap_ddp,
)
from jepa_world.training.optim import (
    OptimConfig,
    apply_schedule,
    build_optimizer,
    clip_gradients,
)
from jepa_world.training.run import (
    MetricsWriter,
    NonFiniteGuard,
    capture_rng_state,
    seed_everything,
    setup_logging,
)
from jepa_world.world_model import WorldModel, WorldModelConfig, describe

log = logging.getLogger(__name__)

RANDOM_ENCODER_PREFIX = "random:"
# Settings that must not change when resuming into an existing output_dir.
RESUME_KEYS: tuple[str, ...] = (
    "run.encoder", "run.num_frames", "run.frame_step", "run.action_merge", "run.rollout_steps", "run.batch_size",
    "run.state_tokens", "run.state_readout", "run.readout_batch_size", "run.readout_lr_scale", "run.seed", "run.max_steps", "run.val_fraction", "run.split_seed", "run.optim",
    "run.feature_cache_key", "predictor", "world_model",
)


@dataclass
class PosttrainConfig:
    data: str
    encoder: str  # pretrain checkpoint dir, world-model dir, or "random:<size>"
    output_dir: str = "outputs/posttrain"
    max_steps: int = 2000
    seed: int = 0
    device: str = "auto"
    threads: int | None = None  # torch intra-op threads per process (1 is fastest on a busy shared CPU)
    resume: bool = True
    camera: str | None = None
    feature_cache: str | None = None  # explicit cache dir (must match the encoder); None: automatic
    feature_cache_root: str | None = None  # where automatic caches live; None: <data>/.feature_cache
    encode_batch_size: int = 64
    random_encoder: dict[str, Any] = field(default_factory=lambda: {"patch_size": 8})  # build_encoder overrides
    action_dim: int | None = None  # expected dataset action dim; None: take the dataset's
    state_tokens: bool = True  # feed robot states to the predictor (False: state_dim 0)
    # StateReadoutConfig fields (state_dims, token_dim, hidden_dim): also train a head that decodes these
    # state dims from a frame's latents, for planning objectives that decode the goal image's state.
    # No (or empty) state_dims: no readout.
    state_readout: dict[str, Any] = field(default_factory=dict)
    readout_batch_size: int = 256  # frames per step for the readout (frames are cheap: cached latents)
    readout_lr_scale: float = 2.5  # readout LR as a multiple of the predictor's scheduled LR
    num_frames: int = 8
    frame_step: int = 1
    action_merge: str = "sum"
    val_fraction: float = 0.1
    split_seed: int = 0
    batch_size: int = 32  # per rank
    rollout_steps: int = 2
    predictor: dict[str, Any] = field(default_factory=lambda: {"size": "tiny"})  # ACPredictorConfig fields
    world_model: dict[str, Any] = field(default_factory=dict)  # WorldModelConfig fields
    optim: dict[str, Any] = field(default_factory=dict)  # OptimConfig fields
    log_every: int = 20
    eval_every: int = 500
    eval_windows: int = 256
    eval_horizons: tuple[int, ...] = (1, 5)
    save_every: int = 500
    stop_after: int | None = None  # end this invocation after this many steps (preemptible jobs); resume later

    def __post_init__(self) -> None:
        self.eval_horizons = tuple(int(h) for h in self.eval_horizons)
        positive = ("max_steps", "num_frames", "frame_step", "batch_size", "rollout_steps", "log_every", "eval_every",
                    "eval_windows", "save_every", "encode_batch_size", "readout_batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"posttrain {name}={value!r} must be a positive int")
        if self.num_frames < 2:
            raise ValueError(f"posttrain num_frames={self.num_frames} must be >= 2 (teacher forcing needs a next frame)")
        if self.rollout_steps > self.num_frames - 1:
            raise ValueError(
                f"posttrain rollout_steps={self.rollout_steps} needs num_frames >= {self.rollout_steps + 1}, "
                f"got num_frames={self.num_frames}"
            )
        if not self.eval_horizons or min(self.eval_horizons) < 1:
            raise ValueError(f"posttrain eval_horizons={self.eval_horizons} must be positive ints")
        if not self.readout_lr_scale > 0:
            raise ValueError(f"posttrain readout_lr_scale={self.readout_lr_scale!r} must be > 0")
        if self.stop_after is not None and self.stop_after < 1:
            raise ValueError(f"posttrain stop_after={self.stop_after} must be a positive int or null")
        if self.action_dim is not None and self.action_dim < 1:
            raise ValueError(f"posttrain action_dim={self.action_dim} must be positive or null")
        if not (self.encoder.startswith(RANDOM_ENCODER_PREFIX) or Path(self.encoder).is_dir()):
            raise ValueError(
                f"posttrain encoder={self.encoder!r}: expected a checkpoint directory or 'random:<size>' "
                f"with size in {list(VIT_SIZES)}"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PosttrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"hydra"})
        if unknown:
            raise ValueError(f"unknown posttrain config key(s) {unknown}; valid keys: {sorted(known)}")
        missing = [name for name in ("data", "encoder") if values.get(name) in (None, "???")]
        if missing:
            raise ValueError(f"posttrain needs {missing} (e.g. data=data/reach encoder=outputs/pretrain/checkpoints/last)")
        return cls(**{k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------- encoder


def _find_encoder_config(config: Any) -> dict[str, Any] | None:
    """The first nested dict that looks like a ViTConfig (keys within its fields, with size/patch_size)."""
    vit_fields = {f.name for f in fields(ViTConfig)}
    if isinstance(config, dict):
        if {"size", "patch_size"} <= set(config) and set(config) <= vit_fields:
            return config
        for key in ("encoder", "model"):
            if key in config:
                found = _find_encoder_config(config[key])
                if found is not None:
                    return found
        for value in config.values():
            found = _find_encoder_config(value)
            if found is not None:
                return found
    return None


def load_encoder(spec: str, random_overrides: dict[str, Any], img_size: int, seed: int) -> VisionTransformer:
    """``random:<size>`` or a checkpoint dir (``target_encoder.*`` preferred, else ``encoder.*``)."""
    if spec.startswith(RANDOM_ENCODER_PREFIX):
        size = spec[len(RANDOM_ENCODER_PREFIX) :]
        torch.manual_seed(seed)
        overrides = {"img_size": img_size, **random_overrides}
        log.info("random (untrained) %s encoder with %s", size, overrides)
        return build_encoder(size, **overrides)
    directory = Path(spec)
    config = read_config(directory)
    encoder_config = _find_encoder_config(config)
    if encoder_config is None:
        raise CheckpointError(f"{directory / 'config.json'} holds no encoder config (a dict with ViTConfig fields)")
    encoder = VisionTransformer(ViTConfig(**encoder_config))
    tensors = read_tensors(directory)
    prefix = next((p for p in ("target_encoder", "encoder") if any(k.startswith(p + ".") for k in tensors)), None)
    if prefix is None:
        raise CheckpointError(f"{directory / 'model.safetensors'} has no target_encoder.* or encoder.* weights")
    load_modules(directory, {prefix: encoder}, tensors)
    log.info("loaded frozen encoder (%s.*) from %s", prefix, directory)
    return encoder


def dataset_dims(data: str | Path, camera: str | None) -> tuple[int, int, int]:
    """(action_dim, state_dim, image height) from a dataset's meta/info.json."""
    meta = read_meta(data)
    features = meta.features
    try:
        action_dim = int(features["action"]["shape"][0])
        state_dim = int(features["observation.state"]["shape"][0])
    except (KeyError, IndexError, TypeError) as err:
        raise DatasetFormatError(f"{Path(data) / 'meta' / 'info.json'}: no action/observation.state shapes ({err})") from err
    video_keys = meta.video_keys
    key = camera if camera in video_keys else f"observation.images.{camera}" if camera else None
    key = key if key in video_keys else (video_keys[0] if video_keys and camera is None else None)
    if key is None:
        raise DatasetFormatError(f"{data}: camera {camera!r} not among the videos {video_keys}")
    height, width = (int(v) for v in features[key]["shape"][:2])
    if height != width:
        raise DatasetFormatError(f"{data}: {key} frames are {height}x{width}; the world model expects square frames")
    return action_dim, state_dim, height


# --------------------------------------------------------------------------- objective


class PosttrainObjective(nn.Module):
    """Teacher-forcing + autoregressive-rollout L1 on layer-normed latents, and the state readout's
    MSE when there is one (one DDP forward per step)."""

    def __init__(self, predictor: ACPredictor, rollout_steps: int, normalize: bool = True,
                 state_readout: StateReadout | None = None):
        super().__init__()
        self.predictor = predictor
        self.state_readout = state_readout
        self.rollout_steps = rollout_steps
        self.normalize = normalize

    def _predict(self, z: Tensor, actions: Tensor, states: Tensor | None) -> Tensor:
        out = self.predictor(z, actions, states)
        return layer_norm_tokens(out) if self.normalize else out

    def forward(self, z: Tensor, actions: Tensor, states: Tensor | None,
                readout_frames: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """z (B,T,N,D) targets, actions (B,T-1,A), states (B,T,S), readout_frames ((F,N,D) latents,
        (F,K) standardised targets) -> (teacher-forcing L1, rollout L1, readout MSE or 0). The readout
        sees the encoder's latents (as it will see the goal image's), never predicted ones."""
        past_states = None if states is None else states[:, :-1]
        teacher = self._predict(z[:, :-1], actions, past_states)  # (B, T-1, N, D)
        teacher_loss = (teacher - z[:, 1:]).abs().mean()
        history = torch.cat([z[:, :1], teacher[:, :1]], dim=1)  # step 1 of the rollout is teacher step 0
        for step in range(2, self.rollout_steps + 1):
            step_states = None if states is None else states[:, :step]
            nxt = self._predict(history, actions[:, :step], step_states)[:, -1:]
            history = torch.cat([history, nxt], dim=1)
        rollout_loss = (history[:, 1:] - z[:, 1 : self.rollout_steps + 1]).abs().mean()
        readout_loss = torch.zeros((), device=z.device)
        if self.state_readout is not None:
            latents, targets = readout_frames
            readout_loss = (self.state_readout.forward_standardized(latents) - targets).pow(2).mean()
        return teacher_loss, rollout_loss, readout_loss


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_prediction(
    world_model: WorldModel, sampler: WindowSampler, horizons: tuple[int, ...], max_windows: int, seed: int = 0
) -> dict[str, float]:
    """Held-out latent L1 of ``WorldModel.rollout`` at each horizon h vs the copy-last-frame baseline.

    From frame t of a held-out window, roll out h steps with the true actions (states advanced by the
    world model's own rule, as in planning) and compare to the encoded frame t+h. The baseline
    predicts z_{t+h} = z_t.
    """
    horizon = max(horizons)
    if sampler.num_frames < horizon + 1:
        raise ValueError(f"evaluation windows have {sampler.num_frames} frames, horizon {horizon} needs {horizon + 1}")
    count = min(max_windows, len(sampler))
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randperm(len(sampler), generator=generator)[:count]
    z, actions, states = sampler.gather(ids)
    device = next(world_model.predictor.parameters()).device
    z, actions = z.to(device), actions.to(device)
    state0 = states[:, 0].to(device) if world_model.predictor.config.state_dim else None
    was_training = world_model.training
    world_model.eval()
    predicted = world_model.rollout(z[:, 0], state0, actions[:, :horizon])  # (B, H, N, D)
    world_model.train(was_training)
    out = {}
    for h in horizons:
        out[f"val_l1_h{h}"] = (predicted[:, h - 1] - z[:, h]).abs().mean().item()
        out[f"copy_last_l1_h{h}"] = (z[:, 0] - z[:, h]).abs().mean().item()
        out[f"ratio_h{h}"] = out[f"val_l1_h{h}"] / max(out[f"copy_last_l1_h{h}"], 1e-12)
    return out


@torch.no_grad()
def evaluate_readout(readout: StateReadout, cache: FeatureCache, rows: Tensor) -> dict[str, float]:
    """Median and 90th-percentile Euclidean error (env units) of the state readout on held-out frames."""
    device = next(readout.parameters()).device
    dims = list(readout.config.state_dims)
    errors = torch.cat([
        (readout(cache.latents[part].to(device).float()) - cache.states[part][:, dims].to(device)).norm(dim=-1)
        for part in rows.split(1024)
    ])
    return {"readout_err_median": errors.median().item(), "readout_err_p90": errors.quantile(0.9).item()}


# --------------------------------------------------------------------------- training


@dataclass
class PosttrainResult:
    output_dir: Path
    steps: int
    final_loss: float
    eval: dict[str, float]
    seconds: float


def episode_rows(cache: FeatureCache, episodes: list[int]) -> Tensor:
    """Cache rows (frames) of ``episodes``."""
    positions = {int(e): i for i, e in enumerate(cache.episode_index.tolist())}
    return torch.cat([
        torch.arange(int(cache.episode_start[positions[e]]), int(cache.episode_start[positions[e]] + cache.episode_length[positions[e]]))
        for e in episodes
    ])


def input_statistics(cache: FeatureCache, episodes: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-dim mean/std of the actions and states of ``episodes`` (std of constant dims -> 1)."""
    rows = episode_rows(cache, episodes)
    out = []
    for values in (cache.actions[rows], cache.states[rows]):
        std = values.std(0)
        out += [values.mean(0), torch.where(std > 1e-6, std, torch.ones_like(std))]
    return tuple(out)


def _checkpoint_config(world_model: WorldModel, cfg: PosttrainConfig, cache: FeatureCache) -> dict[str, Any]:
    config = {**world_model.config_dict(), "run": {**asdict(cfg), "feature_cache_key": cache.key}}
    return json.loads(json.dumps(config))  # the JSON form (lists, not tuples) compares equal to a saved one


def _build_world_model(cfg: PosttrainConfig, seed: int) -> tuple[WorldModel, int, int]:
    action_dim, state_dim, img_size = dataset_dims(cfg.data, cfg.camera)
    if cfg.action_dim is not None and cfg.action_dim != action_dim:
        raise ValueError(
            f"dataset {cfg.data} has action dim {action_dim} but the model is configured for action_dim={cfg.action_dim}"
        )
    encoder = load_encoder(cfg.encoder, cfg.random_encoder, img_size, seed)
    predictor_state_dim = state_dim if cfg.state_tokens else 0
    wm_fields = dict(cfg.world_model)
    if not predictor_state_dim:
        wm_fields["integrated_state_dims"] = ()
    wm_config = WorldModelConfig(**wm_fields)
    torch.manual_seed(seed)
    world_model = WorldModel.create(encoder, action_dim, predictor_state_dim, wm_config, img_size=img_size,
                                    state_readout=dict(cfg.state_readout) if cfg.state_readout.get("state_dims") else None,
                                    **cfg.predictor)
    return world_model, action_dim, state_dim


def run_posttrain(cfg: PosttrainConfig) -> PosttrainResult:
    """Train (resuming from ``output_dir/checkpoints/last`` when present). Under torchrun the caller
    ends the process group with ``finish_distributed`` after using the result."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.device)
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    setup_logging(output_dir, info.is_main)
    seed_everything(cfg.seed)
    world_model, action_dim, _ = _build_world_model(cfg, cfg.seed)
    world_model.to(info.device)
    log.info("%s", describe(world_model))

    # Rank 0 encodes the dataset once; the others wait, then read the same cache.
    cache_args = dict(cache_dir=cfg.feature_cache, cache_root=cfg.feature_cache_root, camera=cfg.camera,
                      batch_size=cfg.encode_batch_size)
    if info.is_main:
        cache = load_or_build_feature_cache(world_model, cfg.data, **cache_args)
    barrier(info)
    if not info.is_main:
        cache = load_or_build_feature_cache(world_model, cfg.data, **cache_args)
    if cache.action_dim != action_dim:
        raise ValueError(f"feature cache {cache.path} has action dim {cache.action_dim}, the model {action_dim}")
    readout_cache = None
    if world_model.state_readout is not None:  # the readout reads its own (finer) token grid: a second cache
        readout_args = {**cache_args, "cache_dir": None}
        if info.is_main:
            readout_cache = load_or_build_feature_cache(world_model.readout_view(), cfg.data, **readout_args)
        barrier(info)
        if not info.is_main:
            readout_cache = load_or_build_feature_cache(world_model.readout_view(), cfg.data, **readout_args)
    episodes = [int(e) for e in cache.episode_index.tolist()]
    train_eps = split_episodes(episodes, "train", cfg.val_fraction, cfg.split_seed)
    val_eps = split_episodes(episodes, "val", cfg.val_fraction, cfg.split_seed) if cfg.val_fraction > 0 else []
    train = WindowSampler(cache, train_eps, cfg.num_frames, cfg.frame_step, cfg.action_merge)
    eval_frames = max(cfg.eval_horizons) + 1
    val = WindowSampler(cache, val_eps, eval_frames, cfg.frame_step, cfg.action_merge) if val_eps else None
    log.info("%d train windows (%d episodes), %d val windows (%d episodes)", len(train), len(train_eps),
             len(val) if val else 0, len(val_eps))

    statistics = input_statistics(cache, train_eps)
    world_model.set_input_statistics(*statistics)
    predictor, readout = world_model.predictor, world_model.state_readout
    if readout is not None:
        dims = list(readout.config.state_dims)
        if max(dims) >= cache.states.shape[-1]:
            raise ValueError(f"state_readout.state_dims={dims} but the dataset's states have {cache.states.shape[-1]} dims")
        readout.set_statistics(statistics[2][dims], statistics[3][dims])
    objective = PosttrainObjective(predictor, cfg.rollout_steps, world_model.config.normalize_latents, readout)
    optim_cfg = OptimConfig(**{"schedule": "wsd", "lr": 4.25e-4, "warmup_steps": min(100, cfg.max_steps // 10),
                               "grad_clip": 1.0, **cfg.optim})
    trained = {name: m for name, m in world_model.trained_modules().items() if name != "encoder"}
    optimizer = build_optimizer(objective, optim_cfg, {"state_readout.": cfg.readout_lr_scale})
    readout_rows = episode_rows(readout_cache, train_eps) if readout is not None else None
    readout_val_rows = episode_rows(readout_cache, val_eps) if readout is not None and val_eps else None
    config_json = _checkpoint_config(world_model, cfg, cache)

    last = output_dir / "checkpoints" / "last"
    start_step = 0
    if info.is_main:
        remove_stale_temp_dirs(last.parent)
    barrier(info)
    if cfg.resume and last.is_dir():
        start_step = resume_from(last, trained, optimizer, config_json, RESUME_KEYS)
    model = wrap_ddp(objective, info)
    metrics = MetricsWriter(output_dir / "metrics.jsonl", enabled=info.is_main, resume_step=start_step if start_step else None)
    guard = NonFiniteGuard(info.device)
    state_dim = predictor.config.state_dim

    def save(step: int) -> None:
        guard.check()
        if info.is_main:
            train_state = {"step": step, "optimizer": optimizer.state_dict(), "rng": capture_rng_state()}
            tensors = module_tensors(world_model.trained_modules())
            save_checkpoint(last, tensors, config_json, train_state)
            refresh_run_curves(output_dir)
        barrier(info)

    world_model.train()
    loss_sum = torch.zeros((), device=info.device)
    loss_count = 0
    last_loss, eval_metrics = math.nan, {}
    completed = start_step
    stop_at = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, start_step + cfg.stop_after)
    progress = tqdm(total=cfg.max_steps, initial=start_step, desc="posttrain", disable=not info.is_main or None)
    window = time.perf_counter()
    for step in range(start_step, stop_at):
        # Each (seed, step, rank) draws its own batch, so resuming reproduces the data order exactly.
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 7919 + info.rank)
        z, actions, states = train.sample(cfg.batch_size, generator)
        z, actions = z.to(info.device), actions.to(info.device)
        readout_frames = None
        if readout is not None:
            rows = readout_rows[torch.randint(len(readout_rows), (cfg.readout_batch_size,), generator=generator)]
            readout_frames = (readout_cache.latents[rows].to(info.device).float(),
                              readout.standardize(readout_cache.states[rows].to(info.device)))
        states = states.to(info.device) if state_dim else None
        lr, _ = apply_schedule(optimizer, step, optim_cfg, cfg.max_steps)
        teacher_loss, rollout_loss, readout_loss = model(z, *world_model.standardize(actions, states), readout_frames)
        loss = teacher_loss + rollout_loss + readout_loss
        guard.observe(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for module in trained.values():  # clipped apart: the readout's gradients never touch the predictor's
            clip_gradients(module.parameters(), optim_cfg.grad_clip)
        optimizer.step()
        loss_sum += loss.detach()
        loss_count += 1
        progress.update(1)
        done = completed = step + 1
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            guard.check()
            mean_loss = all_reduce_mean(loss_sum / loss_count, info).item()
            elapsed = time.perf_counter() - window
            record = {"step": done, "loss": mean_loss, "loss_teacher": teacher_loss.item(),
                      "loss_rollout": rollout_loss.item(), "lr": lr,
                      **({"loss_readout": readout_loss.item()} if readout is not None else {}),
                      "windows_per_s": loss_count * cfg.batch_size * info.world_size / max(elapsed, 1e-9)}
            if info.is_main and val is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                eval_metrics = evaluate_prediction(world_model, val, cfg.eval_horizons, cfg.eval_windows)
                if readout_val_rows is not None:
                    eval_metrics.update(evaluate_readout(readout, readout_cache, readout_val_rows))
                record.update(eval_metrics)
            metrics.write(record)
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            last_loss, loss_sum, loss_count, window = mean_loss, torch.zeros_like(loss_sum), 0, time.perf_counter()
        if done % cfg.save_every == 0 or done in (cfg.max_steps, stop_at):
            save(done)
    progress.close()
    metrics.close()
    if start_step >= cfg.max_steps:
        log.info("nothing to do: %s is already at step %d of %d", last, start_step, cfg.max_steps)
    return PosttrainResult(output_dir, completed, last_loss, eval_metrics, time.perf_counter() - started)
