"""Training loop of the language head, behind ``scripts/train_language.py``.

The visual side is a frozen latent encoder: a saved ``WorldModel``'s (``world_model=dir``,
the latents the planner predicts) or one around an encoder built from
``encoder`` (optionally loading a pretraining checkpoint's ``target_encoder``; with no
checkpoint it is the random-init baseline). Episodes are rolled out in MuJoCo, every
frame is encoded once, and each step trains the head on cached latents.

Each step trains one fact kind (round robin over ``kinds``); the batch, the caption
paraphrases and the query wording come from a generator seeded by (seed, step), so a
resumed run draws exactly the batches the uninterrupted run would have. Under torchrun
every rank draws the same global batch and trains on its slice (DDP averages gradients).
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from tqdm import tqdm

from jepa_world.language import captions as C
from jepa_world.language.data import (
    EE_STATE_SLICE,
    encode_episodes,
    gather_latents,
    rollout_episodes,
    sample_index,
)
from jepa_world.language.goal_memory import GoalMemory
from jepa_world.language.head import (
    LANGUAGE_HEAD_SIZES,
    LanguageHead,
    LanguageHeadConfig,
    info_nce,
)
from jepa_world.language.retrieval import retrieval_metrics
from jepa_world.language.text_encoder import TextEncoder, load_text_encoder
from jepa_world.latent_encoder import LatentConfig, LatentEncoder
from jepa_world.model_format import CONFIG_FILE, load_modules, module_tensors, read_config, save_checkpoint
from jepa_world.training.checkpoint import resume_from
from jepa_world.training.curves import refresh_run_curves
from jepa_world.training.distributed import (
    all_reduce_mean,
    barrier,
    init_distributed,
    unwrap,
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

log = logging.getLogger(__name__)

HEAD_DIR = "language_head"
# Changing these mid-run would silently change what a resumed run trains on.
RESUME_KEYS = ("world_model", "encoder", "env", "data", "kinds", "use_query", "head", "text_encoder", "train.batch_size")
TRAIN_KINDS = ("arm", "motion")  # facts the arm envs' states define


@dataclass
class HeadMeta:
    """What a saved head needs besides its weights, written to its config.json."""

    head: dict[str, Any]
    text_encoder: str
    grid_hw: tuple[int, int]
    clip_frames: int
    kinds: tuple[str, ...]
    use_query: bool
    world_model: str | None


def build_frozen_latent_encoder(cfg: DictConfig) -> LatentEncoder:
    """The frozen visual side: a saved WorldModel's latent encoder, or a ViT's pooled token grid."""
    from jepa_world.models.vit import build_encoder
    from jepa_world.world_model import WorldModel

    if cfg.world_model:
        return WorldModel.from_pretrained(cfg.world_model).latent_encoder
    enc_cfg = cfg.encoder
    encoder = build_encoder(enc_cfg.size, img_size=enc_cfg.img_size, patch_size=enc_cfg.patch_size)
    if enc_cfg.checkpoint:
        load_modules(enc_cfg.checkpoint, {enc_cfg.checkpoint_prefix: encoder})
        log.info("loaded %s from %s", enc_cfg.checkpoint_prefix, enc_cfg.checkpoint)
    else:
        log.warning("no world_model or encoder.checkpoint given: using a RANDOM-INIT encoder (baseline)")
    return LatentEncoder(encoder, LatentConfig(latent_pool=enc_cfg.latent_pool))


def caption_table(text: TextEncoder, kind: str, split: str) -> Tensor:
    """(labels, variants, Dt) embeddings of every paraphrase of every label in ``split``."""
    rows = C.all_captions(kind, split)  # label-major order
    embeddings = text.encode([caption for caption, _ in rows])
    return embeddings.unflatten(0, (C.NUM_LABELS[kind], -1))


def query_table(text: TextEncoder, kind: str) -> Tensor:
    return text.encode(list(C.QUERIES[kind]))  # (Q, Dt)


def _validate(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg.kinds) - set(TRAIN_KINDS))
    if unknown or not cfg.kinds:
        raise ValueError(f"kinds={list(cfg.kinds)} must be a non-empty subset of {TRAIN_KINDS}")
    if cfg.data.clip_frames < 2 and "motion" in cfg.kinds:
        raise ValueError(f"data.clip_frames={cfg.data.clip_frames} must be >= 2 to caption motion")
    if cfg.train.steps < 1 or cfg.train.batch_size < 2:
        raise ValueError(f"train.steps={cfg.train.steps} must be >= 1 and train.batch_size={cfg.train.batch_size} >= 2")
    if cfg.head.size not in LANGUAGE_HEAD_SIZES:
        raise ValueError(f"head.size={cfg.head.size!r}; expected one of {sorted(LANGUAGE_HEAD_SIZES)}")


class LatentBank:
    """Cached latents of rolled-out episodes and their samples per (kind, position split)."""

    def __init__(self, latent_encoder: LatentEncoder, cfg: DictConfig, seed: int, num_episodes: int):
        d = cfg.data
        image_size = latent_encoder.encoder.cfg.img_size
        episodes = rollout_episodes(cfg.env, num_episodes, d.steps, image_size, seed, d.goal_every)
        self.arm_uv = episodes.arm_uv  # (E, T, 2)
        self.positions = episodes.states[..., EE_STATE_SLICE]  # (E, T, 3) proprio end effector
        self.latents = encode_episodes(latent_encoder, episodes.frames)  # (E, T, N, D)
        self.clip_frames = d.clip_frames

    def samples(self, kind: str, split: str) -> tuple[Tensor, Tensor, Tensor]:
        return sample_index(self.arm_uv, kind, self.clip_frames, split)

    def clips(self, kind: str, episode: Tensor, step: Tensor) -> Tensor:
        frames = 1 if kind == "arm" else self.clip_frames
        return gather_latents(self.latents, episode, step, frames)  # (M, frames, N, D)


@torch.no_grad()
def build_goal_memory(head: LanguageHead, bank: LatentBank, text: TextEncoder, grid_hw: tuple[int, int],
                      use_query: bool, batch_size: int = 256) -> GoalMemory:
    """Every training frame embedded as the planner embeds a frame, with its observed end effector
    (``goal_memory.GoalMemory``). No captions: the frames are the robot's unlabelled experience."""
    head.eval()
    query = query_table(text, "arm")[:1] if use_query else None  # the query LanguageGoalAgent asks
    frames = bank.latents.flatten(0, 1)  # (E*T, N, D)
    embeddings = torch.cat([head(frames[i : i + batch_size], grid_hw, query) for i in range(0, len(frames), batch_size)])
    return GoalMemory(embeddings.cpu(), bank.positions.flatten(0, 1))


