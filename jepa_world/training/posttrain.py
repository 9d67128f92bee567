"""Post-training of the action-conditioned predictor on robot trajectories.

    python scripts/posttrain.py data=DIR encoder=CKPT_DIR max_steps=N output_dir=OUT [mode=end_to_end]

``mode=frozen`` (V-JEPA 2-AC): the encoder is frozen, every frame is encoded once into a feature
cache (``jepa_world.data.feature_cache``) and training draws windows of cached latents.
``mode=end_to_end`` (LeWorldModel): frames are decoded once into memory and the encoder (and, for
``world_model.latent=global``, its projector) trains jointly with the predictor; SIGReg on the
embeddings prevents collapse (``sigreg.weight``), or targets come from an EMA copy (``target=ema``).

The loss is teacher forcing over ``num_frames`` frames plus a ``rollout_steps``-step
autoregressive rollout from the first frame, computed by ``WorldModel.rollout`` itself (the
planner's rollout, on its re-run path), in ``loss`` (L1 or MSE). With a ``critic`` config a
temporal-distance critic (``jepa_world.models.critic``) learns from pairs of frames of one
trajectory how many steps apart they are; it is the planning energy of end-to-end models.
Held-out evaluation logs the prediction error against copying the last frame and a label-free
plannability diagnostic: rank correlations of latent and critic distances with the time offset
(and, diagnostic only, with true distance in ``plannability_state_dims``). AdamW with a
warmup-stable-decay schedule; DDP when launched by torchrun. ``OUT/checkpoints/last`` is a
world-model directory (``WorldModel.from_pretrained``) that also carries the train state, so a
rerun with ``resume=true`` continues exactly (a directory holding a run needs it; see
``claim_run_directory``); a non-finite loss stops the run before any checkpoint is written.
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
    load_frames,
    load_or_build_feature_cache,
)
from jepa_world.data.lerobot import DatasetFormatError, read_meta
from jepa_world.data.trajectory import split_episodes
from jepa_world.models.critic import TemporalDistanceCritic
from jepa_world.models.state_readout import StateReadout
from jepa_world.models.vit import VIT_SIZES, VisionTransformer, ViTConfig, build_encoder
from jepa_world.model_format import (
    CheckpointError,
    load_modules,
    module_tensors,
    read_config,
    read_tensors,
    read_train_state,
    remove_stale_temp_dirs,
    save_checkpoint,
)
from jepa_world.training.checkpoint import resume_from
from jepa_world.training.curves import refresh_run_curves
from jepa_world.training.ema import EMA, MomentumSchedule, make_target
from jepa_world.training.sigreg import SIGReg, SIGRegConfig, step_generator
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
    claim_run_directory,
    seed_everything,
    setup_logging,
)
from jepa_world.world_model import WorldModel, describe, split_world_model_config

log = logging.getLogger(__name__)

RANDOM_ENCODER_PREFIX = "random:"
MODES: tuple[str, ...] = ("frozen", "end_to_end")
LOSSES: tuple[str, ...] = ("l1", "mse")
TARGETS: tuple[str, ...] = ("online", "ema")
CRITIC_OFFSETS: tuple[str, ...] = ("uniform", "log")  # PairSampler's offset distributions
DEFAULT_SIGREG_WEIGHT = 0.002  # end_to_end with online targets; chosen by the sweep in docs/world_model.md
# Settings that must not change when resuming into an existing output_dir.
RESUME_KEYS: tuple[str, ...] = (
    "run.encoder", "run.num_frames", "run.frame_step", "run.action_merge", "run.rollout_steps", "run.batch_size",
    "run.state_tokens", "run.state_readout", "run.readout_batch_size", "run.readout_lr_scale", "run.seed", "run.max_steps", "run.val_fraction", "run.split_seed", "run.optim",
    "run.feature_cache_key", "run.mode", "run.loss", "run.sigreg", "run.target", "run.ema_momentum", "run.critic",
    "run.critic_pairs", "run.critic_steps", "run.critic_lr", "run.critic_offsets", "run.critic_joint_weight", "run.critic_joint_pairs", "run.encoder_lr_scale", "predictor", "world_model", "critic",
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
    resume: bool = False  # true continues output_dir's checkpoint; false needs an unused output_dir
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
    world_model: dict[str, Any] = field(default_factory=dict)  # LatentConfig and DynamicsConfig fields, flat
    optim: dict[str, Any] = field(default_factory=dict)  # OptimConfig fields
    log_every: int = 20
    eval_every: int = 500
    eval_windows: int = 256
    eval_horizons: tuple[int, ...] = (1, 5)
    save_every: int = 500
    stop_after: int | None = None  # end this invocation after this many steps (preemptible jobs); resume later
    mode: str = "frozen"  # frozen: cached features of a fixed encoder; end_to_end: the encoder trains too
    loss: str = "l1"  # prediction loss: l1 (V-JEPA 2-AC) or mse (LeWorldModel)
    sigreg: dict[str, Any] = field(default_factory=dict)  # SIGRegConfig fields; end_to_end default weight 0.002
    target: str = "online"  # end_to_end targets: online embeddings (LeWM, with SIGReg) or an EMA copy's
    ema_momentum: float = 0.996
    encoder_lr_scale: float = 1.0  # encoder (and projector) LR as a multiple of the predictor's
    # CriticConfig fields (hidden_dim, dim, depth, expectile, max_offset): train a temporal-distance
    # critic on pairs of frames of one episode; empty: no critic.
    critic: dict[str, Any] | None = None
    critic_steps: int = 2000  # critic steps after the max_steps of prediction training, on the final latents
    critic_pairs: int = 1024  # frame pairs per critic step
    critic_lr: float = 1e-3
    critic_offsets: str = "uniform"  # PairSampler offsets: uniform | log (short offsets common)
    # end_to_end: > 0 also trains the critic during the prediction steps, on frame pairs embedded with
    # gradients, so that its loss (times this weight) shapes the encoder: the latent keeps what tells
    # frames a few steps apart apart. 0: the critic only fits the final latents afterwards.
    critic_joint_weight: float = 0.0
    critic_joint_pairs: int = 64  # frame pairs per prediction step when critic_joint_weight > 0
    plannability_pairs: int = 4096  # held-out pairs for the plannability diagnostic
    plannability_state_dims: tuple[int, ...] = ()  # diagnostic only: state dims whose distance is also correlated

    def __post_init__(self) -> None:
        self.eval_horizons = tuple(int(h) for h in self.eval_horizons)
        self.plannability_state_dims = tuple(int(d) for d in self.plannability_state_dims)
        for name, value, choices in (("mode", self.mode, MODES), ("loss", self.loss, LOSSES), ("target", self.target, TARGETS)):
            if value not in choices:
                raise ValueError(f"posttrain {name}={value!r}: expected one of {list(choices)}")
        self.sigreg = {k: v for k, v in dict(self.sigreg).items() if v is not None}
        if self.mode == "frozen" and (self.sigreg or self.target != "online"):
            raise ValueError("posttrain sigreg/target shape a trained encoder; they need mode=end_to_end "
                             f"(got mode={self.mode!r}, sigreg={self.sigreg!r}, target={self.target!r})")
        if self.mode == "end_to_end" and self.state_readout.get("state_dims"):
            raise ValueError("posttrain state_readout is a frozen-encoder baseline (it reads cached encoder features); "
                             "it is not available with mode=end_to_end")
        world_model = {k: v for k, v in dict(self.world_model).items() if k not in ("trainable_encoder", "integrated_state_dims")}
        split_world_model_config(world_model, "posttrain world_model")  # unknown or invalid keys fail before any data is read
        if self.critic is not None and not isinstance(self.critic, dict):
            raise ValueError(f"posttrain critic={self.critic!r}: expected a dict of CriticConfig fields or null")
        if self.critic_offsets not in CRITIC_OFFSETS:
            raise ValueError(f"posttrain critic_offsets={self.critic_offsets!r}: choose one of {list(CRITIC_OFFSETS)}")
        if not (math.isfinite(self.critic_joint_weight) and self.critic_joint_weight >= 0):
            raise ValueError(f"posttrain critic_joint_weight={self.critic_joint_weight!r}: expected a finite number >= 0")
        if self.critic_joint_weight > 0 and (self.mode != "end_to_end" or self.critic is None):
            raise ValueError(f"posttrain critic_joint_weight={self.critic_joint_weight} trains the encoder through the "
                             f"critic: it needs mode=end_to_end and a critic (got mode={self.mode!r}, critic={self.critic!r})")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"posttrain ema_momentum={self.ema_momentum!r} must be in [0, 1)")
        if not self.encoder_lr_scale > 0 or not self.critic_lr > 0:
            raise ValueError(f"posttrain encoder_lr_scale/critic_lr must be > 0, got "
                             f"{self.encoder_lr_scale}/{self.critic_lr}")
        positive = ("max_steps", "num_frames", "frame_step", "batch_size", "rollout_steps", "log_every", "eval_every",
                    "eval_windows", "save_every", "encode_batch_size", "readout_batch_size", "critic_pairs", "critic_steps",
                    "critic_joint_pairs", "plannability_pairs")
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


def load_projector(spec: str, world_model: WorldModel) -> bool:
    """Start ``world_model``'s projector from the one in the world-model directory ``spec`` when that
    directory has a projector of the same shape (its latent encoder is ViT + projector); True if loaded."""
    if world_model.projector is None or spec.startswith(RANDOM_ENCODER_PREFIX):
        return False
    directory = Path(spec)
    saved = read_config(directory).get("world_model", {})
    latent = world_model.latent_encoder.config
    same_shape = (saved.get("latent") == "global" and saved.get("latent_dim") == latent.latent_dim
                  and saved.get("projector_hidden") == latent.projector_hidden)
    if not same_shape:  # a pretraining checkpoint, a token-latent model or another width: no weights read
        log.info("%s has no projector of this shape: the projector starts from random init", directory)
        return False
    load_modules(directory, {"projector": world_model.projector})
    log.info("loaded the projector from %s", directory)
    return True


def dataset_dims(data: str | Path, camera: str | None) -> tuple[int, int, int]:
    """(action_dim, state_dim, image height) from a dataset's meta/info.json."""
    meta = read_meta(data)
    features = meta.features
    try:
        action_dim = int(features["action"]["shape"][0])
        state_dim = int(features["observation.state"]["shape"][0])
    except (KeyError, IndexError, TypeError) as err:
        raise DatasetFormatError(f"{Path(data) / 'meta' / 'info.json'}: no action/observation.state shapes ({err})") from err
    key = meta.camera_key(camera)
    height, width = (int(v) for v in features[key]["shape"][:2])
    if height != width:
        raise DatasetFormatError(f"{data}: {key} frames are {height}x{width}; the world model expects square frames")
    return action_dim, state_dim, height


