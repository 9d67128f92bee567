"""Image-folder pretraining dataset (the I-JEPA path), read with PIL."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from .files import FileFolderDataset, UnreadableFileError
from .transforms import ClipTransform

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolderDataset(FileFolderDataset):
    """Every image under ``root`` (recursive, sorted) as a normalised (3, R, R) float.

    I-JEPA's augmentation is a random-resized crop with scale (0.3, 1.0) and no flip;
    ``crop_scale=None`` takes the centred square instead. Images are converted to RGB.
    Bad files raise ``UnreadableFileError`` or are skipped (``skip_bad_files=True``),
    as described in ``jepa_world.data.files``.
    """

    what = "image"

    def __init__(
        self,
        root: str | Path,
        resolution: int = 224,
        crop_scale: Sequence[float] | None = (0.3, 1.0),
        hflip: bool = False,
        skip_bad_files: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        crop_aspect_ratio: Sequence[float] = (3 / 4, 4 / 3),
    ) -> None:
        self.transform = ClipTransform(resolution, crop_scale, crop_aspect_ratio, hflip)
        super().__init__(root, extensions, skip_bad_files)

    def read_image(self, path: Path) -> np.ndarray:
        """uint8 (H, W, 3)."""
        try:
            with Image.open(path) as image:
                return np.array(image.convert("RGB"))  # a writable copy for torch
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise UnreadableFileError(f"cannot read image {str(path)!r}: {error}") from error

    def load(self, path: Path, rng: np.random.Generator) -> Tensor:
        return self.transform(self.read_image(path)[None], rng)[:, 0]  # (3, R, R)
