"""Uses of the shared space: zero-shot classification, retrieval, and selective decoding.

* ``retrieval_metrics``: rank L candidate captions for each of M clips (clip -> caption)
  and the M clips for each caption (caption -> clip); Recall@k in both directions.
* ``segment_stream``: agglomerative clustering of a stream of frame embeddings with a
  temporal-contiguity constraint: only adjacent segments may merge, the pair with the
  smallest Ward cost merges first, until the cheapest merge costs more than
  ``threshold`` (or ``num_segments`` remain).
* ``selective_decode``: decode (retrieve the nearest caption for) each segment once,
  instead of every frame, and report the decodes saved and the caption accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def recall_at_k(similarity: Tensor, correct: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Share of rows whose top-k columns (by ``similarity`` (Q, C)) hold a ``correct`` (Q, C) entry."""
    if similarity.shape != correct.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and correct {tuple(correct.shape)} must match")
    order = similarity.argsort(dim=1, descending=True)  # (Q, C)
    hits = correct.gather(1, order)  # (Q, C) bool, ranked
    first_hit = torch.where(hits.any(1), hits.float().argmax(1), similarity.shape[1])  # (Q,)
    return {k: (first_hit < k).float().mean().item() for k in ks}


def retrieval_metrics(visual: Tensor, captions: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Clip <-> caption retrieval between (M, E) clip embeddings with ``labels`` (M,) and (L, E)
    caption embeddings, caption i describing label i. Also returns each direction's chance R@1."""
    if visual.dim() != 2 or captions.dim() != 2 or visual.shape[1] != captions.shape[1]:
        raise ValueError(f"need (M, E) clips and (L, E) captions, got {tuple(visual.shape)} and {tuple(captions.shape)}")
    if labels.shape != visual.shape[:1] or labels.min() < 0 or labels.max() >= len(captions):
        raise ValueError(f"labels must be (M,) = ({len(visual)},) ints in [0, {len(captions)}), got {labels.tolist()[:10]}...")
    similarity = visual @ captions.T  # (M, L)
    correct = labels[:, None] == torch.arange(len(captions), device=labels.device)  # (M, L)
    present = correct.any(0)  # captions whose label occurs among the clips
    metrics = {}
    for k, value in recall_at_k(similarity, correct, ks).items():
        metrics[f"clip_to_caption_R@{k}"] = value
    for k, value in recall_at_k(similarity.T[present], correct.T[present], ks).items():
        metrics[f"caption_to_clip_R@{k}"] = value
    metrics["clip_to_caption_chance_R@1"] = 1.0 / len(captions)
    metrics["caption_to_clip_chance_R@1"] = correct.T[present].float().mean(1).mean().item()
    metrics["accuracy"] = (similarity.argmax(1) == labels).float().mean().item()
    return metrics


def segment_stream(
    embeddings: Tensor, threshold: float | None = None, num_segments: int | None = None
) -> Tensor:
    """Contiguous agglomerative segmentation of (T, E) embeddings -> (T,) segment id per frame.

    Ward linkage between neighbours: cost(a, b) = n_a n_b / (n_a + n_b) * |mean_a - mean_b|^2.
    Each merge step updates all neighbour costs at once; T - 1 merges at most.
    """
    if embeddings.dim() != 2 or len(embeddings) == 0:
        raise ValueError(f"embeddings must be a non-empty (T, E) stream, got {tuple(embeddings.shape)}")
    if (threshold is None) == (num_segments is None):
        raise ValueError("give exactly one of threshold (max merge cost) or num_segments")
    if num_segments is not None and not 1 <= num_segments <= len(embeddings):
        raise ValueError(f"num_segments={num_segments} must be in [1, {len(embeddings)}]")
    sums = embeddings.double().clone()  # (S, E) per-segment sums
    counts = torch.ones(len(embeddings), dtype=torch.float64)  # (S,)
    starts = torch.arange(len(embeddings))  # (S,) first frame of each segment
    target = 1 if num_segments is None else num_segments
    while len(counts) > target:
        means = sums / counts[:, None]
        n_a, n_b = counts[:-1], counts[1:]
        cost = n_a * n_b / (n_a + n_b) * (means[:-1] - means[1:]).pow(2).sum(1)  # (S-1,)
        best = int(cost.argmin())
        if threshold is not None and cost[best] > threshold:
            break
        sums = torch.cat([sums[:best], sums[best : best + 2].sum(0, keepdim=True), sums[best + 2 :]])
        counts = torch.cat([counts[:best], counts[best : best + 2].sum(0, keepdim=True), counts[best + 2 :]])
        starts = torch.cat([starts[: best + 1], starts[best + 2 :]])
    is_start = torch.zeros(len(embeddings), dtype=torch.long)
    is_start[starts] = 1
    return is_start.cumsum(0) - 1  # (T,)


def boundaries(segment_ids: Tensor) -> Tensor:
    """Frames where a new segment starts (excluding frame 0)."""
    return torch.nonzero(segment_ids[1:] != segment_ids[:-1]).flatten() + 1


@dataclass
class SelectiveDecoding:
    segment_ids: Tensor  # (T,)
    frame_labels: Tensor  # (T,) caption label assigned to each frame through its segment
    per_frame_labels: Tensor  # (T,) label when decoding every frame
    decodes: int
    frames: int

    @property
    def decode_savings(self) -> float:
        """How many times fewer decodes than per-frame decoding."""
        return self.frames / self.decodes


def selective_decode(
    embeddings: Tensor, caption_embeddings: Tensor, threshold: float | None = None, num_segments: int | None = None
) -> SelectiveDecoding:
    """Segment a (T, E) stream, then decode each segment's mean embedding against (L, E) captions."""
    segment_ids = segment_stream(embeddings, threshold=threshold, num_segments=num_segments)
    n_segments = int(segment_ids[-1]) + 1
    sums = torch.zeros(n_segments, embeddings.shape[1], dtype=embeddings.dtype).index_add_(0, segment_ids, embeddings)
    segment_labels = (F.normalize(sums, dim=-1) @ caption_embeddings.T).argmax(1)  # (S,) one decode per segment
    per_frame = (embeddings @ caption_embeddings.T).argmax(1)  # (T,) the baseline: decode every frame
    return SelectiveDecoding(segment_ids, segment_labels[segment_ids], per_frame, n_segments, len(embeddings))
