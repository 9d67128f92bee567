"""JEPA pretraining loop (V-JEPA 2 video path and I-JEPA image path) behind ``scripts/pretrain.py``.

One step:
  1. the EMA target encoder embeds the full clip; targets are its parameter-free
     layer-normed tokens (no gradient);
  2. for each mask generator i, the online encoder embeds the context tokens and the
     predictor fills mask token i at the target positions;
  3. loss = mean over generators of L1 (or smooth-L1) between predictions and the
     targets gathered at the target ids;
  4. optional SIGReg (``sigreg.weight > 0``): the online encoder's context tokens of each
     mask, flattened to (B*Nc, D) (or averaged per clip and time slice with
     ``sigreg.samples=frames``), are pushed toward an isotropic Gaussian, against partial
     collapse; directions are seeded by (seed, step);
  5. AdamW step (scheduled LR/WD, optional clipping), then the EMA update.

Exact resume: the sampler permutation is seeded by (seed, epoch) and can start
mid-epoch; masks are seeded by (seed, rank, epoch, batch); dataset augmentations by
(seed, epoch, index); LR/WD/momentum are functions of the step; optimizer and RNG
states are restored. So N steps straight equals N/2 + resume + N/2.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from jepa_world.compile_cache import caches_keyed_to_isa
from jepa_world.masks import MaskCollator, build_mask_generators
from jepa_world.models.predictor import MaskedPredictor, PredictorConfig
from jepa_world.models.vit import ViTConfig, VisionTransformer, gather_tokens
from jepa_world import model_format as ckpt
from jepa_world.training.checkpoint import check_config_matches
from jepa_world.training.curves import refresh_run_curves
from jepa_world.training.distributed import (
    DistInfo,
    all_reduce_mean,
    apply_fsdp2,
    barrier,
    init_distributed,
    wrap_ddp,
)
from jepa_world.training.ema import EMA, MomentumSchedule, make_target
from jepa_world.training.optim import OptimConfig, apply_schedule, build_optimizer, clip_gradients
from jepa_world.training.run import (
    MetricsWriter,
    NonFiniteGuard,
    capture_rng_state,
    claim_run_directory,
    restore_rng_state,
    seed_everything,
)
from jepa_world.training.sigreg import SIGReg, SIGRegConfig, SIGRegConfigError, frame_means, step_generator

log = logging.getLogger(__name__)

LossKind = Literal["l1", "smooth_l1"]
LOSSES: tuple[str, ...] = ("l1", "smooth_l1")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
STRATEGIES: tuple[str, ...] = ("ddp", "fsdp2")
# Config sections that must equal the checkpoint's on resume (they fix shapes, data order or masks).
RESUME_MUST_MATCH: tuple[str, ...] = ("model", "data", "mask", "seed", "batch_size", "loss", "strategy")


class ConfigError(ValueError):
    """The run configuration is invalid; the message names the key and the bad value."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RunConfig:
    """Top-level pretraining settings (model/data/mask/optim sections are validated by their own classes)."""

    output_dir: str
    max_steps: int = 600
    batch_size: int = 32  # per rank
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    strategy: str = "ddp"  # multi-process wrapper: ddp or fsdp2
    loss: LossKind = "l1"
    smooth_l1_beta: float = 1.0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_every: int = 0  # also keep step_XXXXXX copies every N steps (0: only last/)
    resume: bool = False
    stop_at_step: int | None = None  # end this invocation after that step (checkpointed), e.g. before a job time limit
    tensorboard: bool = False
    init_from: str | None = None  # checkpoint dir (ours or converted official weights) to start from

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected a positive integer")
        if not isinstance(self.keep_every, int) or self.keep_every < 0:
            raise ConfigError(f"keep_every={self.keep_every!r}: expected an integer >= 0")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r}: expected an integer >= 0")
        choices = {"loss": LOSSES, "precision": PRECISIONS, "strategy": STRATEGIES, "device": ("auto", "cpu", "cuda")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.stop_at_step is not None and not (isinstance(self.stop_at_step, int) and 1 <= self.stop_at_step <= self.max_steps):
            raise ConfigError(f"stop_at_step={self.stop_at_step!r}: expected null or an integer in [1, max_steps={self.max_steps}]")
        if not self.output_dir:
            raise ConfigError("output_dir is empty: expected a directory for metrics and checkpoints")


def _section(cfg: Mapping[str, Any], name: str) -> dict[str, Any]:
    if name not in cfg or not isinstance(cfg[name], Mapping):
        raise ConfigError(f"config section '{name}' is missing; expected a mapping (Hydra group {name}=...)")
    return dict(cfg[name])


def _build(section: str, factory, kwargs: Mapping[str, Any]):
    """Call a config/dataset constructor, re-raising its validation error under the config section name."""
    try:
        return factory(**kwargs)
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError) as err:
        raise ConfigError(f"{section}: {err}") from err


