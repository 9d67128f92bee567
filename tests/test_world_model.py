"""WorldModel: encoding, KV-cached rollout == naive recomputation, state rule, persistence, bad input."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from jepa_world.models.vit import build_encoder
from jepa_world.model_format import CheckpointError
from jepa_world.dynamics import CPU_CHUNK_TOKENS, DynamicsConfig
from jepa_world.latent_encoder import LatentConfig
from jepa_world.models.ac_predictor import CONDITIONINGS
from jepa_world.world_model import WorldModel, split_world_model_config

ACTION_DIM, STATE_DIM = 3, 5


def make_world_model(latent_pool: int = 2, state_dim: int = STATE_DIM, conditioning: str = "tokens",
                     **config) -> WorldModel:
    torch.manual_seed(0)
    encoder = build_encoder("micro", img_size=32, patch_size=8, depth=1)
    dims = (0, 1, 2) if state_dim else ()
    return WorldModel.create(encoder, ACTION_DIM, state_dim, LatentConfig(latent_pool=latent_pool, **config),
                             DynamicsConfig(integrated_state_dims=dims), dim=32, depth=2, num_heads=4,
                             conditioning=conditioning).eval()


def frames(batch: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_encode_layouts_agree_and_latents_are_layer_normed():
    wm = make_world_model()
    x = frames()
    z = wm.encode(x)
    assert z.shape == (3, 4, 96)  # 4x4 grid pooled by 2
    torch.testing.assert_close(wm.encode(x.permute(0, 2, 3, 1)), z)  # channel-last env pixels
    normalised = (x.float() / 255 - wm.latent_encoder.pixel_mean) / wm.latent_encoder.pixel_std
    torch.testing.assert_close(wm.encode(normalised), z)
    torch.testing.assert_close(z.mean(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(-1, unbiased=False), torch.ones(3, 4), atol=1e-3, rtol=0)
    assert not z.requires_grad


def test_latent_pool_averages_the_token_grid():
    pooled = make_world_model(latent_pool=2, normalize_latents=False)
    full = make_world_model(latent_pool=1, normalize_latents=False)
    x = frames(1)
    tokens = full.encode(x).reshape(1, 4, 4, 96)
    expected = tokens.reshape(1, 2, 2, 2, 2, 96).mean(dim=(2, 4)).reshape(1, 4, 96)
    torch.testing.assert_close(pooled.encode(x), expected, atol=1e-5, rtol=0)


@torch.no_grad()
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@pytest.mark.parametrize("context", ["single", "shared_history", "per_sample_history"])
def test_cached_rollout_equals_naive_recomputation(context, conditioning):
    wm = make_world_model(conditioning=conditioning)
    samples, horizon = 6, 4
    g = torch.Generator().manual_seed(1)
    actions = torch.randn(samples, horizon, ACTION_DIM, generator=g)
    if context == "single":
        z0, state0, past = wm.encode(frames(1)), torch.randn(1, STATE_DIM, generator=g), None
    else:
        batch = 1 if context == "shared_history" else samples
        z0 = torch.randn(batch, 3, 4, 96, generator=g)
        state0 = torch.randn(batch, 3, STATE_DIM, generator=g)
        past = torch.randn(batch, 2, ACTION_DIM, generator=g)
    cached = wm.rollout(z0, state0, actions, context_actions=past)
    naive = wm.rollout(z0, state0, actions, context_actions=past, use_kv_cache=False)
    assert cached.shape == (samples, horizon, 4, 96)
    torch.testing.assert_close(cached, naive, rtol=0, atol=1e-5)
    wm.dynamics.config.rollout_chunk = 4  # uneven chunks must not change results
    torch.testing.assert_close(wm.rollout(z0, state0, actions, context_actions=past), cached, rtol=0, atol=1e-5)


@torch.no_grad()
def test_a_shared_context_frame_and_state_are_computed_with_once_per_rollout():
    """One context frame and state for all samples reach the predictor broadcast, so its first step embeds
    them and projects their first-layer tokens once; the same context copied per sample must give the
    same predictions at more FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    wm = make_world_model()
    samples = 6
    g = torch.Generator().manual_seed(3)
    z0, state0 = wm.encode(frames(1)), torch.randn(1, STATE_DIM, generator=g)
    actions = torch.randn(samples, 3, ACTION_DIM, generator=g)
    with FlopCounterMode(display=False) as shared_flops:
        shared = wm.rollout(z0, state0, actions)
    with FlopCounterMode(display=False) as copied_flops:
        copied = wm.rollout(z0.expand(samples, -1, -1).contiguous(), state0.expand(samples, -1).contiguous(), actions)
    torch.testing.assert_close(shared, copied, rtol=0, atol=1e-5)  # rounding of the smaller products
    assert shared_flops.get_total_flops() < copied_flops.get_total_flops()


