"""The latent encoder: frames -> the latents a world model predicts and plans in.

    latent_encoder = LatentEncoder(vit, LatentConfig(latent="global", latent_dim=64, normalize_latents=False))
    z = latent_encoder.encode(frames)      # (B,3,H,W) or (B,H,W,3) uint8 -> (B, N, D), no graph
    z = latent_encoder.embed(frames)       # the same with the graph kept (end-to-end training)
    latent_encoder.cache_components()      # what cached latents depend on (feature-cache key)

Pixels. uint8 frames are scaled to [0, 1] and normalised with ``pixel_mean``/``pixel_std``
(ImageNet statistics by default, as V-JEPA 2). Float frames are taken as already normalised
(training feeds those; the planner's public boundary, ``MPCAgent``, accepts only uint8).

Latent kinds. ``latent="tokens"`` (V-JEPA 2-AC) keeps the ViT's patch-token grid, average-pooled
by ``latent_pool`` (planning cost scales with tokens per frame), then a parameter-free layer norm
over channels (``normalize_latents``). ``latent="global"`` (LeWorldModel) maps the tokens through a
``Projector`` to one ``latent_dim`` embedding per frame, N = 1, not layer-normed (SIGReg shapes it).

Trainable or frozen. ``trainable_encoder=False`` (a frozen latent encoder, whose latents a feature
cache may hold) freezes the ViT and the projector and keeps them in eval mode.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jepa_world.compile_cache import compile_keyed_to_isa
from jepa_world.models.ac_predictor import layer_norm_tokens
from jepa_world.models.projector import Projector
from jepa_world.model_format import hash_module_weights
from jepa_world.models.vit import VisionTransformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LATENT_KINDS: tuple[str, ...] = ("tokens", "global")


@dataclass
class LatentConfig:
    latent: str = "tokens"  # "tokens": the patch-token grid; "global": one projected embedding per frame
    latent_dim: int = 64  # global latents: the projector's output width
    projector_hidden: int = 512  # global latents: the projector's hidden width
    trainable_encoder: bool = False  # post-trained end to end (the encoder is part of what is trained)
    latent_pool: int = 1  # token latents: average-pool the encoder's token grid by this factor per side
    normalize_latents: bool = True  # parameter-free layer norm on encoded (and predicted) tokens
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        if self.latent not in LATENT_KINDS:
            raise ValueError(f"world_model.latent={self.latent!r}; expected one of {LATENT_KINDS}")
        if self.latent_dim < 1 or self.projector_hidden < 1:
            raise ValueError(f"world_model.latent_dim/projector_hidden must be >= 1, got "
                             f"{self.latent_dim}/{self.projector_hidden}")
        if self.latent == "global" and self.normalize_latents:
            raise ValueError("world_model.latent='global' needs normalize_latents=false: the projected "
                             "embedding is shaped by SIGReg, and a layer norm over it would undo that")
        if self.latent_pool < 1:
            raise ValueError(f"world_model.latent_pool must be >= 1, got {self.latent_pool}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise ValueError(f"world_model.pixel_mean/pixel_std must be 3 values (std > 0), got "
                             f"{self.pixel_mean}/{self.pixel_std}")


class LatentEncoder(nn.Module):
    """ViT + pixel normalisation + pooling or projection + norm: one job, frames to latents."""

    def __init__(self, encoder: VisionTransformer, config: LatentConfig | None = None):
        super().__init__()
        self.config = config or LatentConfig()
        c = self.config
        self.encoder = encoder
        self.projector = Projector(encoder.embed_dim, c.projector_hidden, c.latent_dim) if c.latent == "global" else None
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, 3, 1, 1), persistent=False)
        self._compiled_embed: Callable[[Tensor], Tensor] | None = None  # set by compile_encode
        if not c.trainable_encoder:
            self.requires_grad_(False)
            self.eval()

    @property
    def latent_dim(self) -> int:
        """D of one latent token: the projector's width for global latents, else the encoder's."""
        return self.config.latent_dim if self.config.latent == "global" else self.encoder.embed_dim

    def grid(self, img_size: int) -> tuple[int, int]:
        """(ViT patch grid side, latent grid side) at ``img_size``; a global latent's grid is 1x1."""
        patch = self.encoder.cfg.patch_size
        side = img_size // patch
        if img_size % patch or side % self.config.latent_pool:
            raise ValueError(f"img_size {img_size} / patch_size {patch} = grid {side} must divide by "
                             f"latent_pool {self.config.latent_pool}")
        if self.config.latent == "global":
            return 1, 1
        return side, side // self.config.latent_pool

    def train(self, mode: bool = True) -> LatentEncoder:
        return super().train(mode and self.config.trainable_encoder)  # a frozen latent encoder never trains

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

    def finish(self, z: Tensor) -> Tensor:
        """The norm every latent of this space carries (encoded and predicted alike)."""
        return layer_norm_tokens(z) if self.config.normalize_latents else z

    def embed(self, frames: Tensor) -> Tensor:
        """Frames -> latents (B, N, D), keeping the graph (end-to-end training)."""
        x = self.normalize_pixels(frames.to(self.pixel_mean.device))
        tokens = self.encoder(x)  # (B, h*w, D_enc)
        if self.projector is not None:
            return self.projector(tokens)  # (B, 1, latent_dim)
        p = self.config.latent_pool
        if p > 1:
            _, h, w = self.encoder.grid_shape(x.shape)
            if h % p or w % p:
                raise ValueError(f"token grid {h}x{w} is not divisible by latent_pool={p}")
            grid = tokens.transpose(1, 2).unflatten(2, (h, w))  # (B, D, h, w)
            tokens = F.avg_pool2d(grid, p).flatten(2).transpose(1, 2)  # (B, h*w/p^2, D)
        return self.finish(tokens)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Frames -> latents (B, N, D) with no graph kept (planning, feature caches).

        Always the inference latent, even on a module in training mode: the projector's BatchNorm
        uses its running statistics and leaves them untouched, so a cache or a critic built from
        ``encode`` sees the latents the planner will see.
        """
        embed = self._compiled_embed or self.embed
        if not self.training:  # the planner's case: toggling 50 modules' modes costs 0.3 ms per call
            return embed(frames)
        self.eval()
        try:
            return embed(frames)
        finally:
            self.train(True)

    def compile_encode(self) -> None:
        """Run ``encode`` through torch.compile (inductor) from now on; ``embed`` (training) stays eager.

        The planner encodes one observation per step, a few dozen tokens through a small ViT, where eager
        per-op cost outweighs the arithmetic: on the shipped reach model compiling it took an action from
        18.3 to 16.6 ms on top of the compiled rollout (docs/speed.md, "eleventh session"). The ViT traces
        as one graph; each batch size compiles once (the second one symbolic). The weights stay graph
        inputs, so loading or training new weights needs no recompile.
        """
        # The ViT's position table for its nominal image, built now: built inside the first traced call, its new
        # cache entry would fail that graph's guards at the second call and compile the encoder twice.
        size = self.encoder.cfg.img_size
        self.encoder.full_grid_positions(self.encoder.grid_shape((1, 3, size, size)), self.pixel_mean.device)
        self._compiled_embed = compile_keyed_to_isa(self.embed)

    def token_grid(self, pool: int) -> LatentEncoder:
        """The same ViT read as its token grid pooled by ``pool`` (no projector): what a state readout
        reads. It shares the ViT's weights; its ``cache_components`` differ from this encoder's."""
        view = LatentEncoder(self.encoder, replace(self.config, latent="tokens", latent_pool=pool))
        return view.to(self.pixel_mean.device)

    def cache_components(self) -> dict[str, Any]:
        """Everything this encoder's latents depend on (weights, architecture, preprocessing): the
        latent half of a feature-cache key."""
        components = {
            "encoder_weights": hash_module_weights(self.encoder),
            "encoder_config": self.encoder.cfg.to_dict(),
            "latents": {k: v for k, v in asdict(self.config).items() if k != "trainable_encoder"},
        }
        if self.projector is not None:  # global latents also depend on the projector's weights
            components["projector_weights"] = hash_module_weights(self.projector)
        return components

