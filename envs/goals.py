"""Goal specifications for planning and evaluation: images, seeds and saved goal states.

    image, state = load_goal("seed:3", env)          # the env's own goal for seed 3; state is a dict
    image, state = load_goal("goal.json", env)       # a saved goal state (sidecar written by save_goal)
    image, state = load_goal("goal.png", env)        # with a sidecar goal.json that renders to it: judged
    image, state = load_goal("photo.png", env)       # image only: state is None, success is unknown

`load_goal` also installs the goal in the env (`set_goal` or `set_goal_image`), so `info["is_success"]`
is judged against it, or is None for an image-only goal.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

SIDECAR_FORMAT = "jepa-world-goal/1"
GRAYSCALE_MODES = ("L", "1")
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# Another goal of the same env differs in >= 2.6% of the 64 px pixels (measured over 35 seeds of reach);
# 0.1% (4 pixels) leaves room only for rendering noise.
SIDECAR_MATCH_TOLERANCE = 1e-3


def load_goal(spec: str | os.PathLike, env: gym.Env) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Resolve `spec` (`seed:N`, a goal-state .json, or a PNG/JPEG path) into (goal image, goal state
    or None) at the env's resolution, and set it as the env's goal."""
    target = env.unwrapped
    text = os.fspath(spec)
    if text.startswith("seed:"):
        seed_text = text[len("seed:"):]
        if not seed_text.isdigit():
            raise ValueError(f"goal spec {text!r}: expected seed:N with N a non-negative integer")
        state = target.set_goal(seed=int(seed_text))
        return target.goal_image(), state
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(
            f"goal file {path} does not exist (expected a PNG/JPEG image, a goal-state .json, or seed:N)"
        )
    if path.suffix.lower() == ".json":
        state = target.set_goal(state=read_goal_state(path, target.env_name))
        return target.goal_image(), state
    image = read_goal_image(path, target.image_size)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        # The sidecar's state judges success only if it renders to this very image, so a stale or
        # unrelated sidecar can never make up a success; the planner sees only the image either way.
        state = target.set_goal(state=read_goal_state(sidecar, target.env_name))
        mismatch = rendered_mismatch(target.goal_image(), image)
        if mismatch <= SIDECAR_MATCH_TOLERANCE:
            log.info("goal image %s: its sidecar %s renders to the same image, so success is judged on that "
                     "goal state (planning still sees only the image)", path, sidecar)
            return image, state
        log.warning("goal image %s: its sidecar %s renders to a different image (%.1f%% of pixels differ); "
                    "ignoring the sidecar", path, sidecar, 100 * mismatch)
    log.warning("goal given as an image only (%s): success cannot be judged and is reported as None", path)
    target.set_goal_image(image)
    return image, None


def rendered_mismatch(rendered: np.ndarray, image: np.ndarray) -> float:
    """Fraction of pixels where any channel differs by more than 8 levels (renderer noise allowance)."""
    difference = np.abs(rendered.astype(np.int16) - image.astype(np.int16)).max(axis=-1)
    return float((difference > 8).mean())


def read_goal_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Read an image file as (size, size, 3) uint8 RGB. Grayscale is expanded to RGB; RGBA is accepted
    only when fully opaque; other sizes are resized (with a warning)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            image = _to_rgb(img, path)
    except UnidentifiedImageError as err:
        raise ValueError(f"goal file {path} is not an image Pillow can read (expected PNG or JPEG)") from err
    if image.size != (size, size):
        width, height = image.size
        if width != height:
            log.warning("goal image %s is %dx%d, not square: its aspect ratio will be distorted", path, width, height)
        log.warning("goal image %s is %dx%d; resizing to the env's %dx%d", path, width, height, size, size)
        shrinking = width > size or height > size
        image = image.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8).copy()


def _to_rgb(img: Image.Image, path: Path) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img.copy()
    if mode in GRAYSCALE_MODES:
        log.warning("goal image %s is grayscale (mode %s); converting to RGB", path, mode)
        return img.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
        if mode == "RGB":
            return img
    if mode in ALPHA_MODES:
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise ValueError(
                f"goal image {path} has transparent pixels (alpha min {int(alpha.min())}); "
                "expected an opaque RGB image such as a saved render"
            )
        log.warning("goal image %s has an opaque alpha channel (mode %s); dropping it", path, mode)
        return img.convert("RGB")
    raise ValueError(f"goal image {path} has unsupported mode {mode!r}; expected 8-bit RGB, grayscale or opaque RGBA")


def read_goal_state(path: str | os.PathLike, env_name: str | None = None) -> dict[str, Any]:
    """Read a goal-state file: a sidecar written by save_goal, or a bare goal-state dict."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"goal-state file {path} is not valid JSON: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"goal-state file {path} must hold a JSON object, got {type(content).__name__}")
    state = content.get("goal_state", content)
    if not isinstance(state, dict):
        raise ValueError(f"goal-state file {path}: 'goal_state' must be an object, got {state!r}")
    if env_name is not None and state.get("env", env_name) != env_name:
        raise ValueError(f"goal-state file {path} is for env {state.get('env')!r}, but the env is {env_name!r}")
    return state


def save_goal(path: str | os.PathLike, image: np.ndarray, state: dict[str, Any], **metadata: Any) -> Path:
    """Write `image` as a PNG at `path` and the goal state as a JSON sidecar beside it (same stem).
    Both files are written to temporary names and renamed. Returns the sidecar path."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"goal image path {path} must end in .png (lossless, so renders compare exactly)")
    sidecar = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": SIDECAR_FORMAT, "image": path.name, **metadata, "goal_state": state}
    _write_atomic(path, lambda f: Image.fromarray(image).save(f, format="PNG"))
    _write_atomic(sidecar, lambda f: f.write(json.dumps(record, indent=2).encode()))
    return sidecar


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
