"""SIGReg: the Sketched Isotropic Gaussian Regulariser of LeJEPA / LeWorldModel (Balestriero & LeCun 2025).

Embeddings (N, D) are projected onto M random unit directions. For each 1-D projection
x_1..x_N the Epps-Pulley statistic compares the empirical characteristic function
phi_N(t) = mean_n exp(i t x_n) with the standard normal's exp(-t^2/2):

    EP = N * integral_{-t_max}^{t_max} |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt

integrated with the trapezoid rule on a fixed grid. The integrand is even in t
(phi_N(-t) is the conjugate of phi_N(t)), so only t in [0, t_max] is evaluated and doubled,
in real arithmetic: |phi_N - g|^2 = (mean cos(t x) - g)^2 + (mean sin(t x))^2.
SIGReg is the mean of EP over the directions. By Cramer-Wold, it vanishes for every
direction only when the embeddings are isotropic N(0, I), so it penalises collapse
(constant or low-rank embeddings) and any shift or rescaling.

Under the null (i.i.d. N(0, 1) projections), E|phi_N(t) - g(t)|^2 = (1 - g(t)^2) / N, so the
statistic does not go to zero for Gaussian data: its expectation is ``null_expectation()``
(about 1.06 for the default grid), whatever N is. Collapsed embeddings score O(N).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

SAMPLES: tuple[str, ...] = ("tokens", "frames")
# Mixed into the per-step seed so SIGReg directions never share a stream with masks or data order.
SIGREG_STREAM = 0x51C4E6


class SIGRegConfigError(ValueError):
    """A SIGReg setting is invalid; the message names the key and the bad value."""


@dataclass(frozen=True)
class SIGRegConfig:
    weight: float = 0.0  # loss = prediction loss + weight * SIGReg; 0 turns it off
    num_directions: int = 256  # random unit directions (slices) per call
    num_knots: int = 17  # trapezoid grid points on [0, t_max]
    t_max: float = 3.0  # integration range [-t_max, t_max] of the characteristic function
    # What one sample is, in pretraining: every context token, or the mean context token of each
    # (clip, tubelet time) (one embedding per frame across the batch, as LeWorldModel regularises).
    samples: str = "tokens"

    def __post_init__(self) -> None:
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not (math.isfinite(self.weight) and self.weight >= 0):
            raise SIGRegConfigError(f"sigreg.weight={self.weight!r}: expected a finite number >= 0 (0 turns SIGReg off)")
        for name, minimum in (("num_directions", 1), ("num_knots", 2)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise SIGRegConfigError(f"sigreg.{name}={value!r}: expected an integer >= {minimum}")
        if isinstance(self.t_max, bool) or not isinstance(self.t_max, (int, float)) or not (math.isfinite(self.t_max) and self.t_max > 0):
            raise SIGRegConfigError(f"sigreg.t_max={self.t_max!r}: expected a finite number > 0")
        if self.samples not in SAMPLES:
            raise SIGRegConfigError(f"sigreg.samples={self.samples!r}: expected one of {SAMPLES}")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded by (seed, step): the directions of a step survive a resume unchanged."""
    state = int(np.random.SeedSequence([seed, step, SIGREG_STREAM]).generate_state(1)[0])
    return torch.Generator().manual_seed(state)


def frame_means(tokens: Tensor, token_ids: Tensor, tokens_per_frame: int, num_frames: int) -> Tensor:
    """Mean token per (clip, time slice) over the tokens present: (B, K, D), ids (B, K) -> (F, D).

    Token ids are time-major (``id = t * tokens_per_frame + spatial``); time slices without any
    token are dropped. No Python loop: one scatter-add over the batch.
    """
    batch, _, dim = tokens.shape
    time = torch.div(token_ids, tokens_per_frame, rounding_mode="floor")  # (B, K)
    sums = tokens.new_zeros(batch, num_frames, dim).scatter_add(1, time.unsqueeze(-1).expand(-1, -1, dim), tokens)
    counts = torch.zeros(batch, num_frames, device=tokens.device).scatter_add(1, time, torch.ones_like(time, dtype=torch.float32))
    present = counts > 0  # (B, T)
    return (sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype))[present]  # (F, D)


