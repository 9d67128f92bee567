"""End-to-end post-training (encoder trained with the predictor), global latents, the temporal-distance
critic, and their bad-input errors. The planning acceptance test lives in test_planning_e2e.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from jepa_world.data.collection import CollectConfig, collect
from jepa_world.data.feature_cache import load_frames
from jepa_world.models.critic import CriticConfig, TemporalDistanceCritic
from jepa_world.models.vit import build_encoder
from jepa_world.model_format import CheckpointError, module_tensors, save_checkpoint
from jepa_world.training.posttrain import (
    PairSampler,
    PosttrainConfig,
    PosttrainObjective,
    effective_rank,
    run_posttrain,
)
from jepa_world.training.run import read_metrics
from jepa_world.latent_encoder import LatentConfig
from jepa_world.world_model import WorldModel
from planners.objectives import DEFAULT_CRITIC_WEIGHT, ObjectiveConfig, build_cost_fn

pytestmark = pytest.mark.usefixtures("one_thread")

GLOBAL = {"latent": "global", "normalize_latents": False, "latent_dim": 16, "projector_hidden": 32}


@pytest.fixture(scope="module")
def reach_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reach") / "data"
    collect(CollectConfig(env="reach", episodes=10, episode_length=20, output_dir=str(out), workers=0,
                          env_kwargs={"image_size": 32}))
    return out


def global_model(seed: int = 0, critic: dict | None = None, trainable: bool = True) -> WorldModel:
    torch.manual_seed(seed)
    encoder = build_encoder("micro", img_size=32, patch_size=8, depth=1)
    config = LatentConfig(**GLOBAL, trainable_encoder=trainable)
    return WorldModel.create(encoder, 3, 0, config, critic=critic, size="micro", predict_residual=True)


def e2e_config(data: Path, out: Path, **overrides) -> PosttrainConfig:
    values = dict(
        data=str(data), encoder="random:micro", output_dir=str(out), mode="end_to_end", loss="mse", max_steps=6,
        batch_size=8, num_frames=4, rollout_steps=2, random_encoder={"patch_size": 8, "depth": 1},
        predictor={"size": "micro", "predict_residual": True}, world_model=dict(GLOBAL), state_tokens=False,
        log_every=2, save_every=3, eval_every=6, eval_windows=16, eval_horizons=(1, 2), val_fraction=0.2,
        device="cpu", plannability_pairs=256, plannability_state_dims=(0, 1, 2),
    )
    values.update(overrides)
    return PosttrainConfig(**values)


def test_end_to_end_objective_sends_gradients_into_the_encoder(reach_data):
    store = load_frames(reach_data)
    wm = global_model()
    wm.dynamics.set_input_statistics(torch.zeros(3), torch.ones(3))
    objective = PosttrainObjective(wm, rollout_steps=2, loss="mse")
    frames = store.latents[:8].reshape(2, 4, *store.latents.shape[1:])  # (B=2, T=4, 3, H, W) uint8
    losses = objective(frames, store.actions[:6].reshape(2, 3, 3), None)
    losses["total"].backward()
    for name in ("encoder", "projector", "predictor"):
        grads = [p.grad for p in getattr(wm, name).parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_joint_critic_loss_shapes_the_encoder(reach_data):
    """critic_joint_weight: the critic's loss on frame pairs reaches the encoder, scaled by the weight."""
    store = load_frames(reach_data)
    pairs = (store.latents[:6], store.latents[3:9], torch.full((6,), 3.0))
    for weight in (1.0, 0.5):
        wm = global_model(critic={"hidden_dim": 16, "dim": 4})
        wm.dynamics.set_input_statistics(torch.zeros(3), torch.ones(3))
        objective = PosttrainObjective(wm, rollout_steps=2, loss="mse", critic_joint_weight=weight)
        frames = store.latents[:8].reshape(2, 4, *store.latents.shape[1:])
        losses = objective(frames, store.actions[:6].reshape(2, 3, 3), None, critic_pairs=pairs)
        losses["critic"].backward()
        for name in ("encoder", "projector", "critic"):
            assert sum(p.grad.abs().sum() for p in getattr(wm, name).parameters()) > 0, name
        assert all(p.grad is None for p in wm.predictor.parameters())  # the critic's loss is its own
        if weight == 1.0:
            unit = losses["critic"].detach()
    torch.testing.assert_close(losses["critic"].detach(), 0.5 * unit)


def test_frozen_world_model_keeps_its_encoder_out_of_training():
    wm = global_model(trainable=False)
    wm.train()
    assert not wm.encoder.training and not any(p.requires_grad for p in wm.encoder.parameters())
    assert global_model().train().encoder.training


