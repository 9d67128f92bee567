"""Goal specs: seed:N, goal-state sidecars from make_goal.py, and image files (with bad input)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import envs
from envs.goals import load_goal, read_goal_image, save_goal

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def reach():
    env = envs.make("reach")
    env.reset(seed=0)
    yield env
    env.close()


def test_seed_spec_matches_the_envs_own_goal(reach):
    image, state = load_goal("seed:7", reach)
    other = envs.make("reach").unwrapped
    assert other.set_goal(seed=7) == state
    np.testing.assert_array_equal(image, other.goal_image())
    np.testing.assert_array_equal(reach.unwrapped.goal_image(), image)  # installed in the env
    with pytest.raises(ValueError, match="seed:N"):
        load_goal("seed:x", reach)


def test_make_goal_script_writes_the_goal_image_and_a_sidecar_that_judges_success(tmp_path, reach):
    out = tmp_path / "goals" / "goal.png"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_goal.py"), "env=reach", "seed=5", f"out={out}"],
        cwd=tmp_path, check=True, capture_output=True, timeout=300,
    )
    written = np.asarray(Image.open(out))
    u = reach.unwrapped
    u.set_goal(seed=5)
    np.testing.assert_array_equal(written, u.goal_image())
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["seed"] == 5 and sidecar["env"] == "reach" and sidecar["goal_state"] == u.goal_state()

    # The sidecar restores the goal, so success can be judged on a fresh env ...
    fresh = envs.make("reach")
    fresh.reset(seed=1)
    image, state = load_goal(out.with_suffix(".json"), fresh)
    np.testing.assert_array_equal(image, written)
    assert state == sidecar["goal_state"]
    for _ in range(50):
        _, _, _, _, info = fresh.step(fresh.unwrapped.expert_action())
    assert info["is_success"] is True
    # ... and so does the PNG beside it, because the sidecar renders to exactly that image ...
    image, state = load_goal(out, fresh)
    np.testing.assert_array_equal(image, written)
    assert state == sidecar["goal_state"]
    # ... while a copy of the PNG without its sidecar gives the same image and an unknown success.
    alone = tmp_path / "alone" / "goal.png"
    alone.parent.mkdir()
    alone.write_bytes(out.read_bytes())
    image, state = load_goal(alone, fresh)
    np.testing.assert_array_equal(image, written)
    assert state is None
    _, _, _, _, info = fresh.step(np.zeros(3, np.float32))
    assert info["is_success"] is None


def test_a_sidecar_that_renders_to_another_image_is_ignored(tmp_path, reach, caplog):
    u = reach.unwrapped
    u.set_goal(seed=5)
    save_goal(tmp_path / "goal.png", u.goal_image(), u.goal_state(), env="reach", image_size=u.image_size, seed=5)
    u.set_goal(seed=6)  # a stale sidecar: the state of another goal beside the seed-5 image
    stale = json.loads((tmp_path / "goal.json").read_text())
    stale["goal_state"] = u.goal_state()
    (tmp_path / "goal.json").write_text(json.dumps(stale))
    with caplog.at_level("WARNING", logger="envs.goals"):
        image, state = load_goal(tmp_path / "goal.png", reach)
    assert state is None and "renders to a different image" in caplog.text
    assert reach.unwrapped.distance_to_goal() != reach.unwrapped.distance_to_goal()  # nan: success unknown


def test_sidecar_restores_at_another_resolution(tmp_path, reach):
    state = reach.unwrapped.set_goal(seed=2)
    sidecar = save_goal(tmp_path / "g.png", reach.unwrapped.goal_image(), state, env="reach", seed=2)
    big = envs.make("reach", image_size=224)
    image, restored = load_goal(sidecar, big)
    assert image.shape == (224, 224, 3) and restored == state


def test_wrong_env_or_corrupt_sidecar_is_rejected(tmp_path, reach):
    push = envs.make("push")
    state = push.unwrapped.set_goal(seed=0)
    sidecar = save_goal(tmp_path / "push.png", push.unwrapped.goal_image(), state, env="push")
    with pytest.raises(ValueError, match="push"):
        load_goal(sidecar, reach)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        load_goal(broken, reach)
    missing_key = tmp_path / "nokey.json"
    missing_key.write_text(json.dumps({"goal_state": {"env": "reach"}}))
    with pytest.raises(ValueError, match="qpos"):
        load_goal(missing_key, reach)


def test_resized_image_with_warning(tmp_path, reach, caplog):
    big = envs.make("reach", image_size=128)
    big.unwrapped.set_goal(seed=3)
    path = tmp_path / "big.png"
    Image.fromarray(big.unwrapped.goal_image()).save(path)
    with caplog.at_level(logging.WARNING, logger="envs.goals"):
        image, state = load_goal(path, reach)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and state is None
    assert any("resizing" in r.message for r in caplog.records)
    # The downscaled 128 px render is close to the native 64 px render of the same goal.
    reach.unwrapped.set_goal(seed=3)
    assert np.abs(image.astype(float) - reach.unwrapped.goal_image()).mean() < 12


def test_jpeg_is_accepted(tmp_path, reach):
    reach.unwrapped.set_goal(seed=4)
    native = reach.unwrapped.goal_image()
    path = tmp_path / "goal.jpg"
    Image.fromarray(native).save(path, quality=95)
    image, _ = load_goal(path, reach)
    assert np.abs(image.astype(float) - native).mean() < 6


def test_grayscale_is_converted_to_rgb(tmp_path, reach, caplog):
    gray = np.tile(np.arange(64, dtype=np.uint8)[None] * 4, (64, 1))
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    with caplog.at_level(logging.WARNING, logger="envs.goals"):
        image, _ = load_goal(path, reach)
    assert image.shape == (64, 64, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)
    assert any("grayscale" in r.message for r in caplog.records)


def test_opaque_rgba_is_converted_and_transparent_rgba_rejected(tmp_path, reach):
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    opaque = tmp_path / "opaque.png"
    Image.fromarray(np.dstack([rgb, np.full((64, 64), 255, np.uint8)]), mode="RGBA").save(opaque)
    image, _ = load_goal(opaque, reach)
    np.testing.assert_array_equal(image, rgb)
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[0, 0] = 0
    transparent = tmp_path / "transparent.png"
    Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").save(transparent)
    with pytest.raises(ValueError, match=r"transparent\.png.*transparent pixels"):
        load_goal(transparent, reach)


def test_missing_file_and_non_image_name_the_path(tmp_path, reach):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.png"):
        load_goal(tmp_path / "nowhere.png", reach)
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture")
    with pytest.raises(ValueError, match=r"notes\.png.*not an image"):
        load_goal(fake, reach)
    with pytest.raises(ValueError, match=r"must end in \.png"):
        save_goal(tmp_path / "goal.jpg", np.zeros((64, 64, 3), np.uint8), {})


def test_read_goal_image_returns_a_writable_copy(tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    image = read_goal_image(path, 64)
    image[0, 0, 0] = 1  # callers may normalise in place
