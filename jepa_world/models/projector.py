"""Projector from a ViT's tokens to one global embedding per frame (LeWorldModel's latent).

Mean-pooled tokens go through Linear -> BatchNorm -> GELU -> Linear, as LeWM's projector does;
SIGReg then shapes the output towards an isotropic Gaussian, so the predictor and the planner
work in a small space with one token per frame.
"""
from __future__ import annotations

from torch import Tensor, nn


class Projector(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"projector {name}={value} must be positive")
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D_in) encoder tokens -> (B, 1, D_out) one embedding per frame."""
        return self.net(tokens.mean(dim=1)).unsqueeze(1)
