"""The run-directory policy every trainer shares: one resume rule, an exclusive lock, errors that
name the path and the cause, metrics that survive a kill mid-line, and SIGKILL at any point of a
real post-training run (and between checkpoints of pretraining and language training) leaving a
directory that resumes or refuses with a message."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jepa_world.data.collection import CollectConfig, collect
from jepa_world.model_format import read_tensors, save_checkpoint
from jepa_world.training.posttrain import PosttrainConfig, run_posttrain
from jepa_world.training.run import (
    MetricsWriter,
    RunDirectoryError,
    claim_run_directory,
    read_metrics,
    release_run_directory,
)
from tests.test_pretrain_script import SYNTHETIC_SMALL, TINY as PRETRAIN_TINY

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def make_checkpoint(out: Path) -> None:
    (out / "checkpoints" / "last").mkdir(parents=True)


def test_fresh_directory_is_claimed_and_locked(tmp_path):
    out = tmp_path / "run"
    assert claim_run_directory(out, resume=False) is None
    assert (out / ".run.lock").is_file()
    assert claim_run_directory(out, resume=False) is None  # the same process may run here again
    release_run_directory(out)


@pytest.mark.parametrize("case, resume, match", [
    ("empty", True, r"resume=true but there is no checkpoint at .*run/checkpoints/last; nothing to resume$"),
    ("metrics only", True, r"no checkpoint at .*checkpoints/last.*metrics.jsonl exists.*start a new output_dir"),
    ("metrics only", False, r"holds metrics.jsonl from an earlier run but no checkpoint"),
    ("checkpoint", False, r"already holds a checkpoint .*pass resume=true"),
])
def test_resume_policy_refuses_what_would_lose_or_mix_runs(tmp_path, case, resume, match):
    out = tmp_path / "run"
    out.mkdir()
    if case != "empty":
        (out / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    if case == "checkpoint":
        make_checkpoint(out)
    with pytest.raises(RunDirectoryError, match=match):
        claim_run_directory(out, resume=resume)
    release_run_directory(out)
    if case != "empty":
        assert read_metrics(out / "metrics.jsonl") == [{"step": 2, "loss": 1.0}]  # nothing lost


def test_resume_returns_the_checkpoint(tmp_path):
    make_checkpoint(tmp_path)
    assert claim_run_directory(tmp_path, resume=True) == tmp_path.absolute() / "checkpoints" / "last"
    release_run_directory(tmp_path)


def test_second_process_on_one_directory_fails_at_once(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jepa_world.training.run import claim_run_directory; "
         "claim_run_directory(sys.argv[1], resume=False); print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=r"in use by another run .*\.run\.lock"):
            claim_run_directory(tmp_path, resume=False)
    finally:
        holder.kill()
        holder.wait()
    assert claim_run_directory(tmp_path, resume=False) is None  # the kernel dropped the dead run's lock
    release_run_directory(tmp_path)


def test_unwritable_output_dir_names_the_path_and_the_cause(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(RunDirectoryError, match=r"cannot write to output_dir .*a_file/run: .*(Not a directory|File exists)"):
        claim_run_directory(blocker / "run", resume=False)


def mount_tmpfs(mount_point: Path, options: str) -> None:
    """A real tmpfs at mount_point (needs root and mount rights; the test is skipped where the machine has neither)."""
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs with {options} ({result.stderr.strip() or 'mount failed'})")


@pytest.fixture
def full_disk(tmp_path):
    """A 256 KiB disk that the test fills."""
    mount_tmpfs(tmp_path / "small_disk", "size=256k")
    yield tmp_path / "small_disk"
    subprocess.run(["umount", str(tmp_path / "small_disk")], check=True)


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only file system (root ignores file modes, so chmod alone would not refuse a write)."""
    mount_tmpfs(tmp_path / "read_only", "ro,size=256k")
    yield tmp_path / "read_only"
    subprocess.run(["umount", str(tmp_path / "read_only")], check=True)


def test_read_only_disk_names_the_path_and_the_cause(read_only_disk):
    out = read_only_disk / "run"
    with pytest.raises(RunDirectoryError, match=rf"cannot write to output_dir {out}: Read-only file system"):
        claim_run_directory(out, resume=False)
    last = read_only_disk / "checkpoints" / "last"
    with pytest.raises(OSError, match=rf"cannot write {last}: Read-only file system.*nothing was written at {last}"):
        save_checkpoint(last, {"w": torch.zeros(3)}, {"step": 1})


@pytest.mark.parametrize("too_big", ["weights", "train_state"])
def test_full_disk_names_the_path_and_keeps_the_previous_checkpoint(full_disk, too_big):
    last = full_disk / "run" / "checkpoints" / "last"
    save_checkpoint(last, {"w": torch.arange(1000.0)}, {"step": 1}, {"step": 1})
    big = torch.zeros(100_000)  # 400 kB: more than the disk holds
    tensors = {"w": big} if too_big == "weights" else {"w": torch.arange(1000.0) + 1}
    with pytest.raises(OSError, match=rf"cannot write {last}: .*No space left on device.*previous {last} is intact") as info:
        save_checkpoint(last, tensors, {"step": 2}, {"step": 2, "moments": big if too_big == "train_state" else None})
    assert info.value.errno == errno.ENOSPC
    assert torch.equal(read_tensors(last)["w"], torch.arange(1000.0))  # the old checkpoint still loads
    assert json.loads((last / "config.json").read_text()) == {"step": 1}
    assert sorted(p.name for p in last.parent.iterdir()) == ["last"]  # no staging directory left behind