class EmpiricalCharacteristicFunction(torch.autograd.Function):
    """(mean_n cos(t_k x_nm), mean_n sin(t_k x_nm)) with a hand-written backward.

    Autograd would recompute sin and cos of the (N, M, K) phases in the backward pass; reusing
    the forward's values makes a SIGReg step about twice as fast on CPU.
    """

    @staticmethod
    def forward(ctx, projections: Tensor, knots: Tensor) -> tuple[Tensor, Tensor]:  # (N, M), (K,)
        phases = projections.unsqueeze(-1) * knots  # (N, M, K)
        cos, sin = phases.cos(), phases.sin()
        ctx.save_for_backward(cos, sin, knots)
        return cos.mean(0), sin.mean(0)  # (M, K), (M, K)

    @staticmethod
    def backward(ctx, grad_cos: Tensor, grad_sin: Tensor) -> tuple[Tensor, None]:
        cos, sin, knots = ctx.saved_tensors
        weighted_cos = (grad_sin * knots) / cos.shape[0]  # (M, K): d/dx sin(t x) = t cos(t x)
        weighted_sin = (grad_cos * knots) / cos.shape[0]  # d/dx cos(t x) = -t sin(t x)
        grad = (cos * weighted_cos).sum(-1) - (sin * weighted_sin).sum(-1)  # (N, M)
        return grad, None


class SIGReg(nn.Module):
    """``sigreg(embeddings (N, D), directions (D, M)) -> scalar``; see the module docstring."""

    def __init__(self, config: SIGRegConfig):
        super().__init__()
        self.config = config
        knots = torch.linspace(0.0, config.t_max, config.num_knots, dtype=torch.float64)  # (K,)
        gaussian = torch.exp(-0.5 * knots**2)  # N(0,1) characteristic function, also the weight
        trapezoid = torch.full_like(knots, config.t_max / (config.num_knots - 1))
        trapezoid[[0, -1]] *= 0.5
        # x2: the integrand is even, so [0, t_max] counts for both halves of [-t_max, t_max].
        self.register_buffer("knots", knots.float(), persistent=False)
        self.register_buffer("target", gaussian.float(), persistent=False)
        self.register_buffer("quadrature", (2.0 * trapezoid * gaussian).float(), persistent=False)

    def sample_directions(self, dim: int, generator: torch.Generator) -> Tensor:
        """(dim, M) unit columns drawn on the generator's device (CPU for ``step_generator``)."""
        directions = torch.randn(dim, self.config.num_directions, generator=generator, device=generator.device)
        return directions / directions.norm(dim=0, keepdim=True)

    def statistics(self, embeddings: Tensor, directions: Tensor) -> Tensor:
        """Epps-Pulley statistic per direction: embeddings (N, D), directions (D, M) -> (M,)."""
        if embeddings.ndim != 2 or directions.ndim != 2 or embeddings.shape[1] != directions.shape[0]:
            raise ValueError(f"SIGReg expects embeddings (N, D) and directions (D, M); got {tuple(embeddings.shape)} and {tuple(directions.shape)}")
        num_samples = embeddings.shape[0]
        # fp32 even under bf16 autocast: phases t*x up to t_max*|x| need more than 8 mantissa bits.
        with torch.autocast(embeddings.device.type, enabled=False):
            projections = embeddings.float() @ directions.to(embeddings.device, torch.float32)  # (N, M)
            mean_cos, mean_sin = EmpiricalCharacteristicFunction.apply(projections, self.knots)  # (M, K) each
            distance = (mean_cos - self.target).square() + mean_sin.square()  # |phi_N(t) - exp(-t^2/2)|^2
            return num_samples * (distance @ self.quadrature)  # (M,)

    def forward(self, embeddings: Tensor, directions: Tensor) -> Tensor:
        return self.statistics(embeddings, directions).mean()

    def null_expectation(self) -> float:
        """Expected statistic for i.i.d. N(0, 1) projections on this grid: sum_k w_k (1 - g_k^2)."""
        return float(((1.0 - self.target.double() ** 2) * self.quadrature.double()).sum())
