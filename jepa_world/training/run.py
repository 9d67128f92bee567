"""Run plumbing shared by the training scripts: the run-directory policy (one resume rule and an
exclusive lock), seeding, RNG capture, logging set-up, a metrics.jsonl writer (with optional
TensorBoard), and the non-finite-loss guard."""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jepa_world.training.curves import read_records

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/Inf loss; the run stops before writing any checkpoint."""


class RunDirectoryError(RuntimeError):
    """The output directory cannot host this run: it holds another run, is locked, or is not writable."""


# --------------------------------------------------------------------------- run directories

LOCK_FILE = ".run.lock"
_held_locks: dict[Path, Any] = {}  # output_dir -> open lock file; the kernel drops the lock when the process dies


def claim_run_directory(output_dir: str | os.PathLike, resume: bool, is_main: bool = True) -> Path | None:
    """The resume policy of every trainer, applied before any data is touched.

    - ``resume=true`` needs ``output_dir/checkpoints/last``; without it the run fails, never restarts.
    - ``resume=false`` on a directory holding a checkpoint or a non-empty metrics.jsonl fails:
      continuing needs ``resume=true``, and a fresh run would overwrite what is there.
    - Rank 0 takes an exclusive lock on ``output_dir/.run.lock`` for the life of the process, so a
      second run on the same directory fails at once instead of interleaving its metrics.

    Returns the checkpoint to resume from, or None for a fresh run.
    """
    output_dir = Path(output_dir).absolute()
    last = output_dir / "checkpoints" / "last"
    metrics = output_dir / "metrics.jsonl"
    if is_main:
        _lock(output_dir)
    if resume:
        if not last.is_dir():
            hint = (f"; {metrics} exists, so an earlier run wrote metrics but no checkpoint (killed before its "
                    "first save?): start a new output_dir" if metrics.is_file() else "")
            raise RunDirectoryError(f"resume=true but there is no checkpoint at {last}; nothing to resume{hint}")
        return last
    if last.exists():
        raise RunDirectoryError(f"output_dir={str(output_dir)!r} already holds a checkpoint ({last}); "
                                "pass resume=true to continue it or pick a new output_dir")
    if metrics.is_file() and metrics.stat().st_size > 0:
        raise RunDirectoryError(f"output_dir={str(output_dir)!r} holds {metrics.name} from an earlier run but no "
                                "checkpoint to resume from; pick a new output_dir (or delete that file to start over)")
    return None


def _lock(output_dir: Path) -> None:
    if output_dir in _held_locks:  # this process already runs here (a later trainer call of one script or test)
        return
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        handle = (output_dir / LOCK_FILE).open("a")
    except OSError as err:
        raise RunDirectoryError(f"cannot write to output_dir {output_dir}: {err.strerror or err}") from err
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        handle.close()
        if err.errno in (errno.EAGAIN, errno.EACCES):
            raise RunDirectoryError(f"output_dir {output_dir} is in use by another run (it holds the lock on "
                                    f"{output_dir / LOCK_FILE}); wait for it to end or pick a new output_dir") from err
        raise RunDirectoryError(f"cannot lock {output_dir / LOCK_FILE}: {err.strerror or err}") from err
    _held_locks[output_dir] = handle


def release_run_directory(output_dir: str | os.PathLike) -> None:
    """Drop this process's lock on ``output_dir`` (a finished run; process exit does the same)."""
    handle = _held_locks.pop(Path(output_dir).absolute(), None)
    if handle is not None:
        handle.close()


# --------------------------------------------------------------------------- seeding and RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors (loadable with weights_only=True)."""
    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_meta": torch.tensor([py_version, 0 if py_gauss is None else 1, 0.0 if py_gauss is None else py_gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_meta": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if np_kind != "MT19937":
        raise RuntimeError(f"unexpected NumPy generator {np_kind!r}")
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, has_gauss, gauss = state["python_meta"].tolist()
    random.setstate((int(version), tuple(state["python"].tolist()), gauss if has_gauss else None))
    pos, np_has_gauss, np_gauss = state["numpy_meta"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(np_has_gauss), np_gauss))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"].cpu()))


# --------------------------------------------------------------------------- logging


def setup_logging(output_dir: str | os.PathLike | None = None, is_main: bool = True, level: int = logging.INFO) -> None:
    """Console logging (rank 0 only) plus ``output_dir/train.log``, unless already configured (e.g. by Hydra)."""
    root = logging.getLogger()
    if not is_main:
        root.setLevel(logging.WARNING)
        return
    if root.handlers:
        return
    root.setLevel(level)
    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    root.addHandler(console)
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(Path(output_dir) / "train.log")
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


class MetricsWriter:
    """Appends one JSON object per logged step to ``metrics.jsonl`` (and TensorBoard scalars).

    On resume from ``resume_step``, records written after that step by the interrupted
    run are dropped, so the file reads as one continuous run.
    """

    def __init__(self, path: str | os.PathLike, enabled: bool = True, resume_step: int | None = None, tensorboard: bool = False):
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if resume_step is not None and self.path.exists():
                kept = [record for record in read_records(self.path) if record["step"] <= resume_step]
                self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
            elif resume_step is None:
                self.path.write_text("")
            self._file = self.path.open("ab", buffering=0)  # one write per record: a failed one leaves no buffer behind
        except OSError as err:
            raise RunDirectoryError(f"cannot write the metrics file {self.path}: {err.strerror or err}") from err
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ImportError("tensorboard=true needs the tensorboard package: pip install -e '.[tensorboard]'") from err
            self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def write(self, record: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        try:
            self._file.write((json.dumps(dict(record)) + "\n").encode())
        except OSError as err:
            raise RunDirectoryError(f"cannot append to the metrics file {self.path}: {err.strerror or err}") from err
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a malformed line is an error naming the file and line."""
    return read_records(path)


# --------------------------------------------------------------------------- non-finite guard


class NonFiniteGuard:
    """Tracks non-finite losses on the device and raises at the next ``check``.

    ``observe`` never syncs with the host, so CUDA steps stay asynchronous; ``check`` is
    called at logging steps and always before a checkpoint is written, so a NaN can
    never reach a saved checkpoint.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self._first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def observe(self, value: Tensor, step: int) -> None:
        bad = ~torch.isfinite(value.detach()).all()
        self._first_bad = torch.where(bad & (self._first_bad < 0), step, self._first_bad)

    def check(self, what: str = "loss") -> None:
        first_bad = int(self._first_bad)
        if first_bad >= 0:
            raise NonFiniteLossError(
                f"non-finite {what} at step {first_bad}; stopping. The last checkpoint written before it is "
                "left untouched; lower optim.lr, enable optim.grad_clip, or check the data, then resume."
            )
