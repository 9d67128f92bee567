"""Ground a language goal in the robot's own experience: where do matching frames put the arm?

The shared-space energy alone (``1 - cos(head(z_H), text)``) needs a world model whose
predicted latents move with the actions; on CPU-scale models they barely do (issue #4), so
that energy is nearly flat over plans. ``GoalMemory`` gives language goals the same slope
image goals get from the state readout, using only what VL-JEPA already provides:

1. at the end of ``train_language`` the head embeds every training frame (the robot's
   experience, no captions) and stores those embeddings with the proprio end-effector
   position observed at that frame (``goal_memory.safetensors`` next to the head);
2. at planning time the goal sentence's text embedding retrieves the ``top_k`` most similar
   frames in the shared space, and their mean end-effector position is the goal position;
3. the planner adds ``weight * ||ee_now + sum(actions) - goal position||`` to the
   shared-space energy, exactly like the image-goal readout term.

The memory holds no captions and no evaluation episodes: a held-out paraphrase is grounded
only through the head's shared space.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from jepa_world.atomic_files import atomic_path

MEMORY_FILE = "goal_memory.safetensors"


class GoalMemory:
    """(M, Et) unit shared-space embeddings of experienced frames and their (M, K) positions."""

    def __init__(self, embeddings: Tensor, positions: Tensor):
        if embeddings.ndim != 2 or positions.ndim != 2 or len(embeddings) != len(positions) or len(embeddings) == 0:
            raise ValueError(f"goal memory needs (M, Et) embeddings and (M, K) positions with M > 0, got "
                             f"{tuple(embeddings.shape)} and {tuple(positions.shape)}")
        self.embeddings = F.normalize(embeddings.float(), dim=-1)
        self.positions = positions.float()

    def __len__(self) -> int:
        return len(self.embeddings)

    def check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= len(self):
            raise ValueError(f"language_top_k={top_k} must be in [1, {len(self)}] (frames in the goal memory)")

    def locate(self, text_embeddings: Tensor, top_k: int) -> Tensor:
        """(E, Et) goal-text embeddings -> (E, K) mean position of the ``top_k`` closest frames."""
        self.check_top_k(top_k)
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"text embeddings must be (E, {self.embeddings.shape[1]}), got {tuple(text_embeddings.shape)}")
        similarity = F.normalize(text_embeddings.float(), dim=-1).cpu() @ self.embeddings.T  # (E, M)
        nearest = similarity.topk(top_k, dim=1).indices  # (E, top_k)
        return self.positions[nearest].mean(dim=1)  # (E, K)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MEMORY_FILE
        tmp = atomic_path(path)
        try:
            # Unit vectors lose nothing that matters for ranking in fp16, and the file halves.
            save_file({"embeddings": self.embeddings.half().contiguous(), "positions": self.positions.contiguous()}, str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> GoalMemory | None:
        """The memory saved beside a language head, or None for heads trained before it existed."""
        path = Path(directory) / MEMORY_FILE
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        missing = {"embeddings", "positions"} - set(tensors)
        if missing:
            raise ValueError(f"{path} lacks {sorted(missing)}; retrain the head with scripts/train_language.py")
        return cls(tensors["embeddings"], tensors["positions"])
