"""Templated captions from simulator state, with held-out templates and held-out positions.

Facts are read off simulator state, never off pixels, so a caption is ground truth:

* ``arm``: which of 9 table regions the end effector is in (3x3 grid in image layout),
* ``motion``: where the end effector moves over a clip (left/right/up/down/still),
* ``block``: which region the pushed block is in (``push`` only).

Positions are given in image-aligned table coordinates ``uv``: ``u`` in [0, 1] runs
left -> right and ``v`` in [0, 1] runs top -> bottom *as the camera sees the table*, so
"upper left" means the upper left of the rendered frame. ``envs`` maps world xy to uv.

Generalisation splits (documented in docs/language.md):

* **templates**: every fact has several paraphrase templates; the ``"train"`` ones are
  used for training, the ``"heldout"`` ones (other verbs, nouns and sentence frames)
  only for evaluation and for language goals in the planner.
* **positions**: each 3x3 region is cut into 2x2 sub-cells and one of them, at a
  different corner in neighbouring regions, is held out (``is_held_out_position``), so
  a quarter of each region's area is never seen in training.

Everything is vectorised over leading batch dims; label tensors are ``long``.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")
FACT_KINDS: tuple[str, ...] = ("arm", "motion", "block")

# Row-major over the 3x3 grid: index = 3 * row + col, row 0 = top of the image.
REGIONS: tuple[str, ...] = (
    "upper left", "upper centre", "upper right",
    "centre left", "centre", "centre right",
    "lower left", "lower centre", "lower right",
)
# Paraphrases of each region's name; templates draw from all of them.
REGION_PHRASES: tuple[tuple[str, ...], ...] = (
    ("upper left", "top left"), ("upper middle", "top centre"), ("upper right", "top right"),
    ("middle left", "left side"), ("centre", "middle"), ("middle right", "right side"),
    ("lower left", "bottom left"), ("lower middle", "bottom centre"), ("lower right", "bottom right"),
)
MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "still")
MOTION_PHRASES: tuple[tuple[str, ...], ...] = (
    ("to the left", "leftward"), ("to the right", "rightward"), ("up", "towards the top"),
    ("down", "towards the bottom"), ("very little", "hardly at all"),
)

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "arm": {
        "train": (
            "the arm is at the {}",
            "the gripper is in the {} of the table",
            "the end effector sits at the {}",
            "move the arm to the {}",
            "the robot arm reaches the {} of the workspace",
        ),
        "heldout": (
            "the robot's hand rests in the {} area",
            "bring the fingertip over to the {}",
            "the manipulator ends up at the {} of the frame",
        ),
    },
    "motion": {
        "train": (
            "the arm moves {}",
            "the gripper is moving {}",
            "the end effector travels {}",
        ),
        "heldout": (
            "the robot's hand slides {}",
            "the manipulator heads {}",
        ),
    },
    "block": {
        "train": (
            "the block is at the {}",
            "the cube sits in the {} of the table",
            "the block lies at the {} of the workspace",
        ),
        "heldout": (
            "the object rests in the {} area",
            "the pushed box ends up at the {}",
        ),
    },
}
QUERIES: dict[str, tuple[str, ...]] = {
    "arm": ("where is the arm?", "where is the gripper?"),
    "motion": ("how is the arm moving?", "which way does the gripper go?"),
    "block": ("where is the block?", "where is the cube?"),
}
NUM_LABELS: dict[str, int] = {"arm": len(REGIONS), "motion": len(MOTIONS), "block": len(REGIONS)}
_PHRASES: dict[str, tuple[tuple[str, ...], ...]] = {"arm": REGION_PHRASES, "motion": MOTION_PHRASES, "block": REGION_PHRASES}

# A motion whose clip displacement is below this (in uv units) is "still".
STILL_THRESHOLD = 0.05


def _check_kind(kind: str) -> None:
    if kind not in FACT_KINDS:
        raise ValueError(f"unknown fact kind {kind!r}; expected one of {FACT_KINDS}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown template split {split!r}; expected one of {SPLITS}")


def _check_uv(uv: Tensor) -> None:
    if uv.shape[-1] != 2:
        raise ValueError(f"uv positions must end in 2 coordinates (u, v), got shape {tuple(uv.shape)}")


def region_index(uv: Tensor) -> Tensor:
    """(..., 2) uv in [0, 1] -> (...) index into REGIONS; points outside are clamped to the edge cells."""
    _check_uv(uv)
    cell = (uv.clamp(0.0, 1.0) * 3).floor().clamp(max=2).long()  # (..., 2) = (col, row)
    return 3 * cell[..., 1] + cell[..., 0]


def is_held_out_position(uv: Tensor) -> Tensor:
    """(..., 2) -> (...) bool: True inside the held-out sub-cell of each region.

    Each region is split 2x2; the held-out quarter sits at sub-cell
    ``(row % 2, col % 2)`` of the region, so its corner alternates between neighbours.
    """
    _check_uv(uv)
    sub = (uv.clamp(0.0, 1.0) * 6).floor().clamp(max=5).long()  # (..., 2) = (sub col, sub row)
    col, row = sub[..., 0] // 2, sub[..., 1] // 2
    return (sub[..., 0] % 2 == col % 2) & (sub[..., 1] % 2 == row % 2)


def motion_index(uv_start: Tensor, uv_end: Tensor, still_threshold: float = STILL_THRESHOLD) -> Tensor:
    """Dominant direction of ``uv_end - uv_start`` -> (...) index into MOTIONS."""
    _check_uv(uv_start)
    _check_uv(uv_end)
    delta = uv_end - uv_start  # (..., 2)
    horizontal = delta[..., 0].abs() >= delta[..., 1].abs()
    index = torch.where(
        horizontal,
        torch.where(delta[..., 0] < 0, 0, 1),
        torch.where(delta[..., 1] < 0, 2, 3),  # v grows downwards: negative dv is "up"
    )
    return torch.where(delta.norm(dim=-1) < still_threshold, MOTIONS.index("still"), index).long()


def templates(kind: str, split: Split) -> tuple[str, ...]:
    _check_kind(kind)
    _check_split(split)
    return TEMPLATES[kind][split]


def label_names(kind: str) -> tuple[str, ...]:
    _check_kind(kind)
    return MOTIONS if kind == "motion" else REGIONS


def caption(kind: str, label: int, split: Split = "train", template: int = 0, phrase: int = 0) -> str:
    """One caption: the ``template``-th template of ``split`` filled with the ``phrase``-th name of ``label``."""
    frames = templates(kind, split)
    phrases = _PHRASES[kind]
    if not 0 <= label < len(phrases):
        raise ValueError(f"label {label} is out of range for {kind!r} facts (0..{len(phrases) - 1})")
    return frames[template % len(frames)].format(phrases[label][phrase % len(phrases[label])])


def all_captions(kind: str, split: Split) -> list[tuple[str, int]]:
    """Every (caption, label) of a split: templates x labels x phrases, for caching embeddings."""
    n_templates, n_phrases = len(templates(kind, split)), len(_PHRASES[kind][0])
    return [
        (caption(kind, label, split, t, p), label)
        for label in range(NUM_LABELS[kind]) for t in range(n_templates) for p in range(n_phrases)
    ]


def sample_captions(kind: str, labels: Tensor, split: Split, generator: torch.Generator | None = None) -> list[str]:
    """A random paraphrase (template and phrase) of ``split`` for each label in ``labels`` (B,)."""
    n_templates, n_phrases = len(templates(kind, split)), len(_PHRASES[kind][0])
    picks = torch.randint(0, n_templates * n_phrases, (labels.numel(),), generator=generator)
    return [
        caption(kind, int(label), split, int(pick) // n_phrases, int(pick) % n_phrases)
        for label, pick in zip(labels.flatten().tolist(), picks.tolist())
    ]


def candidate_captions(kind: str, split: Split = "heldout", template: int = 0, phrase: int = 0) -> list[str]:
    """One caption per label (label order) in a fixed paraphrase: zero-shot class prompts."""
    return [caption(kind, label, split, template, phrase) for label in range(NUM_LABELS[kind])]


def query(kind: str, index: int = 0) -> str:
    _check_kind(kind)
    return QUERIES[kind][index % len(QUERIES[kind])]


def parse_region(text: str) -> int | None:
    """The region a goal sentence names (longest matching phrase wins), or None."""
    lowered = " ".join(text.lower().replace("-", " ").split())
    best: tuple[int, int] | None = None  # (phrase length, region)
    for region, phrases in enumerate(REGION_PHRASES):
        for phrase in (REGIONS[region], *phrases):
            if phrase in lowered and (best is None or len(phrase) > best[0]):
                best = (len(phrase), region)
    return None if best is None else best[1]
