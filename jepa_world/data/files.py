"""Folder-of-files datasets: file discovery, per-sample randomness and bad-file skipping.

Shared by ``VideoFolderDataset`` and ``ImageFolderDataset``.

Randomness: each sample draws a numpy Generator from torch's global RNG, so whoever
seeds torch per sample (the pretraining loop seeds it from ``(seed, epoch, index)``)
fixes the clip start, crop and flip; DataLoader workers otherwise get torch's usual
per-worker seeds.

Bad files: a file that cannot be read raises ``UnreadableFileError`` naming it. With
``skip_bad_files=True`` the dataset logs it, remembers it (per process) and serves the
next readable file in sorted order instead, ``(index + 1) % len``, ``(index + 2) % len``,
..., keeping the sample's own random draws, so the substitute is deterministic.
"""
from __future__ import annotations

import abc

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)


class UnreadableFileError(RuntimeError):
    """A data file that could not be decoded; the message names the file."""


def list_files(root: str | Path, extensions: Sequence[str], what: str) -> list[Path]:
    """Sorted files under ``root`` (recursively) whose suffix is in ``extensions`` (case-insensitive)."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"{what} folder {str(root)!r} does not exist or is not a directory")
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    if not suffixes:
        raise ValueError(f"extensions={tuple(extensions)!r}: expected at least one file extension")
    files = sorted(p for p in root_path.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    if not files:
        raise FileNotFoundError(f"no {what} files with extensions {sorted(suffixes)} under {str(root)!r}")
    return files


def sample_seed() -> int:
    """A seed for one sample's numpy Generator, drawn from torch's global RNG (see the module docstring)."""
    return int(torch.randint(0, 2**62, ()).item())


class FileFolderDataset(Dataset, abc.ABC):
    """Base class: ``load(path, rng)`` reads one file; ``__getitem__`` handles bad files."""

    what = "data"

    def __init__(self, root: str | Path, extensions: Sequence[str], skip_bad_files: bool) -> None:
        self.root = Path(root)
        self.files = list_files(root, extensions, self.what)
        self.skip_bad_files = bool(skip_bad_files)
        self.bad_files: set[Path] = set()  # bad files met by this process (each worker has its own)

    def __len__(self) -> int:
        return len(self.files)

    @abc.abstractmethod
    def load(self, path: Path, rng: np.random.Generator) -> Any:
        """Read one file into a sample; raise on unreadable content."""

    def __getitem__(self, index: int) -> Any:
        if not -len(self.files) <= index < len(self.files):
            raise IndexError(f"{type(self).__name__} index {index} out of range for {len(self.files)} files")
        seed = sample_seed()
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            if path in self.bad_files:
                continue
            try:
                return self.load(path, np.random.default_rng(seed))  # a substitute gets the same draws
            except UnreadableFileError as error:
                if not self.skip_bad_files:
                    raise
                self.bad_files.add(path)
                logger.warning("skipping %s (%d bad %s files so far): %s", path, len(self.bad_files), self.what, error)
        raise UnreadableFileError(f"all {len(self.files)} {self.what} files under {str(self.root)!r} are unreadable")