def test_training_rollout_is_the_planning_rollout():
    """The rollout loss is computed by WorldModel.rollout's re-run path; its KV-cached path (what
    the planner runs) gives the same predictions, so the loss measures what planning uses."""
    wm = global_model(trainable=False).eval()
    wm.dynamics.set_input_statistics(torch.tensor([0.01, -0.02, 0.0]), torch.tensor([0.02, 0.03, 0.01]))
    actions = torch.randn(5, 3, 3) * 0.03
    z = torch.randn(5, 4, 1, 16)  # a frozen model's store holds latents
    naive = wm.rollout(z[:, 0], None, actions, use_kv_cache=False)
    cached = wm.rollout(z[:, 0], None, actions)
    torch.testing.assert_close(cached, naive, rtol=1e-5, atol=1e-5)
    losses = PosttrainObjective(wm, rollout_steps=3, loss="mse")(z, actions, None)
    torch.testing.assert_close(losses["rollout"], (cached - z[:, 1:]).pow(2).mean(), rtol=1e-5, atol=1e-6)


def test_pair_sampler_stays_inside_episodes_and_offsets(reach_data):
    store = load_frames(reach_data)
    episodes = [int(e) for e in store.episode_index.tolist()]
    sampler = PairSampler(store, episodes, max_offset=5)
    a, b, offsets = sampler.sample(4000, torch.Generator().manual_seed(0))
    episode_of = torch.repeat_interleave(torch.arange(len(episodes)), store.episode_length)
    assert torch.equal(episode_of[a], episode_of[b])
    assert torch.equal(offsets, (a - b).abs().float()) and offsets.max() == 5 and offsets.min() == 0


def test_log_pair_sampler_stays_inside_episodes_and_favours_short_offsets(reach_data):
    store = load_frames(reach_data)
    episodes = [int(e) for e in store.episode_index.tolist()]
    episode_of = torch.repeat_interleave(torch.arange(len(episodes)), store.episode_length)
    draws = {}
    for kind in ("uniform", "log"):
        a, b, offsets = PairSampler(store, episodes, max_offset=9, offsets=kind).sample(4000, torch.Generator().manual_seed(0))
        assert torch.equal(episode_of[a], episode_of[b]) and torch.equal(offsets, (a - b).abs().float())
        assert offsets.min() == 0 and offsets.max() == 9
        draws[kind] = (offsets <= 2).float().mean().item()
    assert draws["log"] > 1.5 * draws["uniform"], draws  # about 0.48 against 0.3
    with pytest.raises(ValueError, match="critic_offsets='linear'"):
        PairSampler(store, episodes, max_offset=9, offsets="linear")


