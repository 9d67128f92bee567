"""World-model API: an encoder (frozen, or trained end to end) plus an action-conditioned predictor.

The verbs planners and users call::

    wm = WorldModel.from_pretrained(dir)
    z = wm.encode(frames)                          # (B,3,H,W) or (B,H,W,3) -> (B, N, D)
    z_next = wm.predict(z_hist, actions, states)   # teacher-forced, step t predicts t+1
    z_future = wm.rollout(z0, state0, actions)     # (S, H, N, D), KV-cached
    ee_goal = wm.decode_state(goal_frames)         # (B, K) state dims, if post-trained with a readout
    steps = wm.critic.distance(z, z_goal)          # (B,) temporal distance, if post-trained with a critic
    wm.save_pretrained(dir)

Latent space. ``encode`` feeds each frame as a ``tubelet_size``-frame clip of the repeated
image (as V-JEPA 2 does), optionally average-pools the token grid by ``latent_pool``
(planning cost scales with tokens per frame), then applies a parameter-free layer norm
over channels (``normalize_latents``). Predictions are layer-normed the same way, so
predicted and encoded latents live in one space and an L1 distance between them is the
V-JEPA 2-AC planning energy.

Latent kinds. ``latent="tokens"`` (V-JEPA 2-AC) keeps the (pooled) patch-token grid;
``latent="global"`` (LeWorldModel) mean-pools the tokens and maps them through a ``Projector`` to
one ``latent_dim`` embedding per frame, N = 1, not layer-normed (SIGReg shapes it instead).
``trainable_encoder=True`` marks a model post-trained end to end: ``embed`` keeps the graph for
training, ``encode`` is its no-grad form for planning.

Pixels. uint8 frames are scaled to [0, 1] and normalised with ``pixel_mean``/``pixel_std``
(ImageNet statistics by default, as V-JEPA 2). Float frames are taken as already normalised.

States during rollout. The robot state is not observed in imagination, so it is advanced
by a rule: ``state_update="integrate"`` adds action dim i to state dim
``integrated_state_dims[i]`` (displacement actions moving the end-effector part of the
state, as in V-JEPA 2-AC); ``"hold"`` keeps the initial state. Predictors with
``state_dim == 0`` need no states at all.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_world.models.ac_predictor import ACPredictor, ACPredictorConfig, layer_norm_tokens
from jepa_world.models.critic import CriticConfig, TemporalDistanceCritic
from jepa_world.models.projector import Projector
from jepa_world.models.state_readout import StateReadout, StateReadoutConfig
from jepa_world.models.vit import ViTConfig, VisionTransformer
from jepa_world.model_format import CheckpointError, load_modules, module_tensors, read_config, save_checkpoint

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_UPDATES: tuple[str, ...] = ("integrate", "hold")
CONFIG_SECTIONS: tuple[str, ...] = ("encoder", "predictor", "world_model")  # plus "state_readout"/"critic" when present
LATENT_KINDS: tuple[str, ...] = ("tokens", "global")


@dataclass
class WorldModelConfig:
    latent: str = "tokens"  # "tokens": the patch-token grid; "global": one projected embedding per frame
    latent_dim: int = 64  # global latents: the projector's output width
    projector_hidden: int = 512  # global latents: the projector's hidden width
    trainable_encoder: bool = False  # post-trained end to end (the encoder is part of what is trained)
    latent_pool: int = 1  # average-pool the encoder's token grid by this factor per side
    normalize_latents: bool = True  # parameter-free layer norm on encoded and predicted tokens
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    state_update: str = "integrate"
    integrated_state_dims: tuple[int, ...] = ()  # state dim moved by action dim i; () -> state held
    rollout_chunk: int = 0  # run rollout samples in chunks of this size (0: all at once)
    # Predictor inputs are standardised, (x - mean) / std per dim, so that 5 cm displacements and
    # joint angles reach it at unit scale; empty tuples mean identity. Set by posttrain from the
    # training split; callers always pass raw env units.
    action_mean: tuple[float, ...] = ()
    action_std: tuple[float, ...] = ()
    state_mean: tuple[float, ...] = ()
    state_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        self.integrated_state_dims = tuple(int(v) for v in self.integrated_state_dims)
        for name in ("action_mean", "action_std", "state_mean", "state_std"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        for kind in ("action", "state"):
            mean, std = getattr(self, f"{kind}_mean"), getattr(self, f"{kind}_std")
            if len(mean) != len(std) or (std and min(std) <= 0):
                raise ValueError(f"{kind}_mean/{kind}_std must have equal lengths and std > 0, got {mean}/{std}")
        if self.latent not in LATENT_KINDS:
            raise ValueError(f"WorldModelConfig.latent={self.latent!r}; expected one of {LATENT_KINDS}")
        if self.latent_dim < 1 or self.projector_hidden < 1:
            raise ValueError(f"WorldModelConfig.latent_dim/projector_hidden must be >= 1, got "
                             f"{self.latent_dim}/{self.projector_hidden}")
        if self.latent == "global" and self.normalize_latents:
            raise ValueError("WorldModelConfig.latent='global' needs normalize_latents=false: the projected "
                             "embedding is shaped by SIGReg, and a layer norm over it would undo that")
        if self.latent_pool < 1:
            raise ValueError(f"WorldModelConfig.latent_pool must be >= 1, got {self.latent_pool}")
        if self.state_update not in STATE_UPDATES:
            raise ValueError(f"WorldModelConfig.state_update={self.state_update!r}; expected one of {STATE_UPDATES}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(f"pixel_mean/pixel_std must be 3 values (std > 0), got {self.pixel_mean}/{self.pixel_std}")
        if self.rollout_chunk < 0:
            raise ValueError(f"WorldModelConfig.rollout_chunk must be >= 0, got {self.rollout_chunk}")


def _dataclass_from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(known)}")
    return cls(**values)


class WorldModel(nn.Module):
    def __init__(self, encoder: VisionTransformer, predictor: ACPredictor, config: WorldModelConfig | None = None,
                 state_readout: StateReadout | None = None, critic: TemporalDistanceCritic | None = None):
        super().__init__()
        self.encoder = encoder
        self.config = config or WorldModelConfig()
        c, pc = self.config, predictor.config
        self.projector = Projector(encoder.embed_dim, c.projector_hidden, c.latent_dim) if c.latent == "global" else None
        self.predictor = predictor
        self.state_readout = state_readout
        self.critic = critic
        if pc.encoder_dim != self.latent_dim:
            raise ValueError(f"predictor encoder_dim={pc.encoder_dim} but the {c.latent} latent is {self.latent_dim} wide")
        if c.latent == "global" and pc.frame_tokens != 1:
            raise ValueError(f"global latents are one token per frame; the predictor expects grid {pc.grid_hw}")
        if critic is not None and (critic.config.frame_tokens, critic.config.latent_dim) != (pc.frame_tokens, self.latent_dim):
            raise ValueError(f"critic reads ({critic.config.frame_tokens}, {critic.config.latent_dim}) latents but this "
                             f"world model's are ({pc.frame_tokens}, {self.latent_dim})")
        if state_readout is not None:
            rc = state_readout.config
            grid = encoder.cfg.img_size // encoder.cfg.patch_size
            if (rc.frame_tokens, rc.dim) != ((grid // rc.latent_pool) ** 2, encoder.embed_dim):
                raise ValueError(f"state readout reads ({rc.frame_tokens}, {rc.dim}) latents but the encoder's "
                                 f"{grid}x{grid} grid pooled by {rc.latent_pool} gives "
                                 f"({(grid // rc.latent_pool) ** 2}, {encoder.embed_dim})")
            if len(rc.state_dims) > pc.action_dim:
                raise ValueError(f"state readout dims {rc.state_dims} need one action dim each; action_dim={pc.action_dim}")
        if c.integrated_state_dims and c.state_update == "integrate":
            if len(c.integrated_state_dims) > pc.action_dim:
                raise ValueError(
                    f"integrated_state_dims {c.integrated_state_dims} lists more dims than action_dim={pc.action_dim}"
                )
            if pc.state_dim == 0 or max(c.integrated_state_dims) >= pc.state_dim or min(c.integrated_state_dims) < 0:
                raise ValueError(
                    f"integrated_state_dims {c.integrated_state_dims} must index a state of dim {pc.state_dim}"
                )
        for kind, dim in (("action", pc.action_dim), ("state", pc.state_dim)):
            mean, std = getattr(c, f"{kind}_mean"), getattr(c, f"{kind}_std")
            if mean and len(mean) != dim:
                raise ValueError(f"{kind}_mean/{kind}_std have {len(mean)} values but the predictor's {kind}_dim is {dim}")
            self.register_buffer(f"{kind}_mean", torch.tensor(mean or [0.0] * dim), persistent=False)
            self.register_buffer(f"{kind}_std", torch.tensor(std or [1.0] * dim), persistent=False)
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, 3, 1, 1), persistent=False)
        if not c.trainable_encoder:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    @property
    def latent_dim(self) -> int:
        """D of one latent token: the projector's width for global latents, else the encoder's."""
        return self.config.latent_dim if self.config.latent == "global" else self.encoder.embed_dim

    @classmethod
    def create(
        cls,
        encoder: VisionTransformer,
        action_dim: int,
        state_dim: int = 0,
        config: WorldModelConfig | None = None,
        img_size: int | None = None,
        state_readout: dict[str, Any] | None = None,
        critic: dict[str, Any] | None = None,
        **predictor_fields: Any,
    ) -> WorldModel:
        """Build a fresh predictor (and projector, critic) sized for ``encoder`` at ``img_size``
        (default: the encoder's). ``critic``: CriticConfig fields other than the latent shape; None = none."""
        config = config or WorldModelConfig()
        img_size = img_size or encoder.cfg.img_size
        grid = img_size // encoder.cfg.patch_size
        if img_size % encoder.cfg.patch_size or grid % config.latent_pool:
            raise ValueError(
                f"img_size {img_size} / patch_size {encoder.cfg.patch_size} = grid {grid} must divide by "
                f"latent_pool {config.latent_pool}"
            )
        pooled = grid // config.latent_pool
        if config.latent == "global":  # one token per frame
            latent_dim, pooled, grid = config.latent_dim, 1, 1
        else:
            latent_dim = encoder.embed_dim
        predictor_config = ACPredictorConfig(
            encoder_dim=latent_dim,
            action_dim=action_dim,
            state_dim=state_dim,
            grid_hw=(pooled, pooled),
            rope_grid_hw=(grid, grid),
            **predictor_fields,
        )
        readout = None
        if state_readout:  # StateReadoutConfig fields other than the latent shape
            readout_grid = img_size // encoder.cfg.patch_size // state_readout.get("latent_pool", 1)
            readout = StateReadout(StateReadoutConfig(frame_tokens=readout_grid**2, dim=encoder.embed_dim, **state_readout))
        value_critic = None
        if critic is not None:
            value_critic = TemporalDistanceCritic(
                CriticConfig(latent_dim=latent_dim, frame_tokens=predictor_config.frame_tokens, **critic))
        return cls(encoder, ACPredictor(predictor_config), config, readout, value_critic)

    # ------------------------------------------------------------------ encode
    def train(self, mode: bool = True) -> WorldModel:
        super().train(mode)
        if not self.config.trainable_encoder:
            self.encoder.eval()  # frozen: never in training mode
        return self

    def normalize_pixels(self, frames: Tensor) -> Tensor:
        """(B,3,H,W) or (B,H,W,3) uint8, or normalised float (B,3,H,W) -> normalised float (B,3,H,W)."""
        if frames.dim() != 4:
            raise ValueError(f"frames must be a batch (B,3,H,W) or (B,H,W,3), got shape {tuple(frames.shape)}")
        if frames.dtype == torch.uint8:
            if frames.shape[1] != 3 and frames.shape[-1] == 3:
                frames = frames.permute(0, 3, 1, 2)
            x = frames.to(self.pixel_mean.dtype) / 255.0
            x = (x - self.pixel_mean) / self.pixel_std
        elif frames.is_floating_point():
            x = frames.to(self.pixel_mean.dtype)
        else:
            raise ValueError(f"frames must be uint8 or float, got {frames.dtype}")
        if x.shape[1] != 3:
            raise ValueError(f"frames must have 3 channels at dim 1 (or last dim for uint8), got {tuple(frames.shape)}")
        return x

    def pool_and_normalize(self, tokens: Tensor, grid_hw: tuple[int, int], pool: int | None = None) -> Tensor:
        """(B, h*w, D) encoder tokens -> (B, N, D) predictor-space latents (pooled by ``pool``, default
        the world model's ``latent_pool``)."""
        p = self.config.latent_pool if pool is None else pool
        if p > 1:
            h, w = grid_hw
            if h % p or w % p:
                raise ValueError(f"token grid {h}x{w} is not divisible by latent_pool={p}")
            grid = tokens.transpose(1, 2).unflatten(2, (h, w))  # (B, D, h, w)
            tokens = F.avg_pool2d(grid, p).flatten(2).transpose(1, 2)  # (B, h*w/p^2, D)
        return layer_norm_tokens(tokens) if self.config.normalize_latents else tokens

    def embed(self, frames: Tensor) -> Tensor:
        """Frames -> latents (B, N, D), keeping the graph (end-to-end training)."""
        x = self.normalize_pixels(frames.to(self.pixel_mean.device))
        tokens = self.encoder(x)  # (B, h*w, D_enc)
        if self.projector is not None:
            return self.projector(tokens)  # (B, 1, latent_dim)
        _, h, w = self.encoder.grid_shape(x.shape)
        return self.pool_and_normalize(tokens, (h, w))

    @torch.no_grad()
    def encode(self, frames: Tensor, pool: int | None = None) -> Tensor:
        """Frames -> latents (B, N, D) with no graph kept (planning, feature caches). ``pool`` reads the
        (token-grid) encoder at another pooling (the state readout reads a finer grid).

        Always the inference latent, even on a model in training mode: the projector's BatchNorm
        uses its running statistics and leaves them untouched, so a cache or a critic built from
        ``encode`` sees the latents the planner will see.
        """
        if pool is not None:
            x = self.normalize_pixels(frames.to(self.pixel_mean.device))
            _, h, w = self.encoder.grid_shape(x.shape)
            return self.pool_and_normalize(self.encoder(x), (h, w), pool)
        was_training = self.training
        self.eval()
        try:
            z = self.embed(frames)
        finally:
            self.train(was_training)
        expected = self.predictor.config.frame_tokens
        if z.shape[1] != expected:
            raise ValueError(
                f"frames of size {tuple(frames.shape[-2:])} give {z.shape[1]} latent tokens, but the predictor expects "
                f"{expected} (grid {self.predictor.config.grid_hw}); resize frames to the training resolution"
            )
        return z

    # ------------------------------------------------------------------ predict
    def _finish(self, z: Tensor) -> Tensor:
        return layer_norm_tokens(z) if self.config.normalize_latents else z

    def set_input_statistics(self, action_mean: Tensor, action_std: Tensor, state_mean: Tensor | None = None,
                             state_std: Tensor | None = None) -> None:
        """Record dataset statistics used to standardise predictor inputs (kept in config.json)."""
        updates = {"action_mean": action_mean, "action_std": action_std}
        if self.predictor.config.state_dim:
            updates.update(state_mean=state_mean, state_std=state_std)
        for name, value in updates.items():
            buffer = getattr(self, name)
            if value is None or value.shape != buffer.shape:
                raise ValueError(f"{name} must have shape {tuple(buffer.shape)}, got {None if value is None else tuple(value.shape)}")
            buffer.copy_(value)
            setattr(self.config, name, tuple(float(v) for v in value.tolist()))

    def standardize(self, actions: Tensor, states: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Raw env-unit actions/states -> the predictor's standardised inputs."""
        actions = (actions - self.action_mean) / self.action_std
        if states is not None and self.predictor.config.state_dim:
            states = (states - self.state_mean) / self.state_std
        return actions, states

    def predict(self, z_hist: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """Teacher-forced: (B,T,N,D), (B,T,A), (B,T,S) raw units -> (B,T,N,D); output t predicts frame t+1."""
        return self._finish(self.predictor(z_hist, *self.standardize(actions, states)))

    def next_states(self, states: Tensor, actions: Tensor) -> Tensor:
        """Advance (..., S) states by (..., A) actions with the configured rule (vectorised)."""
        dims = self.config.integrated_state_dims
        if self.config.state_update == "hold" or not dims:
            return states
        index = torch.tensor(dims, device=states.device)
        return states.index_add(-1, index, actions[..., : len(dims)].to(states.dtype))

    def _check_rollout(self, z0: Tensor, state0: Tensor | None, actions: Tensor, context_actions: Tensor | None):
        pc = self.predictor.config
        if z0.dim() == 3:
            z0 = z0.unsqueeze(1)
        if z0.dim() != 4:
            raise ValueError(f"z0 must be (S,N,D) or (S,T0,N,D), got {tuple(z0.shape)}")
        if actions.dim() != 3 or actions.shape[-1] != pc.action_dim:
            raise ValueError(f"actions must be (S, H, action_dim={pc.action_dim}), got {tuple(actions.shape)}")
        samples, context = actions.shape[0], z0.shape[1]
        if z0.shape[0] not in (1, samples):
            raise ValueError(f"z0 batch {z0.shape[0]} must be 1 or the number of action samples {samples}")
        if pc.state_dim:
            if state0 is None:
                raise ValueError(f"this world model uses states (state_dim={pc.state_dim}); pass state0")
            if state0.dim() == 2:
                state0 = state0.unsqueeze(1)
            if state0.dim() != 3 or state0.shape[1] != context or state0.shape[0] not in (1, samples):
                raise ValueError(
                    f"state0 must be (S, {pc.state_dim}) or (S, T0={context}, {pc.state_dim}), got {tuple(state0.shape)}"
                )
        if context > 1:
            expected = (context - 1, pc.action_dim)
            if context_actions is None or context_actions.dim() != 3 or context_actions.shape[1:] != expected:
                got = None if context_actions is None else tuple(context_actions.shape)
                raise ValueError(
                    f"a {context}-frame context needs context_actions (S or 1, {expected[0]}, {expected[1]}), got {got}"
                )
            if context_actions.shape[0] not in (1, samples):
                raise ValueError(f"context_actions batch {context_actions.shape[0]} must be 1 or {samples}")
        return z0, state0

    def rollout(
        self,
        z0: Tensor,
        state0: Tensor | None,
        actions: Tensor,
        context_actions: Tensor | None = None,
        use_kv_cache: bool = True,
    ) -> Tensor:
        """Imagine H steps for S action sequences: -> (S, H, N, D) predicted latents of frames 1..H.

        z0 (S or 1, N, D) or (S or 1, T0, N, D) context latents; state0 (S or 1, Ds) or
        (S or 1, T0, Ds) (None when state_dim == 0); actions (S, H, A); context_actions
        (S or 1, T0-1, A), the actions taken between context frames. With the KV cache, the
        context's earlier steps are run once (at batch 1 when shared) and each horizon step only
        runs its own tokens; ``use_kv_cache=False`` re-runs the whole history every step.
        """
        z0, state0 = self._check_rollout(z0, state0, actions, context_actions)
        chunk = self.config.rollout_chunk
        samples = actions.shape[0]
        if chunk and samples > chunk:
            pieces = []
            for start in range(0, samples, chunk):
                part = slice(start, start + chunk)
                pieces.append(
                    self._rollout(
                        _rows(z0, part), _rows(state0, part), actions[part], _rows(context_actions, part), use_kv_cache
                    )
                )
            return torch.cat(pieces)
        return self._rollout(z0, state0, actions, context_actions, use_kv_cache)

    def _rollout(self, z0, state0, actions, context_actions, use_kv_cache: bool) -> Tensor:
        if not use_kv_cache:
            return self._rollout_naive(z0, state0, actions, context_actions)
        samples, horizon = actions.shape[:2]
        context = z0.shape[1]
        # Context steps before the last one have known actions: run them once, at batch 1 if shared.
        shared = all(x is None or x.shape[0] == 1 for x in (z0, state0, context_actions))
        cache_batch = 1 if shared and context > 1 else samples
        cache = self.predictor.new_cache(cache_batch, context + horizon - 1, z0)
        if context > 1:
            prefix_states = None if state0 is None else state0[:, :-1].expand(cache_batch, -1, -1)
            prefix_z = z0[:, :-1].expand(cache_batch, -1, -1, -1)
            prefix = self.standardize(context_actions.expand(cache_batch, -1, -1), prefix_states)
            self.predictor.forward_cached(prefix_z, *prefix, cache)
            if cache_batch != samples:
                cache = cache.expand_batch(samples, cache.capacity)
        state = None if state0 is None else state0[:, -1].expand(samples, -1)  # (S, Ds)
        z = z0[:, -1:].expand(samples, -1, -1, -1)  # (S, 1, N, D)
        outputs = []
        for step in range(horizon):
            action = actions[:, step : step + 1]  # (S, 1, A)
            step_state = None if state is None else state.unsqueeze(1)
            z = self._finish(self.predictor.forward_cached(z, *self.standardize(action, step_state), cache))  # (S,1,N,D)
            outputs.append(z)
            if state is not None:
                state = self.next_states(state, action[:, 0])
        return torch.cat(outputs, dim=1)

    def _rollout_naive(self, z0, state0, actions, context_actions) -> Tensor:
        samples, horizon = actions.shape[:2]
        context = z0.shape[1]
        z_hist = z0.expand(samples, -1, -1, -1)
        past_actions = actions[:, :0] if context == 1 else context_actions.expand(samples, -1, -1)
        states = None if state0 is None else state0.expand(samples, -1, -1)
        outputs = []
        for step in range(horizon):
            step_actions = torch.cat([past_actions, actions[:, : step + 1]], dim=1)  # (S, T0+step, A)
            z_next = self.predict(z_hist, step_actions, states)[:, -1:]  # (S, 1, N, D)
            outputs.append(z_next)
            z_hist = torch.cat([z_hist, z_next], dim=1)
            if states is not None:
                states = torch.cat([states, self.next_states(states[:, -1:], actions[:, step : step + 1])], dim=1)
        return torch.cat(outputs, dim=1)

    @staticmethod
    def energy(z: Tensor, z_goal: Tensor) -> Tensor:
        """Mean |z - z_goal| over tokens and channels (the V-JEPA 2-AC planning energy): (..., N, D) -> (...)."""
        return (z - z_goal).abs().mean(dim=(-2, -1))

    # ------------------------------------------------------------------ persistence
    def config_dict(self) -> dict[str, Any]:
        """The JSON description from_pretrained needs: encoder, predictor and world-model configs."""
        config = {
            "encoder": self.encoder.cfg.to_dict(),
            "predictor": asdict(self.predictor.config),
            "world_model": asdict(self.config),
        }
        if self.state_readout is not None:
            config["state_readout"] = asdict(self.state_readout.config)
        if self.critic is not None:
            config["critic"] = asdict(self.critic.config)
        return config

    def trained_modules(self) -> dict[str, nn.Module]:
        """``{prefix: module}`` of everything saved: encoder, projector, predictor, readout and critic."""
        modules = {"encoder": self.encoder, "projector": self.projector, "predictor": self.predictor,
                   "state_readout": self.state_readout, "critic": self.critic}
        return {name: module for name, module in modules.items() if module is not None}

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Atomically write ``model.safetensors`` (encoder.*, predictor.*, state_readout.*) and ``config.json``."""
        return save_checkpoint(directory, module_tensors(self.trained_modules()), self.config_dict())

    def readout_view(self) -> ReadoutView:
        """This world model as the feature cache sees it, encoding at the readout's pooling."""
        if self.state_readout is None:
            raise ValueError("this world model has no state readout; post-train with state_readout.state_dims=[...]")
        return ReadoutView(self)

    @torch.no_grad()
    def decode_state(self, frames: Tensor) -> Tensor:
        """Frames (B,3,H,W) or (B,H,W,3) -> (B, K) the state dims the readout was trained on, in env units."""
        return self.state_readout(self.readout_view().encode(frames))

    @classmethod
    def from_config_dict(cls, config: dict[str, Any], source: str = "config") -> WorldModel:
        missing = [name for name in CONFIG_SECTIONS if not isinstance(config.get(name), dict)]
        if missing:
            raise CheckpointError(
                f"{source} does not describe a world model: missing section(s) {missing} "
                f"(expected {list(CONFIG_SECTIONS)}; is this a pretraining checkpoint?)"
            )
        try:
            encoder = VisionTransformer(_dataclass_from_dict(ViTConfig, config["encoder"], f"{source} [encoder]"))
            predictor = ACPredictor(_dataclass_from_dict(ACPredictorConfig, config["predictor"], f"{source} [predictor]"))
            wm_config = _dataclass_from_dict(WorldModelConfig, config["world_model"], f"{source} [world_model]")
            readout = None
            if config.get("state_readout") is not None:
                readout_config = _dataclass_from_dict(StateReadoutConfig, config["state_readout"], f"{source} [state_readout]")
                readout = StateReadout(readout_config)
            critic = None
            if config.get("critic") is not None:
                critic = TemporalDistanceCritic(_dataclass_from_dict(CriticConfig, config["critic"], f"{source} [critic]"))
            return cls(encoder, predictor, wm_config, readout, critic)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: invalid world-model config: {err}") from err

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> WorldModel:
        """Load a directory written by ``save_pretrained`` or posttrain's ``checkpoints/last/``."""
        directory = Path(directory)
        config = read_config(directory)
        model = cls.from_config_dict(config, str(directory / "config.json"))
        load_modules(directory, model.trained_modules())
        log.info("loaded world model from %s", directory)
        return model.to(map_location).eval()


class ReadoutView:
    """Duck-typed stand-in for a WorldModel in ``load_or_build_feature_cache``: same encoder, latents
    pooled by the state readout's ``latent_pool`` (so its cache is keyed apart from the planner's)."""

    def __init__(self, world_model: WorldModel):
        self.world_model = world_model
        self.encoder = world_model.encoder
        self.config = replace(world_model.config, latent_pool=world_model.state_readout.config.latent_pool)

    def encode(self, frames: Tensor) -> Tensor:
        return self.world_model.encode(frames, pool=self.config.latent_pool)


def _rows(x: Tensor | None, part: slice) -> Tensor | None:
    """Slice a per-sample tensor, leaving batch-1 (shared) tensors whole."""
    if x is None or x.shape[0] == 1:
        return x
    return x[part]


def describe(model: WorldModel) -> str:
    """One-line summary for logs."""
    pc = model.predictor.config
    params = sum(p.numel() for p in model.predictor.parameters())
    return (
        f"WorldModel(encoder {model.encoder.cfg.size} dim {model.encoder.embed_dim}, predictor {pc.depth}x{pc.dim} "
        f"({params / 1e6:.2f}M params), {pc.frame_tokens} tokens/frame, action_dim {pc.action_dim}, "
        f"state_dim {pc.state_dim})"
    )
