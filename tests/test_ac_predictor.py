"""Action-conditioned predictor: causal structure, KV cache, RoPE layout, official key layout."""
import pytest
import torch

from jepa_world.models.ac_predictor import (
    AC_PREDICTOR_SIZES,
    CONDITIONINGS,
    ACPredictor,
    ACPredictorConfig,
    load_official_state_dict,
)
from jepa_world.models.rope import ROPE_LAYOUTS, rope_tables

ENC_DIM, ACTION_DIM, STATE_DIM, GRID = 24, 3, 5, (3, 3)


def make_predictor(seed: int = 0, **overrides) -> ACPredictor:
    torch.manual_seed(seed)
    fields = dict(encoder_dim=ENC_DIM, action_dim=ACTION_DIM, state_dim=STATE_DIM, grid_hw=GRID, dim=32, depth=2, num_heads=4)
    fields.update(overrides)
    return ACPredictor(ACPredictorConfig(**fields)).eval()


def make_inputs(batch: int = 2, steps: int = 4, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, steps, GRID[0] * GRID[1], ENC_DIM, generator=g)
    actions = torch.randn(batch, steps, ACTION_DIM, generator=g)
    states = torch.randn(batch, steps, STATE_DIM, generator=g)
    return z, actions, states


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@torch.no_grad()
def test_future_inputs_do_not_change_earlier_outputs(conditioning):
    model = make_predictor(conditioning=conditioning)
    z, actions, states = make_inputs()
    base = model(z, actions, states)
    for changed in ("z", "actions", "states"):
        inputs = {"z": z.clone(), "actions": actions.clone(), "states": states.clone()}
        inputs[changed][:, 2] += 3.0  # perturb step 2 only
        out = model(inputs["z"], inputs["actions"], inputs["states"])
        torch.testing.assert_close(out[:, :2], base[:, :2], rtol=0, atol=0)
        assert (out[:, 2:] - base[:, 2:]).abs().amax() > 1e-6, f"step-2 {changed} must influence steps >= 2"


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@torch.no_grad()
def test_action_and_state_condition_the_same_step(conditioning):
    model = make_predictor(conditioning=conditioning)
    z, actions, states = make_inputs(steps=1)
    base = model(z, actions, states)
    assert (model(z, actions + 1, states) - base).abs().amax() > 1e-6
    assert (model(z, actions, states + 1) - base).abs().amax() > 1e-6


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@torch.no_grad()
def test_kv_cache_matches_full_forward_step_by_step_and_in_chunks(conditioning):
    model = make_predictor(conditioning=conditioning)
    z, actions, states = make_inputs(steps=5)
    full = model(z, actions, states)
    cache = model.new_cache(z.shape[0], 5, z)
    stepwise = torch.cat([model.forward_cached(z[:, t : t + 1], actions[:, t : t + 1], states[:, t : t + 1], cache) for t in range(5)], 1)
    torch.testing.assert_close(stepwise, full, rtol=0, atol=1e-5)
    cache = model.new_cache(z.shape[0], 5, z)
    first = model.forward_cached(z[:, :3], actions[:, :3], states[:, :3], cache)
    rest = model.forward_cached(z[:, 3:], actions[:, 3:], states[:, 3:], cache)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds"):
        model.forward_cached(z[:, :1], actions[:, :1], states[:, :1], cache)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
@torch.no_grad()
def test_batch1_cache_expands_to_many_samples(conditioning):
    model = make_predictor(conditioning=conditioning)
    z, actions, states = make_inputs(batch=1, steps=3)
    cache = model.new_cache(1, 4, z)
    model.forward_cached(z, actions, states, cache)
    big = cache.expand_batch(6, cache.capacity)
    new_actions = torch.randn(6, 1, ACTION_DIM)
    z_new = torch.randn(1, 1, 9, ENC_DIM).expand(6, -1, -1, -1)
    s_new = states[:, -1:].expand(6, -1, -1)
    out = model.forward_cached(z_new, new_actions, s_new, big)
    reference = model(
        torch.cat([z.expand(6, -1, -1, -1), z_new], 1),
        torch.cat([actions.expand(6, -1, -1), new_actions], 1),
        torch.cat([states.expand(6, -1, -1), s_new], 1),
    )[:, -1:]
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-5)