def run_config(cfg: Mapping[str, Any]) -> RunConfig:
    names = {f.name for f in fields(RunConfig)}
    return _build("config", RunConfig, {k: v for k, v in cfg.items() if k in names})


def encoder_config(cfg: Mapping[str, Any]) -> ViTConfig:
    model = _section(cfg, "model")
    model.pop("predictor", None)
    return _build("model", ViTConfig, model)


def predictor_config(cfg: Mapping[str, Any], encoder_dim: int, num_masks: int) -> PredictorConfig:
    model = _section(cfg, "model")
    pred = dict(model.get("predictor") or {})
    pred.setdefault("num_mask_tokens", num_masks)
    pred.setdefault("rope_layout", model.get("rope_layout", "official"))
    pred.setdefault("pos_embed", model.get("pos_embed", "rope"))
    return _build("model.predictor", PredictorConfig, {"encoder_dim": encoder_dim, **pred})


def optim_config(cfg: Mapping[str, Any]) -> OptimConfig:
    optim = _section(cfg, "optim")
    optim.pop("ema", None)
    if "betas" in optim:
        optim["betas"] = tuple(optim["betas"])
    return _build("optim", OptimConfig, optim)


def momentum_schedule(cfg: Mapping[str, Any], total_steps: int) -> MomentumSchedule:
    ema = dict(_section(cfg, "optim").get("ema") or {})
    return _build("optim.ema", MomentumSchedule, {"total_steps": total_steps, **ema})


def sigreg_config(cfg: Mapping[str, Any]) -> SIGRegConfig:
    """The optional ``sigreg`` section (absent: off, as in runs from before the option existed)."""
    section = cfg.get("sigreg") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"sigreg={section!r}: expected a mapping with weight, num_directions, num_knots, t_max, samples")
    unknown = sorted(set(section) - {f.name for f in fields(SIGRegConfig)})
    if unknown:
        raise ConfigError(f"sigreg: unknown keys {unknown}; expected weight, num_directions, num_knots, t_max, samples")
    try:
        return SIGRegConfig(**section)
    except SIGRegConfigError as err:
        raise ConfigError(str(err)) from err


def mask_generators(cfg: Mapping[str, Any]) -> list:
    specs = _section(cfg, "mask").get("generators")
    if not specs:
        raise ConfigError("mask.generators is empty: expected a list of generator specs ({kind: 3d|2d, ...})")
    return _build("mask", build_mask_generators, {"specs": [dict(s) for s in specs]})


DATASET_KINDS: tuple[str, ...] = ("synthetic", "video_folder", "image_folder", "trajectory")
LOADER_KEYS: tuple[str, ...] = ("kind", "num_workers")


def build_dataset(cfg: Mapping[str, Any]) -> Dataset:
    """Dataset from the ``data`` section: ``kind`` picks the class, the other keys are its arguments."""
    data = _section(cfg, "data")
    kind = data.get("kind")
    kwargs = {k: v for k, v in data.items() if k not in LOADER_KEYS}
    if kind == "synthetic":
        from jepa_world.data.synthetic import MovingShapesDataset as cls
    elif kind == "video_folder":
        from jepa_world.data.video import VideoFolderDataset as cls
    elif kind == "image_folder":
        from jepa_world.data.image import ImageFolderDataset as cls
    elif kind == "trajectory":
        from jepa_world.data.trajectory_clips import TrajectoryClipDataset as cls
    else:
        raise ConfigError(f"data.kind={kind!r}: expected one of {DATASET_KINDS}")
    if kind in ("video_folder", "image_folder", "trajectory"):
        root = kwargs.get("root")
        if not root or not Path(str(root)).is_dir():
            expected = "a LeRobot dataset dir" if kind == "trajectory" else f"/path/to/{kind.split('_')[0]}s"
            raise ConfigError(f"data.root={root!r}: directory does not exist (data={kind} needs data.root={expected})")
    return _build(f"data ({kind})", cls, kwargs)