@torch.no_grad()
def test_cpu_rollout_runs_in_cache_sized_chunks_with_unchanged_results(set_torch_threads):
    wm = make_world_model()
    step_tokens = wm.predictor.config.step_tokens
    cpu = torch.device("cpu")
    set_torch_threads(2)
    assert wm.dynamics.rollout_chunk_for(cpu, use_kv_cache=True) == 2 * CPU_CHUNK_TOKENS // step_tokens  # per thread
    set_torch_threads(1)
    assert wm.dynamics.rollout_chunk_for(cpu, use_kv_cache=True) == CPU_CHUNK_TOKENS // step_tokens
    assert wm.dynamics.rollout_chunk_for(cpu, use_kv_cache=False) == 0  # the training path keeps its batch
    samples = CPU_CHUNK_TOKENS // step_tokens + 3  # one full chunk and a short one
    g = torch.Generator().manual_seed(2)
    z0, state0 = wm.encode(frames(1)), torch.randn(1, STATE_DIM, generator=g)
    actions = torch.randn(samples, 2, ACTION_DIM, generator=g)
    chunked = wm.rollout(z0, state0, actions)
    wm.dynamics.config.rollout_chunk = samples  # an explicit setting wins: here, one chunk
    assert wm.dynamics.rollout_chunk_for(cpu, use_kv_cache=True) == samples
    # Bit-identical on the Intel Xeon the chunking was measured on; other BLAS kernels (AMD EPYC) round a
    # chunk's smaller matmuls differently, by about 1e-6.
    torch.testing.assert_close(wm.rollout(z0, state0, actions), chunked, rtol=0, atol=1e-5)


@torch.no_grad()
def test_rollout_first_step_is_predict_and_actions_matter():
    wm = make_world_model()
    z0, state0 = wm.encode(frames(1)), torch.randn(1, STATE_DIM)
    actions = torch.randn(5, 2, ACTION_DIM)
    out = wm.rollout(z0, state0, actions)
    first = wm.predict(z0.unsqueeze(1).expand(5, -1, -1, -1), actions[:, :1], state0.unsqueeze(1).expand(5, -1, -1))
    torch.testing.assert_close(out[:, 0], first[:, 0], rtol=0, atol=1e-5)
    assert (out[0] - out[1]).abs().amax() > 1e-6  # different actions, different futures


def test_state_rule_integrates_displacements_into_chosen_dims():
    wm = make_world_model()
    states = torch.zeros(2, STATE_DIM)
    actions = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]])
    moved = wm.next_states(states, actions)
    torch.testing.assert_close(moved, torch.tensor([[1.0, 2.0, 3.0, 0, 0], [-1.0, 0.5, 0.0, 0, 0]]))
    wm.dynamics.config.state_update = "hold"
    assert torch.equal(wm.next_states(states, actions), states)
    with pytest.raises(ValueError, match="integrated_state_dims"):
        make_world_model(state_dim=2)  # dims (0, 1, 2) do not fit a 2-d state


