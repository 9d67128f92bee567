"""Temporal-distance critic: how many steps apart two latents are, learned from trajectories alone.

A latent that SIGReg makes isotropic is locally metric but globally flat: past some 15-30 cm
of fingertip travel every pair of frames is about equally far apart (docs/world_model.md). The
critic gives the planner a slope from everywhere. It embeds each latent with an MLP ``phi``
and reads the distance as a Euclidean norm in that space (a metric, so it is symmetric and obeys
the triangle inequality, which lets it chain short trajectory pieces into long distances)::

    d(z, g) = || phi(z) - phi(g) ||        # in environment steps

It is trained on pairs of frames of one trajectory, ``k`` steps apart, with the time offset as
target and an expectile loss whose small ``expectile`` weights over-estimates heavily: among the
many offsets seen between two places (a random walk revisits, an expert dwells at its goal) it
learns the low end, the number of steps the fastest trajectory needed. That is the
Monte-Carlo form of the Hilbert-representation / quasimetric objectives (REFERENCE section 8).
It uses only time indices: no state labels, no goal states.

    critic = TemporalDistanceCritic(CriticConfig(latent_dim=64))
    d = critic.distance(z, z_goal)        # (..., N, D) x (..., N, D) -> (...)
    loss = critic.loss(z_a, z_b, offsets)  # (P, N, D), (P, N, D), (P,)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class CriticConfig:
    latent_dim: int  # D of one latent token
    frame_tokens: int = 1  # N tokens per frame (flattened into phi's input)
    hidden_dim: int = 256
    dim: int = 32  # width of the phi space
    depth: int = 2  # hidden layers of phi
    expectile: float = 0.1  # < 0.5 learns the low end of the observed offsets
    max_offset: int = 49  # training pairs are at most this many steps apart

    def __post_init__(self) -> None:
        for name in ("latent_dim", "frame_tokens", "hidden_dim", "dim", "depth", "max_offset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"critic.{name}={value!r}: expected a positive int")
        if not 0.0 < self.expectile < 1.0:
            raise ValueError(f"critic.expectile={self.expectile!r}: expected a number in (0, 1)")


class TemporalDistanceCritic(nn.Module):
    def __init__(self, config: CriticConfig):
        super().__init__()
        self.config = config
        c = config
        layers: list[nn.Module] = []
        width = c.latent_dim * c.frame_tokens
        for _ in range(c.depth):
            layers += [nn.Linear(width, c.hidden_dim), nn.LayerNorm(c.hidden_dim), nn.GELU()]
            width = c.hidden_dim
        layers.append(nn.Linear(width, c.dim))
        self.phi = nn.Sequential(*layers)

    def embed(self, z: Tensor) -> Tensor:
        """(..., N, D) latents -> (..., dim) points whose distances count steps."""
        c = self.config
        if z.shape[-2:] != (c.frame_tokens, c.latent_dim):
            raise ValueError(f"critic expects latents (..., {c.frame_tokens}, {c.latent_dim}), got {tuple(z.shape)}")
        return self.phi(z.flatten(-2))

    def distance(self, z: Tensor, z_goal: Tensor) -> Tensor:
        """Predicted steps from z to z_goal: (..., N, D) x (..., N, D) (broadcast) -> (...)."""
        return self.embed_distance(self.embed(z), self.embed(z_goal))

    @staticmethod
    def embed_distance(a: Tensor, b: Tensor) -> Tensor:
        # The epsilon keeps the gradient finite at a == b (the norm's gradient is undefined at 0).
        return ((a - b).pow(2).sum(-1) + 1e-6).sqrt()

    def loss(self, z_a: Tensor, z_b: Tensor, offsets: Tensor) -> Tensor:
        """Expectile regression of d(z_a, z_b) on the steps between them: (P,N,D), (P,N,D), (P,) -> scalar."""
        d = self.distance(z_a, z_b)
        residual = offsets.to(d.dtype) - d
        weight = torch.where(residual < 0, 1.0 - self.config.expectile, self.config.expectile)
        return (weight * residual.pow(2)).mean()
