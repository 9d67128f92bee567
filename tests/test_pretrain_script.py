"""scripts/pretrain.py and the pretraining loop: output contract, exact resume, NaN guard,
bad input. Runs on a tiny config (micro ViT, 32 px, 4 frames) so each run takes seconds."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from jepa_world import model_format as ckpt
from jepa_world.training.pretrain import ConfigError, pretrain
from jepa_world.training.run import NonFiniteLossError, RunDirectoryError, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pretrain.py"
# 32 px, 4 frames, patch 8 -> a 2x4x4 token grid; 16 clips of batch 4 -> 4 batches per epoch.
TINY = [
    "model.img_size=32",
    "model.num_frames=4",
    "model.predictor.depth=1",
    "batch_size=4",
    "log_every=1",
    "optim.warmup_steps=2",
]


SYNTHETIC_SMALL = "data.num_clips=16"


def tiny_config(output_dir: Path, *overrides: str) -> dict:
    synthetic = not any(o.startswith("data=") for o in overrides)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("pretrain", overrides=[*TINY, *([SYNTHETIC_SMALL] if synthetic else []), f"output_dir={output_dir}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def run_script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_script_contract_writes_metrics_and_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = run_script(*TINY, SYNTHETIC_SMALL, "max_steps=4", f"output_dir={out}", "checkpoint_every=2", "keep_every=2")
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record in records:
        assert {"step", "loss", "lr", "clips_per_s"} <= set(record)
        assert record["loss"] > 0 and torch.isfinite(torch.tensor(record["loss"]))
    last = out / "checkpoints" / "last"
    tensors = ckpt.read_tensors(last)
    assert {key.split(".")[0] for key in tensors} == {"encoder", "target_encoder", "predictor"}
    assert "predictor.mask_tokens.1" in tensors  # one mask token per V-JEPA 2 mask generator
    config = json.loads((last / "config.json").read_text())
    assert config["max_steps"] == 4 and config["model"]["size"] == "micro" and config["data"]["num_clips"] == 16
    assert (out / "curves.png").stat().st_size > 10_000  # refreshed at each checkpoint
    state = torch.load(last / "train_state.pt", weights_only=True)
    assert state["step"] == 4 and "optimizer" in state and isinstance(state["rng"]["torch"], torch.Tensor)
    assert ckpt.read_train_state(out / "checkpoints" / "step_000002")["step"] == 2
    assert "pretrain:" in result.stderr  # tqdm progress bar
    assert "final loss" in result.stdout


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_tensors(path / "checkpoints" / "last")


def test_resume_equals_uninterrupted_run(tmp_path):
    """6 steps straight == 3 steps + resume + 3 steps (mid-epoch stop, epoch boundary after step 4)."""
    straight = pretrain(tiny_config(tmp_path / "straight", "max_steps=6"))
    pretrain(tiny_config(tmp_path / "split", "max_steps=6", "stop_at_step=3"))
    assert ckpt.read_train_state(tmp_path / "split" / "checkpoints" / "last")["step"] == 3
    resumed = pretrain(tiny_config(tmp_path / "split", "max_steps=6", "resume=true"))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs after resume")
    assert resumed.final_loss == pytest.approx(straight.final_loss, abs=1e-6)
    la = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    lb = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(la, lb):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-6) and ra["lr"] == rb["lr"]
    # and training actually moved the weights
    assert not torch.equal(a["encoder.blocks.0.attn.qkv.weight"], a["target_encoder.blocks.0.attn.qkv.weight"])


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    pretrain(tiny_config(out, "max_steps=2"))
    last = out / "checkpoints" / "last"
    before = {p.name: p.read_bytes() for p in last.iterdir()}
    # An absurd learning rate blows the weights up within a couple of steps.
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+"):
        pretrain(tiny_config(out, "max_steps=8", "resume=true", "optim.lr=1e30", "optim.warmup_steps=0", "optim.grad_clip=0"))
    after = {p.name: p.read_bytes() for p in last.iterdir()}
    assert after == before
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_resume_failures_are_loud(tmp_path):
    with pytest.raises(RunDirectoryError, match=r"resume=true but there is no checkpoint at .*checkpoints/last"):
        pretrain(tiny_config(tmp_path / "empty", "max_steps=2", "resume=true"))
    out = tmp_path / "run"
    pretrain(tiny_config(out, "max_steps=2"))
    with pytest.raises(RunDirectoryError, match="already holds a checkpoint"):
        pretrain(tiny_config(out, "max_steps=2"))
    with pytest.raises(ckpt.CheckpointError, match=r"'model.predictor.depth' was 1 there but is 2 now|'model' was"):
        pretrain(tiny_config(out, "max_steps=4", "resume=true", "model.predictor.depth=2"))
    (out / "checkpoints" / "last" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ckpt.CheckpointError, match=r"cannot read .*model.safetensors"):
        pretrain(tiny_config(out, "max_steps=4", "resume=true"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.size=gigantic", r"model: unknown ViT size 'gigantic'; available sizes: micro"),
        ("mask.generators.0.spatial_scale=[-0.1,0.2]", r"mask: .*spatial_scale=.*-0.1"),
        ("data=video_folder", r"data.root='/nonexistent/videos': directory does not exist"),
        ("loss=l2", r"loss='l2': expected one of \('l1', 'smooth_l1'\)"),
        ("optim.schedule=step", r"optim: unknown LR schedule 'step'"),
        ("batch_size=0", r"batch_size=0: expected a positive integer"),
    ],
)
def test_bad_config_names_the_value(tmp_path, override, message):
    extra = ["data.root=/nonexistent/videos"] if override == "data=video_folder" else []
    with pytest.raises(ConfigError, match=message):
        pretrain(tiny_config(tmp_path / "run", "max_steps=2", override, *extra))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_script_reports_bad_input_in_one_line(tmp_path):
    result = run_script("model.size=gigantic", f"output_dir={tmp_path / 'run'}")
    output = result.stdout + result.stderr  # Hydra's console log handler writes to stdout
    assert result.returncode == 1
    assert "ConfigError: model: unknown ViT size 'gigantic'" in output
    assert "Traceback" not in output
    missing = run_script("data=video_folder", f"output_dir={tmp_path / 'run2'}")
    output = missing.stdout + missing.stderr
    assert missing.returncode == 1
    assert "missing required config value" in output and "data.root" in output and "Traceback" not in output


def test_image_path_with_2d_masks(tmp_path):
    """I-JEPA path: 2-D multi-block masks and smooth-L1 on still images (repeated-frame clips)."""
    from PIL import Image

    from jepa_world.data.synthetic import MovingShapesDataset

    images = tmp_path / "images" / "class_a"
    images.mkdir(parents=True)
    frames, _ = MovingShapesDataset(1, frames_per_clip=12, resolution=40, seed=3).render_frames(0)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(images / f"img_{i:02d}.png")
    pytest.importorskip("jepa_world.data.image")
    result = pretrain(
        tiny_config(
            tmp_path / "run", "max_steps=3", "data=image_folder", f"data.root={tmp_path / 'images'}", "data.num_workers=0",
            "mask=ijepa_2d", "loss=smooth_l1", "optim=ijepa",
        )
    )
    assert result.steps == 3 and result.final_loss > 0
    tensors = _weights(tmp_path / "run")
    assert "predictor.mask_tokens.0" in tensors and "predictor.mask_tokens.1" not in tensors


def test_init_from_encoder_only_checkpoint(tmp_path):
    """init_from loads pretrained parts strictly; a missing target encoder starts as the encoder."""
    source = pretrain(tiny_config(tmp_path / "source", "max_steps=2"))
    encoder_only = ckpt.module_tensors({"encoder": source.encoder})
    ckpt.save_checkpoint(tmp_path / "converted", encoder_only, {"source": "test"})
    frozen = ("optim.lr=0", "optim.start_lr=0", "optim.final_lr=0", "optim.weight_decay=0", "optim.final_weight_decay=0")
    result = pretrain(tiny_config(tmp_path / "run", "max_steps=1", f"init_from={tmp_path / 'converted'}", *frozen))
    for key, value in encoder_only.items():
        name = key.split(".", 1)[1]
        assert torch.equal(result.encoder.state_dict()[name], value), key
        torch.testing.assert_close(result.target_encoder.state_dict()[name], value, rtol=0, atol=1e-6)
    ckpt.save_checkpoint(tmp_path / "predictor_only", ckpt.module_tensors({"predictor": source.predictor}), {})
    with pytest.raises(ckpt.CheckpointError, match="holds neither encoder.* nor target_encoder"):
        pretrain(tiny_config(tmp_path / "run2", "max_steps=1", f"init_from={tmp_path / 'predictor_only'}"))