@torch.no_grad()
def test_stateless_model_rolls_out_without_states():
    wm = make_world_model(state_dim=0)
    z0 = wm.encode(frames(1))
    actions = torch.randn(4, 3, ACTION_DIM)
    torch.testing.assert_close(
        wm.rollout(z0, None, actions), wm.rollout(z0, None, actions, use_kv_cache=False), rtol=0, atol=1e-5
    )


@torch.no_grad()
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_save_and_load_round_trip(tmp_path, conditioning):
    wm = make_world_model(conditioning=conditioning)
    with torch.no_grad():
        for p in wm.predictor.parameters():
            p.add_(0.01 * torch.randn_like(p))
    wm.save_pretrained(tmp_path / "wm")
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    assert loaded.latent_encoder.config == wm.latent_encoder.config and loaded.dynamics.config == wm.dynamics.config
    assert loaded.predictor.config == wm.predictor.config
    x, actions, state0 = frames(2), torch.randn(3, 2, ACTION_DIM), torch.randn(1, STATE_DIM)
    torch.testing.assert_close(loaded.encode(x), wm.encode(x), rtol=0, atol=0)
    z0 = wm.encode(x[:1])
    torch.testing.assert_close(loaded.rollout(z0, state0, actions), wm.rollout(z0, state0, actions), rtol=0, atol=0)


def test_from_pretrained_bad_directories(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        WorldModel.from_pretrained(tmp_path / "missing")
    wm = make_world_model()
    wm.save_pretrained(tmp_path / "wm")
    config_path = tmp_path / "wm" / "config.json"
    config = json.loads(config_path.read_text())
    broken = dict(config)
    del broken["world_model"]
    config_path.write_text(json.dumps(broken))
    with pytest.raises(CheckpointError, match=r"missing section\(s\) \['world_model'\]"):
        WorldModel.from_pretrained(tmp_path / "wm")
    config["predictor"]["action_dims"] = 3
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="action_dims"):
        WorldModel.from_pretrained(tmp_path / "wm")
    del config["predictor"]["action_dims"]
    config_path.write_text(json.dumps(config))
    weights_path = tmp_path / "wm" / "model.safetensors"
    weights = load_file(weights_path)
    del weights["predictor.action_encoder.weight"]
    save_file(weights, weights_path)
    with pytest.raises(CheckpointError, match="predictor.action_encoder.weight"):
        WorldModel.from_pretrained(tmp_path / "wm")


def test_bad_rollout_and_encode_inputs():
    wm = make_world_model()
    z0 = torch.randn(1, 4, 96)
    with pytest.raises(ValueError, match="action_dim=3"):
        wm.rollout(z0, torch.zeros(1, STATE_DIM), torch.zeros(4, 2, 7))
    with pytest.raises(ValueError, match="pass state0"):
        wm.rollout(z0, None, torch.zeros(4, 2, ACTION_DIM))
    with pytest.raises(ValueError, match="context_actions"):
        wm.rollout(torch.randn(1, 2, 4, 96), torch.zeros(1, 2, STATE_DIM), torch.zeros(4, 2, ACTION_DIM))
    with pytest.raises(ValueError, match="z0 batch 2"):
        wm.rollout(torch.randn(2, 4, 96), torch.zeros(1, STATE_DIM), torch.zeros(4, 2, ACTION_DIM))
    differentiable = torch.zeros(4, 2, ACTION_DIM, requires_grad=True)
    with pytest.raises(ValueError, match=r"cannot be differentiated \(actions requires grad\).*use_kv_cache=False"):
        wm.rollout(z0, torch.zeros(1, STATE_DIM), differentiable)  # before any in-place cache write
    wm.rollout(z0, torch.zeros(1, STATE_DIM), differentiable, use_kv_cache=False).sum().backward()
    assert differentiable.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="predictor expects 4"):
        wm.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8 or float"):
        wm.encode(torch.zeros(1, 3, 32, 32, dtype=torch.int64))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_from_pretrained_refuses_non_finite_weights_naming_the_key(tmp_path, bad):
    from safetensors.torch import load_file, save_file

    from jepa_world.model_format import CheckpointError

    directory = make_world_model().save_pretrained(tmp_path / "wm")
    tensors = load_file(str(directory / "model.safetensors"))
    key = next(k for k in tensors if k.startswith("predictor.") and tensors[k].is_floating_point())
    tensors[key].view(-1)[0] = bad
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: non-finite values .*'{key}'"):
        WorldModel.from_pretrained(directory)