# --------------------------------------------------------------------------- objective


def prediction_error(pred: Tensor, target: Tensor, loss: str) -> Tensor:
    """Mean L1 or squared error between predicted and target latents."""
    return (pred - target).abs().mean() if loss == "l1" else (pred - target).pow(2).mean()


class PosttrainObjective(nn.Module):
    """Every post-training loss in one forward (one DDP forward per step).

    Teacher forcing (``WorldModel.predict``) plus a ``rollout_steps`` autoregressive rollout by
    ``WorldModel.rollout`` on its re-run path (the planner's rollout), in ``loss``; SIGReg on the
    embeddings when the encoder trains; the state readout's MSE when there is a readout.
    ``latents_of`` turns what the data store holds (cached latents, or uint8 frames in end-to-end
    mode) into latents. The critic trains afterwards, on the final latents (``train_critic``); with
    ``critic_joint_weight`` > 0 it also trains here, on frame pairs embedded with gradients, so that
    its loss shapes the encoder.
    """

    def __init__(self, world_model: WorldModel, rollout_steps: int, loss: str = "l1",
                 sigreg: SIGReg | None = None, target_model: nn.Module | None = None,
                 critic_joint_weight: float = 0.0):
        super().__init__()
        self.world_model = world_model
        self.rollout_steps = rollout_steps
        self.loss = loss
        self.sigreg = sigreg
        self.target_model = [target_model]  # a list: kept out of this module's parameters (EMA-updated)
        self.critic_joint_weight = critic_joint_weight

    @property
    def end_to_end(self) -> bool:
        return self.world_model.latent_encoder.config.trainable_encoder

    def latents_of(self, x: Tensor) -> Tensor:
        """(B, T, ...) store rows -> (B, T, N, D) latents (embedded with gradients in end-to-end mode)."""
        if not self.end_to_end:
            return x
        return self.world_model.embed(x.flatten(0, 1)).unflatten(0, x.shape[:2])

    def forward(self, x: Tensor, actions: Tensor, states: Tensor | None, directions: Tensor | None = None,
                readout_frames: tuple[Tensor, Tensor] | None = None,
                critic_pairs: tuple[Tensor, Tensor, Tensor] | None = None) -> dict[str, Tensor]:
        """x (B,T,...) store rows, actions (B,T-1,A) and states (B,T,S) in env units, SIGReg directions
        (D, M), readout ((F,N,D) latents, (F,K) standardised targets), joint critic pairs ((P,...) frames a,
        (P,...) frames b, (P,) steps between them) -> named losses (``total`` is their sum)."""
        wm = self.world_model
        z = self.latents_of(x)  # (B, T, N, D)
        target = z
        if self.target_model[0] is not None:
            with torch.no_grad():
                target = self.target_model[0].embed(x.flatten(0, 1)).unflatten(0, x.shape[:2])
        past_states = None if states is None else states[:, :-1]
        teacher = wm.predict(z[:, :-1], actions, past_states)  # (B, T-1, N, D)
        losses = {"teacher": prediction_error(teacher, target[:, 1:], self.loss)}
        steps = self.rollout_steps
        state0 = None if states is None else states[:, 0]
        rolled = wm.rollout(z[:, 0], state0, actions[:, :steps], use_kv_cache=False)  # (B, R, N, D)
        losses["rollout"] = prediction_error(rolled, target[:, 1 : steps + 1], self.loss)
        if self.sigreg is not None:
            losses["sigreg"] = self.sigreg.config.weight * self.sigreg(z.flatten(0, -2), directions)
        if wm.state_readout is not None:
            latents, readout_targets = readout_frames
            losses["readout"] = (wm.state_readout.forward_standardized(latents) - readout_targets).pow(2).mean()
        if critic_pairs is not None:
            frames_a, frames_b, offsets = critic_pairs
            z_a, z_b = wm.embed(torch.cat([frames_a, frames_b])).chunk(2)  # (P, N, D) each
            losses["critic"] = self.critic_joint_weight * wm.critic.loss(z_a, z_b, offsets)
        losses["total"] = sum(losses.values())
        return losses