@torch.no_grad()
def test_lone_token_step_reads_its_value_without_forming_queries_or_keys():
    """One frame token per step (additive conditioning, 1x1 grid) decoded into a one-token cache: the
    shortcut must give the teacher-forced forward's numbers with a third of the QKV product."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_predictor(conditioning="additive", grid_hw=(1, 1))
    assert model.config.step_tokens == 1
    g = torch.Generator().manual_seed(2)
    z, actions, states = torch.randn(6, 1, 1, ENC_DIM, generator=g), torch.randn(6, 1, ACTION_DIM, generator=g), torch.randn(6, 1, STATE_DIM, generator=g)
    with FlopCounterMode(display=False) as lone_flops:
        lone = model.forward_cached(z, actions, states, model.new_cache(6, 1, z))
    with FlopCounterMode(display=False) as cached_flops:
        cached = model.forward_cached(z, actions, states, model.new_cache(6, 2, z))  # room for a next step
    torch.testing.assert_close(lone, model(z, actions, states), rtol=0, atol=1e-6)
    torch.testing.assert_close(lone, cached, rtol=0, atol=0)
    dim, depth = model.config.dim, model.config.depth
    saved = depth * 2 * 6 * dim * 2 * dim  # the query and key thirds of each layer's QKV product
    assert cached_flops.get_total_flops() - lone_flops.get_total_flops() == saved


@torch.no_grad()
def test_a_broadcast_frame_and_state_are_projected_once_in_the_first_layer():
    """A rollout's first step from a shared context: the frame and state come broadcast over the samples and
    only the action token differs, so the first layer projects the shared tokens at batch 1. The predictions
    must equal those from the same inputs materialised per sample, with that layer's QKV product for the
    shared tokens (and the state embedding) done once instead of per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    model = make_predictor()
    samples, n = 7, model.config.step_tokens
    z, actions, states = make_inputs(batch=samples, steps=1)
    z_shared, state_shared = z[:1].expand(samples, -1, -1, -1), states[:1].expand(samples, -1, -1)
    with FlopCounterMode(display=False) as shared_flops:
        shared = model.forward_cached(z_shared, actions, state_shared, model.new_cache(samples, 2, z))
    with FlopCounterMode(display=False) as copied_flops:
        copied = model.forward_cached(z_shared.contiguous(), actions, state_shared.contiguous(),
                                      model.new_cache(samples, 2, z))
    torch.testing.assert_close(shared, copied, rtol=0, atol=1e-6)
    torch.testing.assert_close(shared, model(z_shared.contiguous(), actions, state_shared.contiguous()),
                               rtol=0, atol=1e-6)
    dim = model.config.dim
    saved_qkv = (samples - 1) * (n - 1) * 2 * dim * 3 * dim  # the first layer's QKV of the n - 1 shared tokens
    saved_embedding = (samples - 1) * (ENC_DIM * GRID[0] * GRID[1] + STATE_DIM) * 2 * dim  # frame and state
    assert copied_flops.get_total_flops() - shared_flops.get_total_flops() == saved_qkv + saved_embedding


def test_mask_is_sized_by_the_steps_fed():
    model = make_predictor()
    n = model.config.step_tokens
    assert n == 2 + 9
    mask = model.block_causal_mask(3, torch.device("cpu"))
    assert mask.shape == (3 * n, 3 * n)
    assert mask[:n, :n].all() and not mask[:n, n:].any()  # full within a step, no look-ahead
    assert mask[2 * n :, :].all()  # last step sees everything
    additive = make_predictor(conditioning="additive")
    assert additive.config.step_tokens == 9  # actions/states ride on the frame tokens
    assert additive.block_causal_mask(3, torch.device("cpu")).shape == (27, 27)