def test_world_model_is_a_latent_encoder_and_a_dynamics_composed():
    wm = make_world_model()
    x, actions, state0 = frames(2), torch.randn(4, 2, ACTION_DIM), torch.randn(1, STATE_DIM)
    z = wm.latent_encoder.encode(x)
    torch.testing.assert_close(wm.encode(x), z, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(wm.rollout(z[:1], state0, actions), wm.dynamics.rollout(z[:1], state0, actions),
                                   rtol=0, atol=0)
    assert wm.dynamics.action_state_map == (0, 1, 2)
    assert list(wm.trained_modules()) == ["encoder", "predictor"]  # the file's key prefixes are unchanged


def test_frozen_latent_encoder_never_trains_and_a_trainable_one_does():
    frozen = make_world_model()
    frozen.train()
    assert not frozen.latent_encoder.training and frozen.dynamics.training
    assert not any(p.requires_grad for p in frozen.latent_encoder.parameters())
    torch.manual_seed(0)
    encoder = build_encoder("micro", img_size=32, patch_size=8, depth=1)
    config = LatentConfig(latent="global", normalize_latents=False, latent_dim=16, projector_hidden=32, trainable_encoder=True)
    trainable = WorldModel.create(encoder, ACTION_DIM, 0, config, size="micro").train()
    assert trainable.latent_encoder.training and all(p.requires_grad for p in trainable.latent_encoder.parameters())
    trainable.embed(frames(2)).sum().backward()
    assert trainable.encoder.patch_embed.proj.weight.grad.abs().sum() > 0

def test_encode_gives_the_inference_latent_in_either_mode_and_keeps_the_mode():
    torch.manual_seed(0)
    encoder = build_encoder("micro", img_size=32, patch_size=8, depth=1)
    config = LatentConfig(latent="global", normalize_latents=False, latent_dim=16, projector_hidden=32, trainable_encoder=True)
    wm = WorldModel.create(encoder, ACTION_DIM, 0, config, size="micro")
    batch_norm = wm.projector.net[1]
    batch_norm.running_mean.fill_(0.5)  # away from the batch's own statistics, so a train-mode pass would show
    x = frames(3)
    inference = wm.eval().encode(x)
    running_mean = batch_norm.running_mean.clone()
    assert not wm.latent_encoder.training
    torch.testing.assert_close(wm.train().encode(x), inference, rtol=0, atol=0)
    assert wm.latent_encoder.training and batch_norm.training  # restored after the call
    torch.testing.assert_close(batch_norm.running_mean, running_mean, rtol=0, atol=0)  # statistics untouched
    assert not torch.allclose(wm.embed(x), inference)  # in train mode embed uses the batch's statistics


def test_token_grid_view_shares_the_vit_and_is_keyed_apart():
    wm = make_world_model(latent_pool=2)
    view = wm.latent_encoder.token_grid(1)
    assert view.encoder is wm.encoder
    assert view.encode(frames(1)).shape == (1, 16, 96)
    assert view.cache_components()["latents"] != wm.latent_encoder.cache_components()["latents"]
    assert view.cache_components()["encoder_weights"] == wm.latent_encoder.cache_components()["encoder_weights"]


def test_world_model_config_section_names_unknown_keys_and_both_halves():
    with pytest.raises(ValueError, match=r"unknown world_model key\(s\) \['laten_pool'\].*latent encoder.*dynamics"):
        split_world_model_config({"laten_pool": 2})
    latent, dynamics = split_world_model_config({"latent_pool": 2, "state_update": "hold"})
    assert latent.latent_pool == 2 and dynamics.state_update == "hold"