@torch.no_grad()
def evaluate_retrieval(
    head: LanguageHead, bank: LatentBank, text: TextEncoder, grid_hw: tuple[int, int], kinds, use_query: bool,
    template_split: str = "heldout", position_split: str = "heldout", batch_size: int = 256,
) -> dict[str, float]:
    """R@1/R@5 both ways, averaged over every paraphrase of ``template_split`` as the candidate set."""
    head.eval()
    metrics: dict[str, float] = {}
    for kind in kinds:
        episode, step, labels = bank.samples(kind, position_split)
        if len(labels) == 0:
            raise ValueError(f"no {position_split!r} samples of kind {kind!r}; roll out more eval episodes")
        query = query_table(text, kind)[:1] if use_query else None
        visual = torch.cat([
            head(bank.clips(kind, episode[i : i + batch_size], step[i : i + batch_size]), grid_hw, query)
            for i in range(0, len(labels), batch_size)
        ])  # (M, E)
        table = caption_table(text, kind, template_split)  # (L, V, E)
        per_variant = [retrieval_metrics(visual, table[:, v], labels) for v in range(table.shape[1])]
        for key in per_variant[0]:
            metrics[f"{kind}/{key}"] = sum(m[key] for m in per_variant) / len(per_variant)
        metrics[f"{kind}/num_clips"] = float(len(labels))
    return metrics


def load_language_head(directory: str | Path) -> tuple[LanguageHead, HeadMeta]:
    """A head saved by ``train_language`` (``<output_dir>/language_head``) and its metadata."""
    directory = Path(directory)
    raw = read_config(directory)
    try:
        meta = HeadMeta(**raw)
    except TypeError as err:
        raise ValueError(f"{directory / CONFIG_FILE} is not a language head config ({err}); keys: {sorted(raw)}") from err
    meta.grid_hw, meta.kinds = tuple(meta.grid_hw), tuple(meta.kinds)
    head = LanguageHead(LanguageHeadConfig(**meta.head))
    load_modules(directory, {"head": head})
    return head.eval(), meta