def test_full_disk_metrics_error_names_the_file(full_disk):
    path = full_disk / "run" / "metrics.jsonl"
    writer = MetricsWriter(path)
    (full_disk / "filler").write_bytes(b"\0" * (256 * 1024 - path.stat().st_size - 4096))  # leave 1 page
    with pytest.raises(RunDirectoryError, match=rf"cannot append to the metrics file {path}: No space left on device"):
        for step in range(1000):
            writer.write({"step": step, "loss": 1.0, "note": "x" * 100})
    writer.close()


def test_metrics_cut_mid_line_resume_and_plot_without_the_torn_record(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    assert "cut short by an interrupted write" in caplog.text
    writer = MetricsWriter(path, resume_step=2)
    writer.write({"step": 3, "loss": 0.25})
    writer.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')  # damage in the middle is not a torn tail
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(path)


# ------------------------------------------------------------------ a real post-training run, killed

@pytest.fixture(scope="module")
def reach_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reach") / "data"
    collect(CollectConfig(env="reach", episodes=6, episode_length=12, output_dir=str(out), workers=0,
                          env_kwargs={"image_size": 32}))
    return out


TINY = ["encoder=random:micro", "random_encoder.patch_size=8", "+random_encoder.depth=1", "predictor.size=micro",
        "max_steps=200", "batch_size=4", "num_frames=3", "log_every=2", "save_every=10", "eval_every=200",
        "eval_windows=8", "device=cpu", "threads=1"]


def posttrain_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "scripts/posttrain.py", f"data={data}", f"output_dir={out}",
            f"feature_cache_root={out.parent / 'features'}", *TINY, *extra]


def test_posttrain_on_metrics_without_checkpoint_refuses_before_touching_data(reach_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 2, "loss": 1.0}\n')
    config = PosttrainConfig(data=str(reach_data), encoder="random:micro", output_dir=str(out), device="cpu",
                             feature_cache_root=str(tmp_path / "features"))
    with pytest.raises(RunDirectoryError, match="metrics.jsonl from an earlier run but no checkpoint"):
        run_posttrain(config)
    release_run_directory(out)
    assert not (tmp_path / "features").exists()  # refused before the feature cache was built
    assert (out / "metrics.jsonl").read_text() == '{"step": 2, "loss": 1.0}\n'


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_records", [0, 3, 9])
def test_sigkill_leaves_a_run_that_resumes_or_refuses_with_a_message(reach_data, tmp_path, kill_after_records):
    """SIGKILL before the first metrics line, between checkpoints and late in the run: resume=true
    then either finishes the run (a checkpoint exists) or names the missing checkpoint."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(posttrain_cmd(reach_data, out), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_after_records == 0 and (out / ".run.lock").exists():
            break
        if metrics.is_file() and metrics.read_text().count("\n") >= kill_after_records > 0:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; shorten the wait"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    resumed = subprocess.run(posttrain_cmd(reach_data, out, "resume=true"), cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    if (out / "checkpoints" / "last").is_dir() or resumed.returncode == 0:
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert read_metrics(metrics)[-1]["step"] == 200
        assert read_tensors(out / "checkpoints" / "last")  # a loadable checkpoint at the end
    else:
        assert resumed.returncode != 0
        assert "no checkpoint at" in resumed.stderr and "nothing to resume" in resumed.stderr, resumed.stderr[-2000:]
        had_metrics = metrics.is_file() and metrics.stat().st_size > 0
        fresh = subprocess.run(posttrain_cmd(reach_data, out), cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=300)
        if had_metrics:  # a fresh run would overwrite them: refused too
            assert fresh.returncode != 0 and "no checkpoint to resume from" in fresh.stderr, fresh.stderr[-2000:]
        else:
            assert fresh.returncode == 0, fresh.stderr[-2000:]
    records = read_metrics(metrics)
    assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # one continuous run
    json.dumps(records)


def kill_between_checkpoints_then_resume(command: list[str], resume: str, metrics: Path, steps: int) -> None:
    """SIGKILL ``command`` once its metrics file has 12 lines (checkpoints every 5 steps), then: a rerun
    without ``resume`` is refused (never a silent restart) and one with it ends with one line per step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and metrics.read_text().count("\n") >= 12:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; shorten the wait"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fresh = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode != 0 and "resume=true" in fresh.stderr, fresh.stderr[-2000:]
    resumed = subprocess.run([*command, resume], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["step"] for r in read_metrics(metrics)] == list(range(1, steps + 1))


@pytest.mark.slow
def test_sigkill_mid_pretraining_resumes_to_the_uninterrupted_steps(tmp_path):
    out = tmp_path / "pretrain"
    command = [sys.executable, "scripts/pretrain.py", *PRETRAIN_TINY, SYNTHETIC_SMALL, "max_steps=30",
               "checkpoint_every=5", f"output_dir={out}"]
    kill_between_checkpoints_then_resume(command, "resume=true", out / "metrics.jsonl", 30)


@pytest.mark.slow
def test_sigkill_mid_language_training_resumes_to_the_uninterrupted_steps(tmp_path):
    out = tmp_path / "language"
    command = [sys.executable, "scripts/train_language.py", f"output_dir={out}", "encoder.size=micro", "head.size=micro",
               "threads=1", "device=cpu", "kinds=[arm]", "train.steps=60", "train.batch_size=16", "train.log_every=1",
               "train.checkpoint_every=5", "data.train_episodes=2", "data.eval_episodes=2", "data.steps=12"]
    kill_between_checkpoints_then_resume(command, "train.resume=true", out / "metrics.jsonl", 60)