# --------------------------------------------------------------------------- data order


class IndexSeededDataset(Dataset):
    """Seeds the global RNGs from (seed, epoch, index) before each sample.

    Random augmentations then depend only on which sample is drawn, not on the worker
    or on how many samples came before, which is what makes mid-epoch resume exact.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        sample_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        random.seed(sample_seed)
        np.random.seed(sample_seed)
        torch.manual_seed(sample_seed)
        return self.dataset[index]


class ResumableSampler(DistributedSampler):
    """DistributedSampler (seeded per epoch, sharded over ranks) that can start mid-epoch."""

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int):
        super().__init__(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int) -> None:
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class BatchStream:
    """Endless batches starting at any global step, reproducibly."""

    def __init__(self, dataset: Dataset, collator: MaskCollator, info: DistInfo, batch_size: int, seed: int, num_workers: int):
        self.dataset = IndexSeededDataset(dataset, seed)
        self.sampler = ResumableSampler(self.dataset, info, seed)
        self.collator = collator
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.batches_per_epoch = self.sampler.num_samples // batch_size
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"batch_size={batch_size} x world size {info.world_size} exceeds the dataset "
                f"({len(dataset)} samples): no full batch per epoch"  # type: ignore[arg-type]
            )

    def from_step(self, step: int) -> Iterator[Any]:
        epoch, batch_in_epoch = divmod(step, self.batches_per_epoch)
        while True:
            self.sampler.set_position(epoch, batch_in_epoch * self.batch_size)
            self.collator.set_epoch(epoch, batch_in_epoch)
            self.dataset.epoch = epoch
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                sampler=self.sampler,
                collate_fn=self.collator,
                num_workers=self.num_workers,
                drop_last=True,
                pin_memory=torch.cuda.is_available(),
            )
            yield from loader
            epoch, batch_in_epoch = epoch + 1, 0


# --------------------------------------------------------------------------- model


class JEPA(nn.Module):
    """Online encoder + masked predictor; ``forward`` returns the masked-latent loss.

    With ``sigreg`` set and ``sigreg_directions`` passed, ``forward`` returns
    ``(prediction_loss, sigreg_statistic)``, the statistic averaged over the masks' context tokens.
    """

    def __init__(self, encoder: VisionTransformer, predictor: MaskedPredictor, loss: LossKind = "l1", smooth_l1_beta: float = 1.0,
                 sigreg: SIGReg | None = None):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.loss = loss
        self.smooth_l1_beta = smooth_l1_beta
        self.sigreg = sigreg

    def forward(self, clips: Tensor, masks: Sequence[tuple[Tensor, Tensor]], targets: Tensor,
                sigreg_directions: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """clips (B,3,T,H,W) or (B,3,H,W); masks [(ctx (B,Nc), tgt (B,Nt))]; targets (B,N,D) layer-normed;
        sigreg_directions (D, M) unit columns."""
        grid = self.encoder.grid_shape(clips.shape)
        losses, sigregs = [], []
        for mask_index, (context_ids, target_ids) in enumerate(masks):
            context = self.encoder(clips, masks=context_ids)  # (B, Nc, D)
            if sigreg_directions is not None and self.sigreg is not None:
                if self.sigreg.config.samples == "frames":
                    samples = frame_means(context, context_ids, grid[1] * grid[2], grid[0])  # (B*t, D)
                else:
                    samples = context.flatten(0, 1)  # (B*Nc, D)
                sigregs.append(self.sigreg(samples, sigreg_directions))
            predicted = self.predictor(context, context_ids, target_ids, grid, mask_index=mask_index)  # (B, Nt, D)
            target = gather_tokens(targets, target_ids)  # (B, Nt, D)
            if self.loss == "l1":
                losses.append(F.l1_loss(predicted.float(), target.float()))
            else:
                losses.append(F.smooth_l1_loss(predicted.float(), target.float(), beta=self.smooth_l1_beta))
        if sigregs:
            return torch.stack(losses).mean(), torch.stack(sigregs).mean()
        return torch.stack(losses).mean()


@torch.no_grad()
def embed_targets(target_encoder: nn.Module, clips: Tensor) -> Tensor:
    tokens = target_encoder(clips)  # (B, N, D)
    return F.layer_norm(tokens, tokens.shape[-1:])


# --------------------------------------------------------------------------- the run


@dataclass
class PretrainResult:
    output_dir: Path
    steps: int
    final_loss: float  # mean loss over the last logging interval (all ranks)
    checkpoint: Path
    encoder: VisionTransformer
    target_encoder: VisionTransformer
    predictor: MaskedPredictor


def _checkpoint_tensors(jepa: JEPA, target_encoder: nn.Module) -> dict[str, Tensor]:
    return ckpt.module_tensors({"encoder": jepa.encoder, "target_encoder": target_encoder, "predictor": jepa.predictor})


def pretrain(cfg: Mapping[str, Any]) -> PretrainResult:
    """Run pretraining from a resolved config mapping (the Hydra config as a plain dict)."""
    run = run_config(cfg)
    info = init_distributed(run.device)
    precision = run.precision
    if precision == "auto":
        precision = "bf16" if info.device.type == "cuda" else "fp32"
    if precision == "bf16" and info.device.type != "cuda":
        raise ConfigError(f"precision=bf16 on {info.device}: bf16 autocast is for CUDA (slower than fp32 on CPU); use precision=auto")
    if run.strategy == "fsdp2" and not info.is_distributed:
        log.warning("strategy=fsdp2 with a single process: nothing to shard, training unsharded")

    output_dir = Path(run.output_dir)
    last_dir = output_dir / "checkpoints" / "last"
    claim_run_directory(output_dir, run.resume, info.is_main)

    enc_cfg = encoder_config(cfg)
    generators = mask_generators(cfg)
    pred_cfg = predictor_config(cfg, enc_cfg.embed_dim, len(generators))
    optim_cfg = optim_config(cfg)
    sigreg_cfg = sigreg_config(cfg)
    ema_schedule = momentum_schedule(cfg, run.max_steps)
    dataset = build_dataset(cfg)
    num_workers = int(_section(cfg, "data").get("num_workers", 0))

    seed_everything(run.seed)  # identical initial weights on every rank
    encoder = VisionTransformer(enc_cfg)
    predictor = MaskedPredictor(pred_cfg)
    sigreg = SIGReg(sigreg_cfg) if sigreg_cfg.enabled else None
    jepa = JEPA(encoder, predictor, run.loss, run.smooth_l1_beta, sigreg).to(info.device)
    target_encoder = make_target(encoder).to(info.device)

    start_step, train_state = 0, None
    if run.resume:
        train_state = _restore(last_dir, cfg, jepa, target_encoder, info)
        start_step = int(train_state["step"])
    elif run.init_from:
        _initialise_from(Path(run.init_from), jepa, target_encoder, info)
    num_params = sum(p.numel() for p in jepa.parameters())
    if info.is_main:
        log.info("encoder %s (%d-d, depth %d), predictor %d-d depth %d, %.2fM trainable params, device %s, %s, world size %d",
                 enc_cfg.size, enc_cfg.embed_dim, enc_cfg.depth, pred_cfg.dim, pred_cfg.depth, num_params / 1e6,
                 info.device, precision, info.world_size)

    sharded = info.is_distributed and run.strategy == "fsdp2"
    if sharded:
        apply_fsdp2(jepa, info, [jepa.encoder.blocks, jepa.predictor.predictor_blocks])
        apply_fsdp2(target_encoder, info, [target_encoder.blocks], forward_only=True)
    optimizer = build_optimizer(jepa, optim_cfg)  # after sharding: FSDP2 swaps parameters for DTensor shards
    if train_state is not None:
        _load_optimizer_state(optimizer, jepa, train_state["optimizer"], sharded, last_dir)
        restore_rng_state(train_state["rng"])
    train_module: nn.Module = wrap_ddp(jepa, info) if run.strategy == "ddp" else jepa
    ema = EMA(jepa.encoder, target_encoder, ema_schedule)
    target_forward = target_encoder
    if run.compile:
        # Context/target token counts change from batch to batch: compile for dynamic shapes
        # once instead of recompiling at every new mask size.
        train_module = torch.compile(train_module, dynamic=True)
        target_forward = torch.compile(target_encoder, dynamic=True)

    collator = MaskCollator(generators, seed=run.seed * 1009 + info.rank, patch_size=enc_cfg.patch_size, tubelet_size=enc_cfg.tubelet_size)
    stream = BatchStream(dataset, collator, info, run.batch_size, run.seed, num_workers)
    metrics = MetricsWriter(output_dir / "metrics.jsonl", enabled=info.is_main, resume_step=start_step if run.resume else None, tensorboard=run.tensorboard)
    loss_guard, grad_guard = NonFiniteGuard(info.device), NonFiniteGuard(info.device)
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    params = [p for p in jepa.parameters() if p.requires_grad]

    loss_sum = torch.zeros((), device=info.device)
    term_sums = torch.zeros(2, device=info.device)  # (prediction loss, SIGReg statistic) when SIGReg is on
    interval_steps, interval_start = 0, time.perf_counter()
    last_loss = math.nan
    end_step = run.stop_at_step or run.max_steps
    progress = tqdm(total=run.max_steps, initial=start_step, disable=not info.is_main, desc="pretrain", dynamic_ncols=True)
    batches = stream.from_step(start_step)
    # The loop runs every compile, backward's included: key their caches to this process's vector ISA.
    with caches_keyed_to_isa():
        try:
            for step in range(start_step, end_step):
                batch = next(batches)
                clips = batch[0].to(info.device, non_blocking=True)
                masks = [(c.to(info.device, non_blocking=True), t.to(info.device, non_blocking=True)) for c, t in batch[1]]
                lr, wd = apply_schedule(optimizer, step, optim_cfg, run.max_steps)
                with autocast:
                    targets = embed_targets(target_forward, clips)
                    if sigreg is None:
                        loss = train_module(clips, masks, targets)
                    else:
                        directions = sigreg.sample_directions(enc_cfg.embed_dim, step_generator(run.seed, step)).to(info.device, non_blocking=True)
                        prediction_loss, sigreg_loss = train_module(clips, masks, targets, directions)
                        loss = prediction_loss + sigreg_cfg.weight * sigreg_loss
                        term_sums += torch.stack([prediction_loss.detach(), sigreg_loss.detach()])
                loss.backward()
                grad_norm = clip_gradients(params, optim_cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                momentum = ema.update(step)
                loss_guard.observe(loss, step)
                if grad_norm is not None:
                    grad_guard.observe(grad_norm, step)
                loss_sum += loss.detach()
                interval_steps += 1
                done = step + 1
                progress.update(1)

                if done % run.log_every == 0 or done == end_step:
                    loss_guard.check("loss")
                    grad_guard.check("gradient norm")
                    mean_loss = float(all_reduce_mean(loss_sum / interval_steps, info))
                    elapsed = time.perf_counter() - interval_start
                    record = {
                        "step": done,
                        "loss": mean_loss,
                        "lr": lr,
                        "wd": wd,
                        "ema_momentum": momentum,
                        "clips_per_s": interval_steps * run.batch_size * info.world_size / elapsed,
                        "step_time_s": elapsed / interval_steps,
                        "epoch": step // stream.batches_per_epoch,
                    }
                    if grad_norm is not None:
                        record["grad_norm"] = float(grad_norm)
                    if sigreg is not None:
                        # "loss" is the optimised total; these are its two terms (SIGReg unweighted).
                        terms = all_reduce_mean(term_sums / interval_steps, info)
                        record["loss_pred"], record["loss_sigreg"] = float(terms[0]), float(terms[1])
                        term_sums.zero_()
                    metrics.write(record)
                    progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    last_loss = mean_loss
                    loss_sum.zero_()
                    interval_steps, interval_start = 0, time.perf_counter()

                if done % run.checkpoint_every == 0 or done == end_step:
                    loss_guard.check("loss")
                    grad_guard.check("gradient norm")
                    _save(output_dir, cfg, jepa, target_encoder, optimizer, done, run, info)
        finally:
            progress.close()
            metrics.close()
    return PretrainResult(output_dir, end_step, last_loss, last_dir, jepa.encoder, target_encoder, jepa.predictor)


def _train_state(optimizer: torch.optim.Optimizer, jepa: JEPA, step: int, run: RunConfig, info: DistInfo) -> dict[str, Any]:
    if info.is_distributed and run.strategy == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim_state = get_optimizer_state_dict(jepa, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        optim_state = optimizer.state_dict()
    return {"step": step, "world_size": info.world_size, "optimizer": optim_state, "rng": capture_rng_state()}


def _save(output_dir: Path, cfg: Mapping[str, Any], jepa: JEPA, target_encoder: nn.Module, optimizer, step: int, run: RunConfig, info: DistInfo) -> None:
    tensors = _checkpoint_tensors(jepa, target_encoder)  # collective under FSDP2: every rank calls it
    state = _train_state(optimizer, jepa, step, run, info)
    if info.is_main:
        checkpoints = output_dir / "checkpoints"
        ckpt.remove_stale_temp_dirs(checkpoints)
        # The resolved ViTConfig travels with the weights so that consumers (post-training,
        # scripts/convert_checkpoint.py) rebuild the encoder without knowing Hydra's layout.
        saved_cfg = {**cfg, "encoder": asdict(encoder_config(cfg))}
        ckpt.save_checkpoint(checkpoints / "last", tensors, saved_cfg, state)
        if run.keep_every and step % run.keep_every == 0:
            ckpt.copy_checkpoint(checkpoints / "last", checkpoints / f"step_{step:06d}")
        log.info("step %d: checkpoint written to %s", step, checkpoints / "last")
        refresh_run_curves(output_dir)
    barrier(info)


def _restore(last_dir: Path, cfg: Mapping[str, Any], jepa: JEPA, target_encoder: nn.Module, info: DistInfo) -> dict[str, Any]:
    """Load weights from ``last_dir`` after checking the config; returns the train state."""
    saved_cfg = ckpt.read_config(last_dir)
    check_config_matches(saved_cfg, cfg, RESUME_MUST_MATCH, last_dir)
    changed = [k for k in ("optim", "max_steps") if saved_cfg.get(k) != cfg.get(k)]
    if sigreg_config(saved_cfg) != sigreg_config(cfg):
        changed.append("sigreg")
    if changed and info.is_main:
        log.warning("resuming with changed %s (allowed, but the run is no longer a pure continuation)", changed)
    ckpt.load_modules(last_dir, {"encoder": jepa.encoder, "target_encoder": target_encoder, "predictor": jepa.predictor})
    state = ckpt.read_train_state(last_dir)
    for key in ("step", "world_size", "optimizer", "rng"):
        if key not in state:
            raise ckpt.CheckpointError(f"{last_dir / ckpt.TRAIN_STATE_FILE} lacks the '{key}' entry")
    if state["world_size"] != info.world_size:
        raise ckpt.CheckpointError(
            f"{last_dir} was written by {state['world_size']} processes but this run has {info.world_size}; "
            "the data order would change, resume with the same number of processes"
        )
    if info.is_main:
        log.info("resuming from %s at step %d", last_dir, state["step"])
    return state


def _initialise_from(source: Path, jepa: JEPA, target_encoder: nn.Module, info: DistInfo) -> None:
    """Start from pretrained weights (e.g. ``scripts/convert_checkpoint.py`` output); strict per part.

    A missing ``target_encoder`` starts as a copy of ``encoder`` and vice versa; a missing
    ``predictor`` keeps its fresh initialisation.
    """
    tensors = ckpt.read_tensors(source)
    present = {key.split(".", 1)[0] for key in tensors}
    parts = {"encoder": jepa.encoder, "target_encoder": target_encoder, "predictor": jepa.predictor}
    if not present & {"encoder", "target_encoder"}:
        raise ckpt.CheckpointError(f"init_from={str(source)!r}: {source / ckpt.MODEL_FILE} holds neither encoder.* nor target_encoder.* keys (found prefixes {sorted(present)})")
    ckpt.load_modules(source, {name: module for name, module in parts.items() if name in present}, tensors)
    if "target_encoder" not in present:
        target_encoder.load_state_dict(jepa.encoder.state_dict())
    elif "encoder" not in present:
        jepa.encoder.load_state_dict(target_encoder.state_dict())
    if info.is_main:
        log.info("initialised %s from %s", sorted(present & set(parts)), source)


def _load_optimizer_state(optimizer, jepa: JEPA, state: Mapping[str, Any], sharded: bool, last_dir: Path) -> None:
    try:
        if sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(jepa, optimizer, dict(state), options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as err:
        raise ckpt.CheckpointError(f"{last_dir / ckpt.TRAIN_STATE_FILE}: optimizer state does not fit this model: {err}") from err