def train_language(cfg: DictConfig) -> dict[str, float]:
    """Train (or resume) a language head; returns the final retrieval metrics on rank 0 ({} elsewhere).

    Under torchrun the caller ends the process group (``finish_distributed``), as the scripts do.
    """
    _validate(cfg)
    info = init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    resume_dir = claim_run_directory(out, cfg.train.resume, info.is_main)
    setup_logging(out, info.is_main)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    seed_everything(cfg.seed)  # same on every rank and on resume: a random-init encoder is rebuilt identically
    latent_encoder = build_frozen_latent_encoder(cfg).to(info.device)
    seed_everything(cfg.seed + info.rank)
    side = latent_encoder.grid(latent_encoder.encoder.cfg.img_size)[1]
    grid_hw = (side, side)
    text = load_text_encoder(cfg.text_encoder)
    bank = LatentBank(latent_encoder, cfg, cfg.data.seed, cfg.data.train_episodes)
    train_samples = {kind: bank.samples(kind, "train") for kind in cfg.kinds}
    captions = {kind: caption_table(text, kind, "train") for kind in cfg.kinds}  # (L, V, Dt)
    queries = {kind: query_table(text, kind) for kind in cfg.kinds}

    size = dict(LANGUAGE_HEAD_SIZES[cfg.head.size])
    size.update({k: v for k, v in OmegaConf.to_container(cfg.head).items() if k != "size" and v is not None})
    standardize = size.pop("standardize_latents", True)
    head_config = LanguageHeadConfig(
        latent_dim=bank.latents.shape[-1], embed_dim=text.dim, num_query_tokens=size.pop("num_query_tokens", 1) if cfg.use_query else 0,
        num_tokens=bank.latents.shape[2] if standardize else 0, **size,
    )
    head = LanguageHead(head_config)
    if standardize:
        head.fit_latent_stats(bank.latents.flatten(0, 1))  # training frames only; identical on every rank
    head = head.to(info.device)
    optim_cfg = OptimConfig(**OmegaConf.to_container(cfg.optim))
    optimizer = build_optimizer(head, optim_cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    last = out / "checkpoints" / "last"
    start = 0
    if resume_dir is not None:
        start = resume_from(resume_dir, {"head": head}, optimizer, resolved, RESUME_KEYS, info.world_size)
    model = wrap_ddp(head, info)
    metrics_writer = MetricsWriter(out / "metrics.jsonl", info.is_main, resume_step=start if start else None)
    guard = NonFiniteGuard(info.device)
    per_rank = cfg.train.batch_size // info.world_size
    rank_slice = slice(info.rank * per_rank, (info.rank + 1) * per_rank)

    def save(step: int) -> None:
        guard.check()
        if info.is_main:
            save_checkpoint(last, module_tensors({"head": unwrap(model)}), resolved,
                            {"optimizer": optimizer.state_dict(), "rng": capture_rng_state(), "step": step,
                             "world_size": info.world_size})
            refresh_run_curves(out)

    model.train()
    for step in tqdm(range(start, cfg.train.steps), desc="language head", disable=not info.is_main):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        kind = cfg.kinds[step % len(cfg.kinds)]
        episode, end_step, labels = train_samples[kind]
        pick = torch.randint(len(labels), (cfg.train.batch_size,), generator=g)[rank_slice]
        variant = torch.randint(captions[kind].shape[1], (cfg.train.batch_size,), generator=g)[rank_slice]
        query_pick = torch.randint(len(queries[kind]), (cfg.train.batch_size,), generator=g)[rank_slice]
        clips = bank.clips(kind, episode[pick], end_step[pick]).to(info.device)  # (b, frames, N, D)
        target = captions[kind][labels[pick], variant].to(info.device)  # (b, Dt)
        query = queries[kind][query_pick].to(info.device) if cfg.use_query else None
        lr, _ = apply_schedule(optimizer, step, optim_cfg, cfg.train.steps)
        visual = model(clips, grid_hw, query)
        loss, accuracy = info_nce(visual, target, unwrap(model).temperature_scale(), labels[pick].to(info.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), optim_cfg.grad_clip)
        optimizer.step()
        guard.observe(loss, step)
        if (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.steps:
            guard.check()
            record = {"step": step + 1, "kind": kind, "loss": all_reduce_mean(loss, info).item(),
                      "accuracy": all_reduce_mean(accuracy, info).item(), "lr": lr,
                      "temperature": 1.0 / unwrap(model).temperature_scale().item()}
            metrics_writer.write(record)
            log.info("step %d %s loss %.4f acc %.3f", record["step"], kind, record["loss"], record["accuracy"])
        if (step + 1) % cfg.train.checkpoint_every == 0 and step + 1 < cfg.train.steps:
            save(step + 1)
    save(cfg.train.steps)
    metrics_writer.close()
    barrier(info)  # no rank leaves while rank 0 may still be writing the last checkpoint

    results: dict[str, float] = {}
    if info.is_main:
        head = unwrap(model)
        meta = HeadMeta(asdict(head_config), cfg.text_encoder, grid_hw, cfg.data.clip_frames, tuple(cfg.kinds),
                        bool(cfg.use_query), cfg.world_model)
        save_checkpoint(out / HEAD_DIR, module_tensors({"head": head}), asdict(meta))
        memory = build_goal_memory(head, bank, text, grid_hw, cfg.use_query)
        log.info("goal memory: %d training frames -> %s", len(memory), memory.save(out / HEAD_DIR))
        del bank
        eval_bank = LatentBank(latent_encoder, cfg, cfg.data.eval_seed, cfg.data.eval_episodes)
        for template_split, position_split in (("heldout", "heldout"), ("train", "train")):
            scores = evaluate_retrieval(head, eval_bank, text, grid_hw, cfg.kinds, cfg.use_query, template_split, position_split)
            results.update({f"{template_split}_templates/{position_split}_positions/{k}": v for k, v in scores.items()})
        (out / "retrieval.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        for key, value in sorted(results.items()):
            if "R@" in key and "chance" not in key:
                log.info("%s = %.3f", key, value)
    return results