def test_cond_tokens_rotate_time_only_and_frames_rotate_all_axes():
    model = make_predictor(state_dim=0)
    rope = model.rope_for_steps(2, 1, torch.device("cpu"))  # step index 2
    cos = rope.cos[0, 0]  # (n, head_dim)
    seg = 2 * ((model.head_dim // 3) // 2)
    action_cos = cos[0]
    assert not torch.allclose(action_cos[:seg], torch.ones(seg))  # time position 2 rotates
    assert torch.equal(action_cos[seg:], torch.ones(model.head_dim - seg))  # no spatial rotation
    last_frame_token = cos[-1]
    assert not torch.allclose(last_frame_token[seg : 3 * seg], torch.ones(2 * seg))


@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
def test_step_zero_of_a_one_token_frame_skips_an_exact_identity_rotation(layout):
    """The planner's first step of a global-latent model has every position at 0: the tables would be
    cos 1, sin 0 exactly, so none are built, and predictions are unchanged bit for bit."""
    zero = rope_tables(torch.zeros(3, 3), 8, layout, axis_mask=torch.ones(3, 3, dtype=torch.bool))
    assert torch.equal(zero.cos, torch.ones_like(zero.cos)) and torch.equal(zero.sin, torch.zeros_like(zero.sin))
    model = make_predictor(grid_hw=(1, 1), rope_layout=layout)
    cpu = torch.device("cpu")
    assert model.rope_for_steps(0, 1, cpu) is None
    assert model.rope_for_steps(1, 1, cpu) is not None and model.rope_for_steps(0, 2, cpu) is not None
    assert make_predictor(grid_hw=(2, 2), rope_layout=layout).rope_for_steps(0, 1, cpu) is not None
    g = torch.Generator().manual_seed(0)
    z, actions, states = torch.randn(4, 1, 1, ENC_DIM, generator=g), torch.randn(4, 1, ACTION_DIM, generator=g), \
        torch.randn(4, 1, STATE_DIM, generator=g)
    with torch.no_grad():
        skipped = model(z, actions, states)
        model._rope_tables[(0, 1, cpu)] = rope_tables(torch.zeros(model.config.step_tokens, 3), model.head_dim,
                                                      layout, axis_mask=model._step_template[1])
        assert torch.equal(model(z, actions, states), skipped)


def test_rope_positions_snap_to_the_unpooled_grid():
    pooled = make_predictor(grid_hw=(2, 2), rope_grid_hw=(8, 8))
    positions, _ = pooled._step_template
    frame = positions[pooled.config.cond_tokens :]
    assert frame[:, 1].tolist() == [0.0, 0.0, 4.0, 4.0] and frame[:, 2].tolist() == [0.0, 4.0, 0.0, 4.0]


def test_state_token_optional():
    model = make_predictor(state_dim=0)
    assert model.state_encoder is None and model.config.step_tokens == 1 + 9
    z, actions, _ = make_inputs()
    assert model(z, actions).shape == z.shape


@torch.no_grad()
def test_official_layout_state_dict_loads_strictly_and_reproduces_outputs():
    source = make_predictor(seed=3, extrinsics_dim=ACTION_DIM - 1)
    keys = set(source.state_dict())
    for name in ("predictor_embed.weight", "action_encoder.weight", "state_encoder.weight", "extrinsics_encoder.weight",
                 "predictor_blocks.1.attn.qkv.weight", "predictor_blocks.0.mlp.fc2.bias", "predictor_norm.weight",
                 "predictor_proj.bias"):
        assert name in keys
    official = {f"module.{k}": v.clone() for k, v in source.state_dict().items()}  # DDP-saved release layout
    target = make_predictor(seed=9, extrinsics_dim=ACTION_DIM - 1)
    z, actions, states = make_inputs()
    assert not torch.allclose(target(z, actions, states), source(z, actions, states))
    load_official_state_dict(target, official, "release.pt")
    torch.testing.assert_close(target(z, actions, states), source(z, actions, states), rtol=0, atol=0)


def test_official_load_errors_name_the_key_and_the_action_dim():
    source = make_predictor(extrinsics_dim=ACTION_DIM - 1)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    missing = dict(state)
    del missing["module.predictor_norm.weight"]
    with pytest.raises(ValueError, match="predictor_norm.weight"):
        load_official_state_dict(make_predictor(extrinsics_dim=ACTION_DIM - 1), missing, "release.pt")
    with pytest.raises(ValueError, match="extrinsics_encoder"):  # model built without the extrinsics projection
        load_official_state_dict(make_predictor(), state, "release.pt")
    wrong_action = make_predictor(action_dim=7, extrinsics_dim=ACTION_DIM - 1)
    with pytest.raises(ValueError, match=r"action_dim=3.*action_dim=7"):
        load_official_state_dict(wrong_action, state, "release.pt")


def test_bad_inputs_give_clear_errors():
    model = make_predictor()
    z, actions, states = make_inputs()
    with pytest.raises(ValueError, match="action_dim=3"):
        model(z, torch.randn(2, 4, 7), states)
    with pytest.raises(ValueError, match="pass states"):
        model(z, actions, None)
    with pytest.raises(ValueError, match=r"\(B, T, 9, 24\)"):
        model(z[:, :, :4], actions, states)
    with pytest.raises(ValueError, match="disagree"):
        model(z, actions[:, :3], states)


def test_config_validation_and_official_size():
    with pytest.raises(ValueError, match="unknown predictor size 'huge'"):
        ACPredictorConfig(size="huge")
    with pytest.raises(ValueError, match="num_heads"):
        ACPredictorConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown conditioning 'concat'"):
        ACPredictorConfig(conditioning="concat")
    cfg = ACPredictorConfig(size="vjepa2-ac", encoder_dim=1408, action_dim=7, state_dim=7, grid_hw=(16, 16), extrinsics_dim=6)
    assert (cfg.dim, cfg.depth, cfg.num_heads) == AC_PREDICTOR_SIZES["vjepa2-ac"] == (1024, 24, 16)
    with torch.device("meta"):
        params = sum(p.numel() for p in ACPredictor(cfg).parameters())
    assert 290e6 < params < 320e6  # the released ~300M predictor