# --------------------------------------------------------------------------- data


class PairSampler:
    """Pairs of rows of one episode at most ``max_offset`` steps apart, and their offsets (vectorised).

    ``offsets``: ``uniform`` draws the second row uniformly within ``max_offset`` of the first;
    ``log`` draws the offset k in 0..max_offset with probability about 1 / (k + 1) (log-uniform on
    k + 1), so short offsets, where the critic must be precise near a goal, are common.
    """

    def __init__(self, store: FeatureCache, episodes: list[int], max_offset: int, offsets: str = "uniform"):
        if offsets not in CRITIC_OFFSETS:
            raise ValueError(f"critic_offsets={offsets!r}: choose one of {list(CRITIC_OFFSETS)}")
        self.offsets = offsets
        rows = episode_rows(store, episodes)
        position = {int(e): i for i, e in enumerate(store.episode_index.tolist())}
        starts = torch.zeros(len(store.latents), dtype=torch.int64)
        lengths = torch.zeros(len(store.latents), dtype=torch.int64)
        for episode in episodes:
            i = position[episode]
            first, length = int(store.episode_start[i]), int(store.episode_length[i])
            starts[first : first + length], lengths[first : first + length] = first, length
        self.rows, self.starts, self.lengths, self.max_offset = rows, starts[rows], lengths[rows], max_offset

    def sample(self, count: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """-> (P,) rows a, (P,) rows b, (P,) float steps between them."""
        pick = torch.randint(len(self.rows), (count,), generator=generator)
        a, first, length = self.rows[pick], self.starts[pick], self.lengths[pick]
        position = a - first
        if self.offsets == "log":
            k = (torch.exp(torch.rand(count, generator=generator) * math.log(self.max_offset + 2)) - 1).long()
            k = k.clamp(max=self.max_offset)
            ahead, behind = length - 1 - position, position
            forward = torch.rand(count, generator=generator) < 0.5
            forward = torch.where(k > ahead, False, torch.where(k > behind, True, forward))  # the side with room
            b = a + torch.where(forward, k.clamp(max=ahead), -k.clamp(max=behind))
            return a, b, (b - a).abs().float()
        low = (position - self.max_offset).clamp(min=0)
        high = torch.minimum(position + self.max_offset, length - 1)
        b = first + low + (torch.rand(count, generator=generator) * (high - low + 1)).long().clamp(max=high - low)
        return a, b, (b - a).abs().float()


def embed_store(world_model: WorldModel, store: FeatureCache, episodes: list[int], batch_size: int = 256) -> FeatureCache:
    """The frames of ``episodes`` encoded by ``world_model`` now (inference latents, no graph): a
    latent FeatureCache of those episodes only (rows renumbered)."""
    device = next(world_model.parameters()).device
    rows = episode_rows(store, episodes)
    latents = torch.cat([world_model.encode(store.latents[part].to(device)).cpu() for part in rows.split(batch_size)])
    position = {int(e): i for i, e in enumerate(store.episode_index.tolist())}
    keep = torch.tensor([position[e] for e in episodes])
    length = store.episode_length[keep]
    return FeatureCache(path=store.path, key=store.key, latents=latents, actions=store.actions[rows],
                        states=store.states[rows], episode_index=store.episode_index[keep],
                        episode_start=torch.cumsum(length, 0) - length, episode_length=length)


def train_critic(critic: TemporalDistanceCritic, latents: FeatureCache, episodes: list[int], cfg: PosttrainConfig,
                 metrics: MetricsWriter, first_step: int) -> float:
    """Fit the temporal-distance critic on fixed latents (the encoder is final): cosine-decayed AdamW
    over ``critic_steps`` batches of pairs, seeded by ``cfg.seed`` alone so that a rerun is identical."""
    device = next(critic.parameters()).device
    pairs = PairSampler(latents, episodes, critic.config.max_offset, cfg.critic_offsets)
    z = latents.latents.to(device)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=cfg.critic_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.critic_steps)
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 17)
    critic.requires_grad_(True)
    critic.train()
    loss_sum, loss_count = torch.zeros((), device=device), 0
    for step in tqdm(range(cfg.critic_steps), desc="critic", disable=None):
        a, b, offsets = pairs.sample(cfg.critic_pairs, generator)
        loss = critic.loss(z[a], z[b], offsets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_sum += loss.detach()
        loss_count += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.critic_steps:
            mean = (loss_sum / loss_count).item()
            if not math.isfinite(mean):
                raise FloatingPointError(f"critic loss became {mean} at critic step {step + 1}; no checkpoint written")
            metrics.write({"step": first_step + step + 1, "loss_critic": mean, "critic_lr": schedule.get_last_lr()[0]})
            loss_sum, loss_count = torch.zeros_like(loss_sum), 0
    critic.requires_grad_(False)
    critic.eval()
    return mean


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_prediction(
    world_model: WorldModel, sampler: WindowSampler, horizons: tuple[int, ...], max_windows: int, seed: int = 0
) -> dict[str, float]:
    """Held-out latent error of ``WorldModel.rollout`` at each horizon h vs the copy-last-frame baseline.

    From frame t of a held-out window, roll out h steps with the true actions (states advanced by the
    world model's own rule, as in planning) and compare to the encoded frame t+h. The baseline
    predicts z_{t+h} = z_t. ``ratio_h`` is the L1 ratio, ``ratio_mse_h`` the squared-error ratio.
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
        mse = (predicted[:, h - 1] - z[:, h]).pow(2).mean().item()
        out[f"ratio_mse_h{h}"] = mse / max((z[:, 0] - z[:, h]).pow(2).mean().item(), 1e-12)
    return out


def spearman(a: Tensor, b: Tensor) -> float:
    """Rank correlation of two (P,) tensors (ties broken by order; fine for continuous values)."""
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    ranks = [r - r.mean() for r in ranks]
    return float((ranks[0] @ ranks[1]) / (ranks[0].norm() * ranks[1].norm()).clamp(min=1e-12))


@torch.no_grad()
def evaluate_plannability(world_model: WorldModel, latents: FeatureCache, episodes: list[int], pairs: int,
                          max_offset: int, state_dims: tuple[int, ...] = (), seed: int = 0) -> dict[str, float]:
    """Label-free plannability of held-out latents: Spearman correlation of the latent distance (and
    of the critic, if any) with the number of steps between two frames of one episode. With
    ``state_dims`` (a diagnostic that reads state labels) also with the true distance of random pairs."""
    generator = torch.Generator().manual_seed(seed)
    a, b, offsets = PairSampler(latents, episodes, max_offset).sample(pairs, generator)
    device = next(world_model.predictor.parameters()).device
    z = latents.latents.to(device)
    critic = world_model.critic
    if critic is not None:
        was_training = critic.training
        critic.eval()

    def distances(rows_a: Tensor, rows_b: Tensor) -> dict[str, Tensor]:
        out = {"latent": (z[rows_a] - z[rows_b]).pow(2).mean(dim=(-2, -1)).cpu()}
        if critic is not None:
            out["critic"] = critic.distance(z[rows_a], z[rows_b]).cpu()
        return out

    result = {f"plan_spearman_{name}_vs_steps": spearman(d, offsets) for name, d in distances(a, b).items()}
    if state_dims:
        rows = episode_rows(latents, episodes)
        ra, rb = (rows[torch.randint(len(rows), (pairs,), generator=generator)] for _ in range(2))
        true = (latents.states[ra][:, list(state_dims)] - latents.states[rb][:, list(state_dims)]).norm(dim=-1)
        for name, d in distances(ra, rb).items():
            result[f"plan_spearman_{name}_vs_state"] = spearman(d, true)
    if critic is not None:
        critic.train(was_training)
    return result


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


def effective_rank(z: Tensor) -> float:
    """exp(entropy) of the normalised singular values of (P, D) centred embeddings (RankMe)."""
    singular = torch.linalg.svdvals(z - z.mean(0))
    p = singular / singular.sum().clamp(min=1e-12)
    return float(torch.exp(-(p * (p + 1e-12).log()).sum()))


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


def _checkpoint_config(world_model: WorldModel, cfg: PosttrainConfig, cache_key: str) -> dict[str, Any]:
    config = {**world_model.config_dict(), "run": {**asdict(cfg), "feature_cache_key": cache_key}}
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
    elif wm_fields.get("integrated_state_dims") is None:  # the robot fact comes with the data
        recorded = read_meta(cfg.data).action_state_map
        if recorded is None:
            log.info("%s records no action_state_map: rollout states are held (set world_model."
                     "integrated_state_dims to integrate displacement actions)", cfg.data)
        wm_fields["integrated_state_dims"] = recorded or ()
    wm_fields["trainable_encoder"] = cfg.mode == "end_to_end"
    latent_config, dynamics_config = split_world_model_config(wm_fields, "posttrain world_model")
    torch.manual_seed(seed)
    world_model = WorldModel.create(encoder, action_dim, predictor_state_dim, latent_config, dynamics_config, img_size=img_size,
                                    state_readout=dict(cfg.state_readout) if cfg.state_readout.get("state_dims") else None,
                                    critic=None if cfg.critic is None else dict(cfg.critic), **cfg.predictor)
    load_projector(cfg.encoder, world_model)
    return world_model, action_dim, state_dim


def _load_store(cfg: PosttrainConfig, world_model: WorldModel, info) -> FeatureCache:
    """What training windows are drawn from: decoded frames (end to end) or the frozen encoder's features.
    Rank 0 builds a feature cache first; the others wait, then read it."""
    if cfg.mode == "end_to_end":
        return load_frames(cfg.data, cfg.camera)
    cache_args = dict(cache_dir=cfg.feature_cache, cache_root=cfg.feature_cache_root, camera=cfg.camera,
                      batch_size=cfg.encode_batch_size)
    if info.is_main:
        cache = load_or_build_feature_cache(world_model.latent_encoder, cfg.data, **cache_args)
    barrier(info)
    if not info.is_main:
        cache = load_or_build_feature_cache(world_model.latent_encoder, cfg.data, **cache_args)
    return cache


def run_posttrain(cfg: PosttrainConfig) -> PosttrainResult:
    """Train; ``resume=true`` continues ``output_dir/checkpoints/last`` (``claim_run_directory`` says
    when a directory may be used). Under torchrun the caller ends the process group with
    ``finish_distributed`` after using the result."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    info = init_distributed(cfg.device)
    started = time.perf_counter()
    output_dir = Path(cfg.output_dir)
    resume_dir = claim_run_directory(output_dir, cfg.resume, info.is_main)
    setup_logging(output_dir, info.is_main)
    seed_everything(cfg.seed)
    world_model, action_dim, _ = _build_world_model(cfg, cfg.seed)
    world_model.to(info.device)
    log.info("%s (%s)", describe(world_model), cfg.mode)
    end_to_end = cfg.mode == "end_to_end"

    store = _load_store(cfg, world_model, info)
    if store.action_dim != action_dim:
        raise ValueError(f"data store {store.path} has action dim {store.action_dim}, the model {action_dim}")
    readout_cache = None
    if world_model.state_readout is not None:  # the readout reads its own (finer) token grid: a second cache
        readout_args = dict(cache_dir=None, cache_root=cfg.feature_cache_root, camera=cfg.camera,
                            batch_size=cfg.encode_batch_size)
        if info.is_main:
            readout_cache = load_or_build_feature_cache(world_model.readout_encoder(), cfg.data, **readout_args)
        barrier(info)
        if not info.is_main:
            readout_cache = load_or_build_feature_cache(world_model.readout_encoder(), cfg.data, **readout_args)
    episodes = [int(e) for e in store.episode_index.tolist()]
    train_eps = split_episodes(episodes, "train", cfg.val_fraction, cfg.split_seed)
    val_eps = split_episodes(episodes, "val", cfg.val_fraction, cfg.split_seed) if cfg.val_fraction > 0 else []
    train = WindowSampler(store, train_eps, cfg.num_frames, cfg.frame_step, cfg.action_merge)
    eval_frames = max(cfg.eval_horizons) + 1
    log.info("%d train windows (%d episodes), %d val episodes", len(train), len(train_eps), len(val_eps))
    critic = world_model.critic
    joint_pairs = None
    if critic is not None and cfg.critic_joint_weight > 0:  # trains with the encoder, then again afterwards
        joint_pairs = PairSampler(store, train_eps, critic.config.max_offset, cfg.critic_offsets)
    elif critic is not None:  # trained after the prediction steps (train_critic), by its own optimizer
        critic.requires_grad_(False)

    statistics = input_statistics(store, train_eps)
    world_model.dynamics.set_input_statistics(*statistics)
    predictor, readout = world_model.predictor, world_model.state_readout
    if readout is not None:
        dims = list(readout.config.state_dims)
        if max(dims) >= store.states.shape[-1]:
            raise ValueError(f"state_readout.state_dims={dims} but the dataset's states have {store.states.shape[-1]} dims")
        readout.set_statistics(statistics[2][dims], statistics[3][dims])
    sigreg_cfg = SIGRegConfig(**{"weight": DEFAULT_SIGREG_WEIGHT if end_to_end and cfg.target == "online" else 0.0,
                                 **cfg.sigreg})
    sigreg = SIGReg(sigreg_cfg).to(info.device) if sigreg_cfg.enabled else None
    target_model, ema = None, None
    if cfg.target == "ema":
        target_model = make_target(world_model.latent_encoder)
        ema = EMA(world_model.latent_encoder, target_model, MomentumSchedule(start=cfg.ema_momentum, end=cfg.ema_momentum))
    objective = PosttrainObjective(world_model, cfg.rollout_steps, cfg.loss, sigreg, target_model, cfg.critic_joint_weight)
    optim_cfg = OptimConfig(**{"schedule": "wsd", "lr": 4.25e-4, "warmup_steps": min(100, cfg.max_steps // 10),
                               "grad_clip": 1.0, **cfg.optim})
    trained = {name: m for name, m in world_model.trained_modules().items() if end_to_end or name != "encoder"}
    lr_scales = {"world_model.state_readout.": cfg.readout_lr_scale, "world_model.latent_encoder.": cfg.encoder_lr_scale}
    optimizer = build_optimizer(objective, optim_cfg, lr_scales)
    readout_rows = episode_rows(readout_cache, train_eps) if readout is not None else None
    readout_val_rows = episode_rows(readout_cache, val_eps) if readout is not None and val_eps else None
    config_json = _checkpoint_config(world_model, cfg, store.key)

    last = output_dir / "checkpoints" / "last"
    start_step = 0
    if info.is_main:
        remove_stale_temp_dirs(last.parent)
    barrier(info)
    if resume_dir is not None:
        start_step = resume_from(resume_dir, trained, optimizer, config_json, RESUME_KEYS, info.world_size)
        if target_model is not None:
            target_model.load_state_dict(read_train_state(last)["ema_target"])
    model = wrap_ddp(objective, info)
    metrics = MetricsWriter(output_dir / "metrics.jsonl", enabled=info.is_main, resume_step=start_step if start_step else None)
    guard = NonFiniteGuard(info.device)
    state_dim = predictor.config.state_dim

    def save(step: int) -> None:
        guard.check()
        if info.is_main:
            train_state = {"step": step, "world_size": info.world_size, "optimizer": optimizer.state_dict(),
                           "rng": capture_rng_state()}
            if target_model is not None:
                train_state["ema_target"] = {k: v.detach().cpu() for k, v in target_model.state_dict().items()}
            tensors = module_tensors(world_model.trained_modules())
            save_checkpoint(last, tensors, config_json, train_state)
            refresh_run_curves(output_dir)
        barrier(info)

    def evaluate() -> dict[str, float]:
        latents = embed_store(world_model, store, val_eps, cfg.encode_batch_size) if end_to_end else store
        result = evaluate_prediction(world_model, WindowSampler(latents, val_eps, eval_frames, cfg.frame_step,
                                                                cfg.action_merge), cfg.eval_horizons, cfg.eval_windows)
        result.update(evaluate_plannability(world_model, latents, val_eps, cfg.plannability_pairs,
                                            critic.config.max_offset if critic is not None else 49,
                                            cfg.plannability_state_dims))
        held_out = latents.latents[episode_rows(latents, val_eps)].flatten(1)  # (F, N*D)
        result["effective_rank"] = effective_rank(held_out)
        result["embedding_std"] = held_out.std(0).mean().item()  # -> 0 as the embedding collapses
        if readout_val_rows is not None:
            result.update(evaluate_readout(readout, readout_cache, readout_val_rows))
        return result

    world_model.train()
    loss_sum = torch.zeros((), device=info.device)
    loss_count = 0
    last_loss, eval_metrics = math.nan, {}
    completed = start_step
    main_start = min(start_step, cfg.max_steps)
    stop_at = cfg.max_steps if cfg.stop_after is None else min(cfg.max_steps, main_start + cfg.stop_after)
    progress = tqdm(total=cfg.max_steps, initial=main_start, desc="posttrain", disable=not info.is_main or None)
    window = time.perf_counter()
    for step in range(main_start, stop_at):
        # Each (seed, step, rank) draws its own batch, so resuming reproduces the data order exactly.
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 7919 + info.rank)
        x, actions, states = train.sample(cfg.batch_size, generator)
        x, actions = x.to(info.device), actions.to(info.device)
        readout_frames = directions = critic_pairs = None
        if readout is not None:
            rows = readout_rows[torch.randint(len(readout_rows), (cfg.readout_batch_size,), generator=generator)]
            readout_frames = (readout_cache.latents[rows].to(info.device).float(),
                              readout.standardize(readout_cache.states[rows].to(info.device)))
        if joint_pairs is not None:
            a, b, offsets = joint_pairs.sample(cfg.critic_joint_pairs, generator)
            critic_pairs = (store.latents[a].to(info.device), store.latents[b].to(info.device), offsets.to(info.device))
        if sigreg is not None:
            directions = sigreg.sample_directions(world_model.latent_dim, step_generator(cfg.seed, step)).to(info.device)
        states = states.to(info.device) if state_dim else None
        lr, _ = apply_schedule(optimizer, step, optim_cfg, cfg.max_steps)
        losses = model(x, actions, states, directions, readout_frames, critic_pairs)
        loss = losses["total"]
        guard.observe(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for module in trained.values():  # clipped apart: the heads' gradients never touch the predictor's
            clip_gradients(module.parameters(), optim_cfg.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update(step)
        loss_sum += loss.detach()
        loss_count += 1
        progress.update(1)
        done = completed = step + 1
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            guard.check()
            mean_loss = all_reduce_mean(loss_sum / loss_count, info).item()
            elapsed = time.perf_counter() - window
            record = {"step": done, "loss": mean_loss, "lr": lr,
                      **{f"loss_{name}": value.item() for name, value in losses.items() if name != "total"},
                      "windows_per_s": loss_count * cfg.batch_size * info.world_size / max(elapsed, 1e-9)}
            if info.is_main and val_eps and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                eval_metrics = evaluate()
                record.update(eval_metrics)
            metrics.write(record)
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            last_loss, loss_sum, loss_count, window = mean_loss, torch.zeros_like(loss_sum), 0, time.perf_counter()
        if done % cfg.save_every == 0 or done in (cfg.max_steps, stop_at):
            save(done)
    progress.close()
    total_steps = cfg.max_steps + (cfg.critic_steps if critic is not None else 0)
    if critic is not None and completed == cfg.max_steps:
        # The step count says whether the critic is done: a checkpoint at max_steps has not trained it yet.
        if info.is_main:
            latents = embed_store(world_model, store, train_eps, cfg.encode_batch_size) if end_to_end else store
            last_loss = train_critic(critic, latents, train_eps, cfg, metrics, cfg.max_steps)
            record = {"step": total_steps}
            if val_eps:
                eval_metrics = evaluate()
                record.update(eval_metrics)
            metrics.write(record)
        completed = total_steps
        save(completed)
    metrics.close()
    if start_step >= total_steps:
        log.info("nothing to do: %s is already at step %d of %d", last, start_step, total_steps)
    return PosttrainResult(output_dir, completed, last_loss, eval_metrics, time.perf_counter() - started)
