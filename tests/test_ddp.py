"""Real multi-process training: torchrun --nproc_per_node=2 with gloo on CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jepa_world import model_format as ckpt
from jepa_world.training.run import read_metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from test_pretrain_script import tiny_config  # noqa: E402

# Runs the real loop on each rank, then dumps that rank's parameters so the test can
# compare them; exits through finish_distributed exactly like scripts/pretrain.py.
RANK_RUNNER = """
import json, os, sys
from safetensors.torch import save_file
from jepa_world.model_format import module_tensors
from jepa_world.training.distributed import finish_distributed
from jepa_world.training.pretrain import pretrain

config = json.loads(open(sys.argv[1]).read())
result = pretrain(config)
tensors = module_tensors({"encoder": result.encoder, "target_encoder": result.target_encoder, "predictor": result.predictor})
save_file(tensors, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.safetensors"))
print(f"rank {os.environ['RANK']} final loss {result.final_loss}", flush=True)
finish_distributed(0)
"""


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes share the two cores
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_ranks(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict, dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "run"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(tiny_config(out, "max_steps=3", "checkpoint_every=3", *overrides)))
    runner = tmp_path / "runner.py"
    runner.write_text(RANK_RUNNER)
    result = torchrun(str(runner), str(config_path), str(tmp_path))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result, load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")


def test_ddp_two_processes_keep_identical_parameters(tmp_path):
    result, rank0, rank1 = run_ranks(tmp_path)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    key = "blocks.0.attn.qkv.weight"  # the online encoder trained away from its EMA target
    assert not torch.equal(rank0[f"encoder.{key}"], rank0[f"target_encoder.{key}"])
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]  # written once, by rank 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert records[0]["clips_per_s"] > 0
    saved = ckpt.read_tensors(tmp_path / "run" / "checkpoints" / "last")
    for key in rank0:
        assert torch.equal(saved[key], rank0[key])
    assert "terminate called" not in result.stderr


def test_ddp_ranks_read_disjoint_data():
    from jepa_world.training.distributed import DistInfo
    from jepa_world.training.pretrain import ResumableSampler

    dataset = list(range(40))
    shards = [list(ResumableSampler(dataset, DistInfo(rank=r, world_size=2), seed=0)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and len(shards[0]) == len(shards[1]) == 20
    resumed = ResumableSampler(dataset, DistInfo(rank=1, world_size=2), seed=0)
    resumed.set_position(epoch=0, start_index=8)
    assert list(resumed) == shards[1][8:]


def test_script_under_torchrun_exits_cleanly(tmp_path):
    from test_pretrain_script import SYNTHETIC_SMALL, TINY

    out = tmp_path / "run"
    result = torchrun(str(ROOT / "scripts" / "pretrain.py"), *TINY, SYNTHETIC_SMALL, "max_steps=2", f"output_dir={out}")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert ckpt.read_train_state(out / "checkpoints" / "last")["world_size"] == 2


@pytest.mark.slow
def test_fsdp2_trains_exactly_like_ddp(tmp_path):
    """Sharding changes where parameters live, not the maths: FSDP2 must match DDP step for step.

    This caught a real bug: FSDP2 keeps a root module's parameters gathered after forward (for the
    backward that follows), but the EMA target never runs backward, so its patch embedding and
    final norm stayed at a stale gathered copy while the EMA updated the shards."""
    _, fsdp_rank0, fsdp_rank1 = run_ranks(tmp_path / "fsdp2", "strategy=fsdp2")
    _, ddp_rank0, _ = run_ranks(tmp_path / "ddp", "strategy=ddp")
    for key in fsdp_rank0:
        assert torch.equal(fsdp_rank0[key], fsdp_rank1[key]), f"{key} differs between ranks"
        torch.testing.assert_close(fsdp_rank0[key], ddp_rank0[key], rtol=0, atol=1e-6, msg=f"{key}: FSDP2 differs from DDP")
    fsdp_losses = [r["loss"] for r in read_metrics(tmp_path / "fsdp2" / "run" / "metrics.jsonl")]
    ddp_losses = [r["loss"] for r in read_metrics(tmp_path / "ddp" / "run" / "metrics.jsonl")]
    assert fsdp_losses == pytest.approx(ddp_losses, abs=1e-6)


@pytest.mark.slow
def test_fsdp2_checkpoint_resumes_exactly(tmp_path):
    """FSDP2 saves full tensors + a full optimizer state dict and re-shards them on resume;
    2 steps + resume + 2 steps must equal 4 straight steps, as for DDP."""
    config_runs = {
        "straight": ["max_steps=4"],
        "split": ["max_steps=4", "stop_at_step=2"],
        "resumed": ["max_steps=4", "resume=true"],
    }
    runner = tmp_path / "runner.py"
    runner.write_text(RANK_RUNNER)
    for name, overrides in config_runs.items():
        out = tmp_path / ("straight" if name == "straight" else "split")
        config_path = tmp_path / f"{name}.json"
        config_path.write_text(json.dumps(tiny_config(out, "strategy=fsdp2", *overrides)))
        dump = tmp_path / name
        dump.mkdir()
        result = torchrun(str(runner), str(config_path), str(dump))
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    straight = ckpt.read_tensors(tmp_path / "straight" / "checkpoints" / "last")
    resumed = ckpt.read_tensors(tmp_path / "split" / "checkpoints" / "last")
    assert ckpt.read_train_state(tmp_path / "split" / "checkpoints" / "last")["step"] == 4
    assert [r["step"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl")] == [1, 2, 3, 4]
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=1e-6, msg=f"{key} differs after FSDP2 resume")