def test_critic_learns_time_offsets_of_a_line():
    """Latents on a line: the expectile critic recovers the step count between them."""
    torch.manual_seed(0)
    critic = TemporalDistanceCritic(CriticConfig(latent_dim=2, hidden_dim=64, dim=8, expectile=0.3, max_offset=20))
    optimizer = torch.optim.Adam(critic.parameters(), lr=3e-3)
    positions = torch.arange(30).float()
    z = torch.stack([positions / 30, torch.zeros(30)], dim=-1)[:, None]  # (30, 1, 2)
    for _ in range(600):
        a = torch.randint(0, 30, (256,))
        b = (a + torch.randint(-20, 21, (256,))).clamp(0, 29)
        loss = critic.loss(z[a], z[b], (a - b).abs().float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predicted = critic.distance(z[torch.tensor([0, 0, 5])], z[torch.tensor([0, 10, 25])]).detach()
    assert predicted[0] < 1.0 and abs(predicted[1] - 10) < 2.0 and abs(predicted[2] - 20) < 3.0, predicted


def test_sigreg_keeps_the_embedding_from_collapsing(reach_data, tmp_path):
    """Same end-to-end run with and without SIGReg: without it the embedding shrinks toward a constant
    (the trivial solution of next-embedding prediction), with it the held-out embedding keeps unit scale
    and an effective rank above 2.5 of 16."""
    final = {}
    for name, weight in (("sigreg", 0.1), ("none", 0.0)):
        run_posttrain(e2e_config(reach_data, tmp_path / name, max_steps=100, eval_every=100, log_every=20,
                                 save_every=100, sigreg={"weight": weight}, optim={"lr": 3e-3, "warmup_steps": 5}))
        final[name] = read_metrics(tmp_path / name / "metrics.jsonl")[-1]
    print({name: (round(r["effective_rank"], 2), round(r["embedding_std"], 4)) for name, r in final.items()})
    assert final["sigreg"]["effective_rank"] > 2.5 and final["sigreg"]["embedding_std"] > 0.3, final["sigreg"]
    assert final["none"]["embedding_std"] < 0.1 * final["sigreg"]["embedding_std"], final


def test_end_to_end_run_saves_every_trained_part_and_resumes_exactly(reach_data, tmp_path):
    full = e2e_config(reach_data, tmp_path / "full", critic={"hidden_dim": 32, "dim": 8, "max_offset": 10},
                      critic_steps=4, critic_pairs=64)
    run_posttrain(full)
    split = e2e_config(reach_data, tmp_path / "split", critic={"hidden_dim": 32, "dim": 8, "max_offset": 10},
                       critic_steps=4, critic_pairs=64, stop_after=3)
    run_posttrain(split)
    run_posttrain(e2e_config(reach_data, tmp_path / "split", critic={"hidden_dim": 32, "dim": 8, "max_offset": 10},
                             critic_steps=4, critic_pairs=64, resume=True))
    a = WorldModel.from_pretrained(tmp_path / "full" / "checkpoints" / "last")
    b = WorldModel.from_pretrained(tmp_path / "split" / "checkpoints" / "last")
    for (name, x), (_, y) in zip(module_tensors(a.trained_modules()).items(), module_tensors(b.trained_modules()).items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    assert set(a.trained_modules()) == {"encoder", "projector", "predictor", "critic"}
    last = read_metrics(tmp_path / "full" / "metrics.jsonl")[-1]
    assert last["step"] == 10 and "plan_spearman_critic_vs_steps" in last and "plan_spearman_latent_vs_state" in last
    config = json.loads((tmp_path / "full" / "checkpoints" / "last" / "config.json").read_text())
    assert config["world_model"]["trainable_encoder"] and config["critic"]["max_offset"] == 10
    assert not (Path(reach_data) / ".feature_cache").exists()  # end to end never builds a feature cache


def test_joint_critic_run_trains_the_critic_with_the_encoder_and_resumes_exactly(reach_data, tmp_path):
    critic = {"hidden_dim": 32, "dim": 8, "max_offset": 10}
    settings = dict(critic=critic, critic_steps=2, critic_pairs=64, critic_joint_weight=0.01, critic_joint_pairs=8,
                    critic_offsets="log")
    run_posttrain(e2e_config(reach_data, tmp_path / "full", **settings))
    run_posttrain(e2e_config(reach_data, tmp_path / "split", stop_after=3, **settings))
    run_posttrain(e2e_config(reach_data, tmp_path / "split", resume=True, **settings))
    a = WorldModel.from_pretrained(tmp_path / "full" / "checkpoints" / "last")
    b = WorldModel.from_pretrained(tmp_path / "split" / "checkpoints" / "last")
    for (name, x), (_, y) in zip(module_tensors(a.trained_modules()).items(), module_tensors(b.trained_modules()).items()):
        torch.testing.assert_close(x, y, rtol=0, atol=0, msg=name)
    prediction_steps = [r for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss_teacher" in r]
    assert prediction_steps and all(r["loss_critic"] > 0 for r in prediction_steps)


def test_frozen_stage_on_an_end_to_end_latent_encoder_uses_the_feature_cache(reach_data, tmp_path):
    """A world-model directory as the encoder of a frozen run: its ViT *and* projector (the latent
    encoder) are loaded and kept fixed, the projected latents are cached, and a new predictor trains."""
    run_posttrain(e2e_config(reach_data, tmp_path / "e2e"))
    source = WorldModel.from_pretrained(tmp_path / "e2e" / "checkpoints" / "last")
    frozen = e2e_config(reach_data, tmp_path / "frozen", mode="frozen", encoder=str(tmp_path / "e2e" / "checkpoints" / "last"),
                        feature_cache_root=str(tmp_path / "features"))
    run_posttrain(frozen)
    assert len(list((tmp_path / "features").iterdir())) == 1  # built once, keyed by encoder + projector weights
    trained = WorldModel.from_pretrained(tmp_path / "frozen" / "checkpoints" / "last")
    for name in ("encoder", "projector"):
        for (key, x), y in zip(module_tensors({name: getattr(source, name)}).items(),
                               module_tensors({name: getattr(trained, name)}).values()):
            torch.testing.assert_close(x, y, rtol=0, atol=0, msg=key)
    frames = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(trained.encode(frames), source.encode(frames))  # the same latent space


def test_ema_target_option_trains(reach_data, tmp_path):
    result = run_posttrain(e2e_config(reach_data, tmp_path / "ema", target="ema", ema_momentum=0.9))
    assert result.steps == 6 and torch.isfinite(torch.tensor(result.final_loss))


def test_planning_cost_uses_the_critic_by_default():
    wm = global_model(critic={"hidden_dim": 16, "dim": 4}).eval()
    z0, z_goal = torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    actions = torch.randn(2, 5, 1, 3) * 0.02
    default = build_cost_fn(wm, z0, None, z_goal)(actions)
    latent_only = build_cost_fn(wm, z0, None, z_goal, ObjectiveConfig(critic_weight=0.0))(actions)
    critic_only = build_cost_fn(wm, z0, None, z_goal, ObjectiveConfig(latent_weight=0.0))(actions)
    torch.testing.assert_close(default, latent_only + critic_only)
    pred = wm.rollout(z0.repeat_interleave(5, 0), None, actions.reshape(10, 1, 3))[:, -1]
    expected = wm.critic.distance(pred, z_goal.repeat_interleave(5, 0)).reshape(2, 5)
    torch.testing.assert_close(critic_only, DEFAULT_CRITIC_WEIGHT * expected, rtol=1e-5, atol=1e-5)


def test_latent_term_layer_norms_global_embeddings_unless_turned_off():
    """The shipped model's reported success rates all used the layer-normed L1 (docs/planning.md)."""
    wm = global_model().eval()
    z0, z_goal = torch.randn(1, 1, 16), torch.randn(1, 1, 16) * 3 + 1
    actions = torch.randn(1, 4, 1, 3) * 0.02
    pred = wm.rollout(z0.expand(4, -1, -1), None, actions[0])[:, -1]  # (4, 1, 16)
    def normed(z):
        return torch.nn.functional.layer_norm(z, (16,))
    torch.testing.assert_close(build_cost_fn(wm, z0, None, z_goal)(actions)[0],
                               (normed(pred) - normed(z_goal)).abs().mean((-2, -1)))
    raw = build_cost_fn(wm, z0, None, z_goal, ObjectiveConfig(layer_norm=False))(actions)[0]
    torch.testing.assert_close(raw, (pred - z_goal).abs().mean((-2, -1)))
    with pytest.raises(ValueError, match="objective layer_norm must be true or false, got None"):
        build_cost_fn(wm, z0, None, z_goal, ObjectiveConfig(layer_norm=None))


# --------------------------------------------------------------------------- bad input


def test_unknown_latent_kind_and_bad_critic_settings_name_the_key():
    with pytest.raises(ValueError, match=r"latent='pixels'.*tokens.*global"):
        LatentConfig(latent="pixels")
    with pytest.raises(ValueError, match=r"normalize_latents=false"):
        LatentConfig(latent="global")
    with pytest.raises(ValueError, match=r"critic.expectile=1.5"):
        CriticConfig(latent_dim=4, expectile=1.5)
    with pytest.raises(ValueError, match=r"critic.max_offset=0"):
        CriticConfig(latent_dim=4, max_offset=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'temperature'"):
        CriticConfig(latent_dim=4, temperature=1.0)


def test_critic_asked_for_on_a_model_without_one():
    wm = global_model().eval()
    with pytest.raises(ValueError, match=r"critic_weight=1.0 needs a world model with a temporal-distance critic"):
        build_cost_fn(wm, torch.randn(1, 1, 16), None, torch.randn(1, 1, 16), ObjectiveConfig(critic_weight=1.0))


def test_bad_end_to_end_settings_name_the_key(reach_data, tmp_path):
    with pytest.raises(ValueError, match=r"mode='joint'"):
        e2e_config(reach_data, tmp_path, mode="joint")
    with pytest.raises(ValueError, match=r"sigreg/target.*mode=end_to_end"):
        e2e_config(reach_data, tmp_path, mode="frozen", sigreg={"weight": 0.1})
    with pytest.raises(ValueError, match=r"state_readout.*mode=end_to_end"):
        e2e_config(reach_data, tmp_path, state_readout={"state_dims": [0, 1, 2]})
    with pytest.raises(ValueError, match=r"critic=3"):
        e2e_config(reach_data, tmp_path, critic=3)
    with pytest.raises(ValueError, match=r"critic_joint_weight=0.1.*mode=end_to_end and a critic"):
        e2e_config(reach_data, tmp_path, critic_joint_weight=0.1)
    with pytest.raises(ValueError, match=r"critic_joint_weight=-1"):
        e2e_config(reach_data, tmp_path, critic={}, critic_joint_weight=-1.0)


def test_end_to_end_on_an_encoder_checkpoint_without_config(reach_data, tmp_path):
    weights = tmp_path / "bare"
    encoder = build_encoder("micro", img_size=32, patch_size=8, depth=1)
    save_checkpoint(weights, module_tensors({"encoder": encoder}), {})
    (weights / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config.json"):
        run_posttrain(e2e_config(reach_data, tmp_path / "run", encoder=str(weights)))


def test_effective_rank_counts_used_dimensions():
    torch.manual_seed(0)
    assert effective_rank(torch.randn(2000, 8)) > 7.5
    assert effective_rank(torch.randn(2000, 1) * torch.ones(1, 8)) < 1.5
