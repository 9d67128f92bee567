"""The model file format, and the one way every writer publishes a directory of it.

A model directory (a checkpoint, a shipped model, a feature cache) is written by
``write_directory``: files go into a hidden staging directory beside the target, are made
readable and fsynced, and the directory is swapped into place atomically. A checkpoint is::

    model.safetensors   flat prefixed tensors: "encoder.*", "target_encoder.*", "predictor.*", ...
    config.json         the resolved run config (plain JSON)
    train_state.pt      optimizer / step / RNG / data position, loaded with weights_only=True

The swap is ``renameat2(RENAME_EXCHANGE)`` on Linux, so ``last/`` is never missing or
half-written, even if the process is killed mid-save. Loading validates every key, shape and
value and raises ``CheckpointError`` naming the file and the key, so a bad checkpoint never
degrades into a silent restart.
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAIN_STATE_FILE = "train_state.pt"
TEMP_PREFIX = ".tmp-"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model/config being loaded."""


# --------------------------------------------------------------------------- writing


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange_directories(new: Path, target: Path) -> bool:
    """Atomically swap two existing directories (Linux renameat2). False if unsupported here."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(new), at_fdcwd, os.fsencode(target), rename_exchange)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2 exchange of {new} and {target} failed: {os.strerror(err)}")


def publish_directory(new: Path, target: Path) -> None:
    """Move the complete directory ``new`` to ``target``, replacing any existing one."""
    if not target.exists():
        os.rename(new, target)
    elif _exchange_directories(new, target):
        shutil.rmtree(new)  # ``new`` now holds the previous contents
    else:
        # No atomic exchange on this platform/filesystem: a short window without ``target``.
        retired = target.with_name(f"{TEMP_PREFIX}retired-{uuid.uuid4().hex[:8]}")
        os.rename(target, retired)
        os.rename(new, target)
        shutil.rmtree(retired)
    _fsync_path(target.parent)


def remove_stale_temp_dirs(parent: Path) -> None:
    """Delete temp directories left behind by a save that was killed part-way."""
    if parent.is_dir():
        for stale in parent.glob(f"{TEMP_PREFIX}*"):
            log.warning("removing incomplete checkpoint left by an interrupted save: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def module_tensors(modules: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    """Flatten ``{"encoder": enc, ...}`` into ``{"encoder.blocks.0...": tensor}`` (CPU, contiguous)."""
    flat: dict[str, Tensor] = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            if hasattr(value, "full_tensor"):  # FSDP2 DTensor shard -> full tensor on every rank
                value = value.full_tensor()
            flat[f"{prefix}.{key}"] = value.detach().to("cpu").contiguous()
    return flat


def unshared(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with every tensor whose storage an earlier one uses copied: safetensors refuses
    shared storage, which torch.save files have when two parts are the same tensors (an encoder and
    its EMA target at step 0)."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        pointer = value.untyped_storage().data_ptr() if value.numel() else None
        out[key] = value.clone() if pointer in seen else value
        if pointer is not None:
            seen.add(pointer)
    return out


def write_directory(directory: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Atomically (re)place ``directory`` with what ``write(staging)`` puts in a hidden staging
    directory beside it: every file is made world-readable and fsynced before the swap, so a
    reader or a crash sees the old directory or the complete new one, never a mix."""
    target = Path(directory)
    temp = target.with_name(f"{TEMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp.mkdir()
    except OSError as err:
        raise write_failure(target, err) from err
    published = False
    try:
        write(temp)
        for path in sorted(temp.rglob("*"), reverse=True):  # files before the directories holding them
            path.chmod(0o755 if path.is_dir() else 0o644)  # safetensors/mkstemp write 0600; models are shared
            _fsync_path(path)
        _fsync_path(temp)
        publish_directory(temp, target)
        published = True
    except (OSError, SafetensorError) as err:  # a full or read-only disk, a quota: name the directory and the cause
        raise write_failure(target, err) from err
    finally:
        if not published:
            shutil.rmtree(temp, ignore_errors=True)
    return target


def write_failure(target: Path, err: OSError | SafetensorError) -> OSError:
    """The error for a directory that could not be written: its path, the cause, the space left, and
    that the previous version (if any) is untouched."""
    if isinstance(err, OSError):
        code, cause = err.errno or errno.EIO, err.strerror or str(err)
    else:  # safetensors reports an I/O failure as text ending "(os error N)"
        found = re.search(r"os error (\d+)", str(err))
        code = int(found.group(1)) if found else errno.EIO
        cause = os.strerror(code) if found else str(err)
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {target} is intact" if target.exists() else f"nothing was written at {target}"
    return OSError(code, f"cannot write {target}: {cause} ({free}); {kept}")


def save_checkpoint(
    directory: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    config: Mapping[str, Any],
    train_state: Mapping[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint directory (see module docstring) and return its path.

    ``tensors`` is a flat mapping (use ``module_tensors``); ``config`` must be JSON-serialisable.
    Non-finite weights are refused: a checkpoint must always be safe to resume from.
    """
    bad = [key for key, value in tensors.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if bad:
        raise CheckpointError(f"refusing to write {directory}: non-finite values in {bad[:5]}")

    def write(temp: Path) -> None:
        save_file(unshared(tensors), str(temp / MODEL_FILE), metadata={"format": "pt"})
        (temp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if train_state is not None:  # serialised in memory first: torch.save into a file on a full disk
            buffer = io.BytesIO()        # raises an opaque "unexpected pos" error, a plain write an OSError
            torch.save(dict(train_state), buffer)
            (temp / TRAIN_STATE_FILE).write_bytes(buffer.getbuffer())

    return write_directory(directory, write)


def copy_checkpoint(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Atomically copy a checkpoint directory (e.g. ``last`` -> ``step_000500``)."""
    source = Path(source)
    return write_directory(destination, lambda temp: shutil.copytree(source, temp, dirs_exist_ok=True))


# --------------------------------------------------------------------------- reading


def _require_file(directory: Path, name: str) -> Path:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    path = directory / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint file {path} is missing")
    return path


def read_tensors(directory: str | os.PathLike) -> dict[str, Tensor]:
    path = _require_file(Path(directory), MODEL_FILE)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {path}: {err} (corrupt or truncated safetensors file?)") from err


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = _require_file(Path(directory), CONFIG_FILE)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"cannot parse {path}: {err}") from err


def read_train_state(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = _require_file(Path(directory), TRAIN_STATE_FILE)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next(("," + line.split(":", 2)[-1].split(" was not")[0] for line in str(err).splitlines() if "Unsupported global" in line), "")
        raise CheckpointError(
            f"cannot read {path}: it holds objects other than tensors and plain containers{reason}; refusing to unpickle it"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # torch raises these for truncated/bad zip data
        raise CheckpointError(f"cannot read {path}: {err}") from err


def load_modules(
    directory: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    tensors: Mapping[str, Tensor] | None = None,
) -> None:
    """Strictly load ``{prefix: module}`` from ``model.safetensors``.

    Every expected key must be present with the right shape and finite values; extra keys
    under a requested prefix are errors too. Prefixes not requested are ignored, so e.g. an
    evaluation can load only ``target_encoder``.
    """
    path = Path(directory) / MODEL_FILE
    tensors = read_tensors(directory) if tensors is None else tensors
    for prefix, module in modules.items():
        own = module.state_dict()
        stored = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        missing = sorted(set(own) - set(stored))
        unexpected = sorted(set(stored) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"{path} does not match module '{prefix}': missing keys "
                f"{[f'{prefix}.{k}' for k in missing[:5]]}, unexpected keys {[f'{prefix}.{k}' for k in unexpected[:5]]}"
                f" ({len(missing)} missing, {len(unexpected)} unexpected)"
            )
        for key, value in own.items():
            if tuple(stored[key].shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: key '{prefix}.{key}' has shape {tuple(stored[key].shape)}, "
                    f"the model expects {tuple(value.shape)}"
                )
        non_finite = [f"{prefix}.{key}" for key, value in stored.items()
                      if value.is_floating_point() and not torch.isfinite(value).all()]
        if non_finite:
            raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {non_finite[:5]}"
                                  f"{f' and {len(non_finite) - 5} more' if len(non_finite) > 5 else ''}; "
                                  "the file is corrupt or came from a diverged run")
        with torch.no_grad():
            for key, value in own.items():
                if hasattr(value, "device_mesh"):  # FSDP2 DTensor: keep only this rank's shard
                    from torch.distributed.tensor import distribute_tensor

                    value.copy_(distribute_tensor(stored[key].to(value.dtype), value.device_mesh, value.placements))
                else:
                    value.copy_(stored[key])


def hash_module_weights(module: nn.Module) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, bytes), in key order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # reshape(-1): 0-dim tensors (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
