"""Unit tests for the shared training engine: EMA, optimiser groups and schedules,
atomic checkpoints, RNG capture, metrics and the non-finite guard."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from jepa_world import model_format as ckpt
from jepa_world.training.checkpoint import check_config_matches
from jepa_world.training.ema import EMA, MomentumSchedule, make_target
from jepa_world.training.optim import (
    OptimConfig,
    apply_schedule,
    build_optimizer,
    clip_gradients,
    lr_at,
    param_groups,
    weight_decay_at,
)
from jepa_world.training.run import (
    MetricsWriter,
    NonFiniteGuard,
    NonFiniteLossError,
    capture_rng_state,
    read_metrics,
    restore_rng_state,
    seed_everything,
)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(1, 1, 8))
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4, bias=False)
        self.conv = nn.Conv3d(3, 8, kernel_size=(2, 2, 2))

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x + self.mask_token)))


# --------------------------------------------------------------------------- EMA


def test_ema_follows_momentum_rule_exactly():
    torch.manual_seed(0)
    online = TinyNet()
    target = make_target(online)
    assert not any(p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ema = EMA(online, target, MomentumSchedule("constant", start=0.9))
    assert ema.update(step=0) == 0.9
    for key, value in target.state_dict().items():
        expected = before[key] * 0.9 + online.state_dict()[key] * (1 - 0.9)
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-7)
        assert not torch.equal(value, before[key])  # it actually moved


def test_ema_momentum_one_freezes_and_zero_copies():
    online, target = TinyNet(), TinyNet()
    frozen = {k: v.clone() for k, v in target.state_dict().items()}
    EMA(online, target, MomentumSchedule("constant", start=1.0)).update(0)
    for key, value in target.state_dict().items():
        assert torch.equal(value, frozen[key])
    EMA(online, target, MomentumSchedule("constant", start=0.0)).update(0)
    for key, value in target.state_dict().items():
        assert torch.equal(value, online.state_dict()[key])


def test_momentum_schedules():
    constant = MomentumSchedule("constant", start=0.99925)
    assert constant(0) == constant(10_000) == 0.99925
    ramp = MomentumSchedule("linear", start=0.996, end=1.0, total_steps=100)
    assert ramp(0) == pytest.approx(0.996)
    assert ramp(50) == pytest.approx(0.998)
    assert ramp(100) == pytest.approx(1.0) and ramp(500) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown EMA momentum schedule 'cubic'"):
        MomentumSchedule("cubic")
    with pytest.raises(ValueError, match="start=1.5"):
        MomentumSchedule("constant", start=1.5)


# --------------------------------------------------------------------------- optimiser


def test_param_groups_exclude_biases_and_1d_params_from_weight_decay():
    net = TinyNet()
    decay, no_decay = param_groups(net.named_parameters(), weight_decay=0.05)
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert decay_ids == {id(net.fc1.weight), id(net.fc2.weight), id(net.conv.weight)}
    assert no_decay_ids == {id(net.fc1.bias), id(net.norm.weight), id(net.norm.bias), id(net.conv.bias), id(net.mask_token)}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_weight_decay_only_shrinks_decayed_params():
    net = TinyNet()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, final_weight_decay=0.5)
    opt = build_optimizer(net, cfg)
    apply_schedule(opt, 0, cfg, 10)
    bias, weight = net.fc1.bias.detach().clone(), net.fc1.weight.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)  # zero grads: only decoupled weight decay moves params
    opt.step()
    torch.testing.assert_close(net.fc1.weight.detach(), weight * (1 - 0.1 * 0.5))
    assert torch.equal(net.fc1.bias.detach(), bias)


def test_cosine_schedule_key_steps():
    cfg = OptimConfig(lr=1e-3, start_lr=1e-4, final_lr=1e-5, warmup_steps=10, schedule="cosine")
    assert lr_at(0, cfg, 110) == pytest.approx(1e-4 + 0.9e-3 / 10)
    assert lr_at(9, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(10, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(60, cfg, 110) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert lr_at(110, cfg, 110) == pytest.approx(1e-5)
    lrs = [lr_at(s, cfg, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_wsd_and_constant_schedule_key_steps():
    wsd = OptimConfig(lr=1e-3, final_lr=0.0, warmup_steps=10, schedule="wsd", decay_fraction=0.2)
    assert lr_at(4, wsd, 100) == pytest.approx(5e-4)
    assert lr_at(10, wsd, 100) == lr_at(79, wsd, 100) == pytest.approx(1e-3)
    assert lr_at(89, wsd, 100) == pytest.approx(1e-3 * 0.5)  # halfway through the 20-step decay
    assert lr_at(99, wsd, 100) == pytest.approx(0.0)
    const = OptimConfig(lr=5.25e-4, warmup_steps=4, schedule="constant")
    assert lr_at(1, const, 100) == pytest.approx(5.25e-4 / 2)
    assert lr_at(50, const, 100) == lr_at(99, const, 100) == 5.25e-4


def test_weight_decay_schedule_and_apply():
    cfg = OptimConfig(lr=1.0, weight_decay=0.04, final_weight_decay=0.4)
    assert weight_decay_at(0, cfg, 100) == pytest.approx(0.04)
    assert weight_decay_at(50, cfg, 100) == pytest.approx(0.22)
    assert weight_decay_at(100, cfg, 100) == pytest.approx(0.4)
    opt = build_optimizer(TinyNet(), cfg)
    lr, wd = apply_schedule(opt, 50, cfg, 100)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.22) and opt.param_groups[1]["weight_decay"] == 0.0
    assert all(g["lr"] == lr == 1.0 for g in opt.param_groups)


def test_optim_config_validation_names_bad_value():
    with pytest.raises(ValueError, match="unknown LR schedule 'step'"):
        OptimConfig(schedule="step")
    with pytest.raises(ValueError, match=r"optim.lr=-0.1"):
        OptimConfig(lr=-0.1)
    with pytest.raises(ValueError, match="optim.warmup_steps=-3"):
        OptimConfig(warmup_steps=-3)


def test_clip_gradients_bounds_global_norm():
    net = TinyNet()
    for p in net.parameters():
        p.grad = torch.full_like(p, 10.0)
    norm = clip_gradients(net.parameters(), 1.0)
    assert norm > 1.0
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert total == pytest.approx(1.0, rel=1e-5)
    assert clip_gradients(net.parameters(), 0.0) is None


# --------------------------------------------------------------------------- checkpoints


def _save(directory, modules, step=3):
    return ckpt.save_checkpoint(directory, ckpt.module_tensors(modules), {"model": {"size": "tiny"}, "step": step}, {"step": step})


def test_checkpoint_round_trip(tmp_path):
    online, target = TinyNet(), TinyNet()
    opt = build_optimizer(online, OptimConfig(lr=0.01))
    online(torch.randn(2, 8)).sum().backward()
    opt.step()
    modules = {"encoder": online, "target_encoder": target}
    state = {"step": 7, "optimizer": opt.state_dict(), "rng": capture_rng_state()}
    ckpt.save_checkpoint(tmp_path / "last", ckpt.module_tensors(modules), {"a": 1}, state)
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == ["config.json", "model.safetensors", "train_state.pt"]
    tensors = ckpt.read_tensors(tmp_path / "last")
    assert {k.split(".")[0] for k in tensors} == {"encoder", "target_encoder"}
    fresh_online, fresh_target = TinyNet(), TinyNet()
    ckpt.load_modules(tmp_path / "last", {"encoder": fresh_online, "target_encoder": fresh_target})
    for a, b in zip(online.state_dict().values(), fresh_online.state_dict().values()):
        assert torch.equal(a, b)
    loaded = ckpt.read_train_state(tmp_path / "last")
    assert loaded["step"] == 7
    fresh_opt = build_optimizer(fresh_online, OptimConfig(lr=0.01))
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert ckpt.read_config(tmp_path / "last") == {"a": 1}
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoint_overwrite_replaces_atomically(tmp_path):
    net = TinyNet()
    _save(tmp_path / "last", {"encoder": net}, step=1)
    with torch.no_grad():
        net.fc1.weight.fill_(3.0)
    _save(tmp_path / "last", {"encoder": net}, step=2)
    assert ckpt.read_train_state(tmp_path / "last")["step"] == 2
    assert torch.all(ckpt.read_tensors(tmp_path / "last")["encoder.fc1.weight"] == 3.0)
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_crash_mid_write_keeps_previous_last(tmp_path, monkeypatch):
    net = TinyNet()
    _save(tmp_path / "last", {"encoder": net}, step=1)
    good = ckpt.read_tensors(tmp_path / "last")

    def crash(*args, **kwargs):
        raise OSError("simulated crash: disk full while writing train_state.pt")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with torch.no_grad():
        net.fc1.weight.fill_(9.0)
    with pytest.raises(OSError, match="simulated crash"):
        _save(tmp_path / "last", {"encoder": net}, step=2)
    monkeypatch.undo()
    assert ckpt.read_train_state(tmp_path / "last")["step"] == 1
    for key, value in ckpt.read_tensors(tmp_path / "last").items():
        assert torch.equal(value, good[key])
    assert not list(tmp_path.glob(".tmp-*"))


def test_killed_save_leaves_only_temp_dir_that_is_cleaned(tmp_path):
    net = TinyNet()
    _save(tmp_path / "last", {"encoder": net}, step=1)
    half_written = tmp_path / ".tmp-last-deadbeef"  # what a SIGKILL mid-save leaves behind
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"\x00" * 5)
    assert ckpt.read_train_state(tmp_path / "last")["step"] == 1
    ckpt.remove_stale_temp_dirs(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last"]


def test_refuses_to_save_non_finite_weights(tmp_path):
    net = TinyNet()
    _save(tmp_path / "last", {"encoder": net}, step=1)
    with torch.no_grad():
        net.fc1.weight[0, 0] = float("nan")
    with pytest.raises(ckpt.CheckpointError, match="non-finite values in.*encoder.fc1.weight"):
        _save(tmp_path / "last", {"encoder": net}, step=2)
    assert ckpt.read_train_state(tmp_path / "last")["step"] == 1


def test_missing_corrupt_and_mismatched_checkpoints_fail_loudly(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"checkpoint directory .*nowhere does not exist"):
        ckpt.load_modules(tmp_path / "nowhere", {"encoder": TinyNet()})
    net = TinyNet()
    _save(tmp_path / "last", {"encoder": net})
    # corrupt weights file
    (tmp_path / "last" / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ckpt.CheckpointError, match=r"cannot read .*model.safetensors"):
        ckpt.load_modules(tmp_path / "last", {"encoder": net})
    # truncated train state
    _save(tmp_path / "last", {"encoder": net})
    state_path = tmp_path / "last" / "train_state.pt"
    state_path.write_bytes(state_path.read_bytes()[:40])
    with pytest.raises(ckpt.CheckpointError, match=r"cannot read .*train_state.pt"):
        ckpt.read_train_state(tmp_path / "last")
    (tmp_path / "last" / "train_state.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"train_state.pt is missing"):
        ckpt.read_train_state(tmp_path / "last")
    # shape mismatch names the key and both shapes
    other = TinyNet()
    other.fc1 = nn.Linear(8, 32)
    other.norm = nn.LayerNorm(32)
    other.fc2 = nn.Linear(32, 4, bias=False)
    with pytest.raises(ckpt.CheckpointError, match=r"'encoder.fc1.weight' has shape \(16, 8\), the model expects \(32, 8\)"):
        ckpt.load_modules(tmp_path / "last", {"encoder": other})
    # missing prefix
    with pytest.raises(ckpt.CheckpointError, match=r"does not match module 'predictor'"):
        ckpt.load_modules(tmp_path / "last", {"predictor": TinyNet()})


def test_pickled_code_in_train_state_is_refused(tmp_path):
    net = TinyNet()
    _save(tmp_path / "last", {"encoder": net})
    torch.save({"step": 1, "evil": TinyNet}, tmp_path / "last" / "train_state.pt")  # a class: needs full unpickling
    with pytest.raises(ckpt.CheckpointError, match="train_state.pt"):
        ckpt.read_train_state(tmp_path / "last")


def test_config_mismatch_names_key(tmp_path):
    saved = {"model": {"size": "tiny", "patch_size": 8}, "seed": 0}
    check_config_matches(saved, saved, ["model", "seed"], tmp_path)
    with pytest.raises(ckpt.CheckpointError, match=r"'model.patch_size' was 8 there but is 16 now"):
        check_config_matches(saved, {"model": {"size": "tiny", "patch_size": 16}, "seed": 0}, ["model.patch_size"], tmp_path)


def test_copy_checkpoint(tmp_path):
    net = TinyNet()
    _save(tmp_path / "last", {"encoder": net}, step=5)
    ckpt.copy_checkpoint(tmp_path / "last", tmp_path / "step_000005")
    assert ckpt.read_train_state(tmp_path / "step_000005")["step"] == 5


# --------------------------------------------------------------------------- run utilities


def test_rng_state_round_trip_through_weights_only_checkpoint(tmp_path):
    seed_everything(123)
    torch.rand(3), np.random.rand(2), random.random()
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    expected = (torch.rand(4), np.random.rand(3), random.random())
    seed_everything(999)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(4), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_metrics_writer_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    for step in (1, 2, 3, 4):
        writer.write({"step": step, "loss": 1.0 / step})
    writer.close()
    resumed = MetricsWriter(path, resume_step=2)
    resumed.write({"step": 3, "loss": 0.25})
    resumed.close()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert json.loads(path.read_text().splitlines()[-1])["loss"] == 0.25
    MetricsWriter(tmp_path / "off.jsonl", enabled=False).write({"step": 1})
    assert not (tmp_path / "off.jsonl").exists()


def test_non_finite_guard_reports_first_bad_step():
    guard = NonFiniteGuard()
    guard.observe(torch.tensor(1.0), step=0)
    guard.check()
    guard.observe(torch.tensor(math.inf), step=5)
    guard.observe(torch.tensor(math.nan), step=6)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 5"):
        guard.check()
