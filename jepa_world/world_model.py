"""World-model API: a latent encoder and a dynamics, composed, plus an optional state readout and critic.

The verbs planners and users call::

    wm = WorldModel.from_pretrained(dir)
    z = wm.encode(frames)                          # (B,3,H,W) or (B,H,W,3) -> (B, N, D)
    z_next = wm.predict(z_hist, actions, states)   # teacher-forced, step t predicts t+1
    z_future = wm.rollout(z0, state0, actions)     # (S, H, N, D), KV-cached
    ee_goal = wm.decode_state(goal_frames)         # (B, K) state dims, if post-trained with a readout
    steps = wm.critic.distance(z, z_goal)          # (B,) temporal distance, if post-trained with a critic
    wm.save_pretrained(dir)

The parts, each one job:

* ``wm.latent_encoder`` (``jepa_world.latent_encoder.LatentEncoder``): ViT, pixel normalisation,
  pooling or projection, norm; ``encode`` and the feature-cache key. Frozen, or trained end to end.
* ``wm.dynamics`` (``jepa_world.dynamics.Dynamics``): the action-conditioned predictor, its input
  statistics, the action-to-state map and the KV-cached rollout (the planner's and the training
  loss's one rollout).
* ``wm.state_readout`` (opt-in supervised baseline) and ``wm.critic`` (temporal distance).

Predictions carry the latent space's norm, so predicted and encoded latents live in one space and
an L1 distance between them is the V-JEPA 2-AC planning energy.

File format. ``config.json`` has sections ``encoder`` (ViTConfig), ``predictor``
(ACPredictorConfig), ``world_model`` (the LatentConfig and DynamicsConfig fields, flat) and,
when present, ``state_readout`` and ``critic``; ``model.safetensors`` holds ``encoder.*``,
``projector.*``, ``predictor.*``, ``state_readout.*`` and ``critic.*``. Directories written before
the split load unchanged.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from jepa_world.dynamics import Dynamics, DynamicsConfig
from jepa_world.latent_encoder import LatentConfig, LatentEncoder
from jepa_world.models.ac_predictor import ACPredictor, ACPredictorConfig
from jepa_world.models.critic import CriticConfig, TemporalDistanceCritic
from jepa_world.models.state_readout import StateReadout, StateReadoutConfig
from jepa_world.models.vit import ViTConfig, VisionTransformer
from jepa_world.model_format import CheckpointError, load_modules, module_tensors, read_config, save_checkpoint

log = logging.getLogger(__name__)

CONFIG_SECTIONS: tuple[str, ...] = ("encoder", "predictor", "world_model")  # plus "state_readout"/"critic" when present


def _dataclass_from_dict(cls: type, values: Mapping[str, Any], source: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{source}: unknown {cls.__name__} field(s) {unknown}; valid fields: {sorted(known)}")
    return cls(**values)


def split_world_model_config(values: Mapping[str, Any], source: str = "world_model") -> tuple[LatentConfig, DynamicsConfig]:
    """The flat ``world_model`` section (config.json, Hydra's ``world_model.*``) -> its two halves."""
    latent_keys = {f.name for f in fields(LatentConfig)}
    dynamics_keys = {f.name for f in fields(DynamicsConfig)}
    unknown = sorted(set(values) - latent_keys - dynamics_keys)
    if unknown:
        raise ValueError(f"{source}: unknown world_model key(s) {unknown}; valid keys: "
                         f"{sorted(latent_keys)} (latent encoder) and {sorted(dynamics_keys)} (dynamics)")
    return (LatentConfig(**{k: v for k, v in values.items() if k in latent_keys}),
            DynamicsConfig(**{k: v for k, v in values.items() if k in dynamics_keys}))


class WorldModel(nn.Module):
    def __init__(self, latent_encoder: LatentEncoder, dynamics: Dynamics,
                 state_readout: StateReadout | None = None, critic: TemporalDistanceCritic | None = None):
        super().__init__()
        self.latent_encoder = latent_encoder
        self.dynamics = dynamics
        self.state_readout = state_readout
        self.critic = critic
        pc, lc = dynamics.predictor.config, latent_encoder.config
        if pc.encoder_dim != self.latent_dim:
            raise ValueError(f"predictor encoder_dim={pc.encoder_dim} but the {lc.latent} latent is {self.latent_dim} wide")
        if lc.latent == "global" and pc.frame_tokens != 1:
            raise ValueError(f"global latents are one token per frame; the predictor expects grid {pc.grid_hw}")
        if dynamics.normalize_outputs != lc.normalize_latents:
            raise ValueError(f"the dynamics' output norm ({dynamics.normalize_outputs}) must be the latent space's "
                             f"(normalize_latents={lc.normalize_latents})")
        if critic is not None and (critic.config.frame_tokens, critic.config.latent_dim) != (pc.frame_tokens, self.latent_dim):
            raise ValueError(f"critic reads ({critic.config.frame_tokens}, {critic.config.latent_dim}) latents but this "
                             f"world model's are ({pc.frame_tokens}, {self.latent_dim})")
        if state_readout is not None:
            rc, encoder = state_readout.config, latent_encoder.encoder
            grid = encoder.cfg.img_size // encoder.cfg.patch_size
            if (rc.frame_tokens, rc.dim) != ((grid // rc.latent_pool) ** 2, encoder.embed_dim):
                raise ValueError(f"state readout reads ({rc.frame_tokens}, {rc.dim}) latents but the encoder's "
                                 f"{grid}x{grid} grid pooled by {rc.latent_pool} gives "
                                 f"({(grid // rc.latent_pool) ** 2}, {encoder.embed_dim})")
            if len(rc.state_dims) > pc.action_dim:
                raise ValueError(f"state readout dims {rc.state_dims} need one action dim each; action_dim={pc.action_dim}")

    # Shortcuts to the parts' modules (what save/load and the trainers address by name).
    @property
    def encoder(self) -> VisionTransformer:
        return self.latent_encoder.encoder

    @property
    def projector(self) -> nn.Module | None:
        return self.latent_encoder.projector

    @property
    def predictor(self) -> ACPredictor:
        return self.dynamics.predictor

    @property
    def latent_dim(self) -> int:
        """D of one latent token."""
        return self.latent_encoder.latent_dim

    @classmethod
    def create(
        cls,
        encoder: VisionTransformer,
        action_dim: int,
        state_dim: int = 0,
        latent_config: LatentConfig | None = None,
        dynamics_config: DynamicsConfig | None = None,
        img_size: int | None = None,
        state_readout: dict[str, Any] | None = None,
        critic: dict[str, Any] | None = None,
        **predictor_fields: Any,
    ) -> WorldModel:
        """Build a fresh predictor (and projector, critic) sized for ``encoder`` at ``img_size``
        (default: the encoder's). ``critic``: CriticConfig fields other than the latent shape; None = none."""
        latent_encoder = LatentEncoder(encoder, latent_config)
        img_size = img_size or encoder.cfg.img_size
        rope_side, side = latent_encoder.grid(img_size)
        predictor_config = ACPredictorConfig(
            encoder_dim=latent_encoder.latent_dim,
            action_dim=action_dim,
            state_dim=state_dim,
            grid_hw=(side, side),
            rope_grid_hw=(rope_side, rope_side),
            **predictor_fields,
        )
        readout = None
        if state_readout:  # StateReadoutConfig fields other than the latent shape
            readout_grid = img_size // encoder.cfg.patch_size // state_readout.get("latent_pool", 1)
            readout = StateReadout(StateReadoutConfig(frame_tokens=readout_grid**2, dim=encoder.embed_dim, **state_readout))
        value_critic = None
        if critic is not None:
            value_critic = TemporalDistanceCritic(CriticConfig(
                latent_dim=latent_encoder.latent_dim, frame_tokens=predictor_config.frame_tokens, **critic))
        dynamics = Dynamics(ACPredictor(predictor_config), dynamics_config, latent_encoder.config.normalize_latents)
        return cls(latent_encoder, dynamics, readout, value_critic)

    # ------------------------------------------------------------------ verbs
    def embed(self, frames: Tensor) -> Tensor:
        """Frames -> latents (B, N, D), keeping the graph (end-to-end training)."""
        return self.latent_encoder.embed(frames)

    def encode(self, frames: Tensor) -> Tensor:
        """Frames -> latents (B, N, D) with no graph kept (planning); the inference latent in any mode."""
        z = self.latent_encoder.encode(frames)
        expected = self.predictor.config.frame_tokens
        if z.shape[1] != expected:
            raise ValueError(
                f"frames of size {tuple(frames.shape[-2:])} give {z.shape[1]} latent tokens, but the predictor expects "
                f"{expected} (grid {self.predictor.config.grid_hw}); resize frames to the training resolution"
            )
        return z

    def predict(self, z_hist: Tensor, actions: Tensor, states: Tensor | None = None) -> Tensor:
        """Teacher-forced: (B,T,N,D), (B,T,A), (B,T,S) raw units -> (B,T,N,D); output t predicts frame t+1."""
        return self.dynamics.predict(z_hist, actions, states)

    def rollout(self, z0: Tensor, state0: Tensor | None, actions: Tensor, context_actions: Tensor | None = None,
                use_kv_cache: bool = True) -> Tensor:
        """(S, H, N, D) predicted latents of frames 1..H; see ``Dynamics.rollout``."""
        return self.dynamics.rollout(z0, state0, actions, context_actions, use_kv_cache)

    def next_states(self, states: Tensor, actions: Tensor) -> Tensor:
        """Advance (..., S) states by (..., A) actions with the robot's action-to-state map."""
        return self.dynamics.next_states(states, actions)

    def compile_for_planning(self) -> None:
        """torch.compile the two paths a planner runs every step: ``encode`` (the observation) and the
        KV-cached ``rollout``. Exact to about 1e-6. For the shipped reach model on an AVX2 CPU it takes an action
        from 21.8 to 16.6 ms, but the first encode and plan compile for 8 s (inductor's on-disk cache warm) to
        40 s (cold), so it pays in long-running control loops, not in one episode (docs/planning.md, Speed)."""
        self.latent_encoder.compile_encode()
        self.dynamics.compile_rollout()

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
            "world_model": {**asdict(self.latent_encoder.config), **asdict(self.dynamics.config)},
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

    def readout_encoder(self) -> LatentEncoder:
        """The latent encoder the state readout reads: this ViT's token grid at the readout's pooling
        (its feature cache is keyed apart from the planner's)."""
        if self.state_readout is None:
            raise ValueError("this world model has no state readout; post-train with state_readout.state_dims=[...]")
        return self.latent_encoder.token_grid(self.state_readout.config.latent_pool)

    @torch.no_grad()
    def decode_state(self, frames: Tensor) -> Tensor:
        """Frames (B,3,H,W) or (B,H,W,3) -> (B, K) the state dims the readout was trained on, in env units."""
        return self.state_readout(self.readout_encoder().encode(frames))

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
            latent_config, dynamics_config = split_world_model_config(config["world_model"], f"{source} [world_model]")
            readout = None
            if config.get("state_readout") is not None:
                readout_config = _dataclass_from_dict(StateReadoutConfig, config["state_readout"], f"{source} [state_readout]")
                readout = StateReadout(readout_config)
            critic = None
            if config.get("critic") is not None:
                critic = TemporalDistanceCritic(_dataclass_from_dict(CriticConfig, config["critic"], f"{source} [critic]"))
            dynamics = Dynamics(predictor, dynamics_config, latent_config.normalize_latents)
            return cls(LatentEncoder(encoder, latent_config), dynamics, readout, critic)
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


def describe(model: WorldModel) -> str:
    """One-line summary for logs."""
    pc = model.predictor.config
    params = sum(p.numel() for p in model.predictor.parameters())
    return (
        f"WorldModel(encoder {model.encoder.cfg.size} dim {model.encoder.embed_dim}, predictor {pc.depth}x{pc.dim} "
        f"({params / 1e6:.2f}M params), {pc.frame_tokens} tokens/frame, action_dim {pc.action_dim}, "
        f"state_dim {pc.state_dim})"
    )
