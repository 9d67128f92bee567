"""The rollout's speed paths compute what the eager path computes (no wall times are asserted)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._dynamo.utils import counters
from torch._inductor.cpu_vec_isa import pick_vec_isa

from jepa_world import dynamics as dynamics_module
from jepa_world.dynamics import Dynamics, DynamicsConfig
from jepa_world.evaluation import configure_speed
from jepa_world.latent_encoder import LatentConfig
from jepa_world.models.ac_predictor import ACPredictor, ACPredictorConfig
from jepa_world.models.layers import (
    SHORT_ATTENTION_KEYS, SINGLE_QUERY_SUM_KEYS, Attention, Block, explicit_attention, gelu_rational_erf)
from jepa_world.models.rope import grid_positions, rope_tables, to_half_split
from jepa_world.models.vit import build_encoder
from jepa_world.world_model import WorldModel
from planners import make_planner
from planners.agent import MPCAgent


# The compiled-rollout tests share these shapes: a shared two-frame context (the cached prefix runs with a mask) and
# sample chunks of 2. A cold inductor cache compiles each (horizon, chunk size) graph in 30-35 s on a 2-core CPU;
# the shared shapes let the second test reuse the first one's horizon-3 graph from inductor's cache.
CONTEXT, CHUNK = 2, 2


def shared_context() -> tuple[Tensor, Tensor, Tensor]:
    """z0 (1, CONTEXT, 4, 32), state0 (1, CONTEXT, 4) and context actions (1, CONTEXT-1, 3), shared by all samples."""
    return torch.randn(1, CONTEXT, 4, 32), torch.randn(1, CONTEXT, 4), torch.randn(1, CONTEXT - 1, 3)


def fold_from(min_rows_x_width: int | None, monkeypatch) -> None:
    """Set the product size from which compiled CPU rollouts fold the weights in (None: the library's)."""
    if min_rows_x_width is not None:
        monkeypatch.setattr(dynamics_module, "FOLD_WEIGHTS_MIN_ROWS_X_WIDTH", min_rows_x_width)


def small_dynamics() -> Dynamics:
    torch.manual_seed(0)
    predictor = ACPredictor(ACPredictorConfig(encoder_dim=32, action_dim=3, state_dim=4, grid_hw=(2, 2), dim=32,
                                              depth=2, num_heads=2))
    return Dynamics(predictor, DynamicsConfig(integrated_state_dims=(0, 1, 2))).eval().requires_grad_(False)


@pytest.mark.slow
@pytest.mark.parametrize("folds_weights", [False, True])
def test_compiled_rollout_matches_eager_rollout_across_chunks_and_horizons(folds_weights: bool, monkeypatch) -> None:
    """Both compiled graphs: the weights as inputs, and folded in (what CPU chunks of large products run)."""
    fold_from(0 if folds_weights else None, monkeypatch)
    dynamics = small_dynamics()
    dynamics.config.rollout_chunk = CHUNK
    z0, state0, context_actions = shared_context()
    # horizon 3 over 5 samples: chunks of 2, 2 and 1, so the sample count changes between calls; horizon 1 (whose
    # planned step skips RoPE) over 4 samples: chunks of 2 only, one graph fewer to compile
    actions = {3: torch.randn(5, 3, 3), 1: torch.randn(4, 1, 3)}
    with torch.no_grad():
        eager = {h: dynamics.rollout(z0, state0, a, context_actions=context_actions) for h, a in actions.items()}
        dynamics.compile_rollout()
        for horizon, a in actions.items():
            compiled = dynamics.rollout(z0, state0, a, context_actions=context_actions)
            torch.testing.assert_close(compiled, eager[horizon], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_rollout_follows_new_weights(monkeypatch) -> None:
    """The graph that folds the weights in as constants (``FrozenWeightsCompile``; an unfolded one follows them by
    construction): weights changed in place (an optimiser step, ``load_state_dict``) or a replaced parameter must
    compile afresh, never run the weights folded before."""
    fold_from(0, monkeypatch)
    dynamics, twin = small_dynamics(), small_dynamics()  # the twin stays eager
    dynamics.config.rollout_chunk = CHUNK
    z0, state0, context_actions = shared_context()
    actions = torch.randn(CHUNK, 3, 3)  # one chunk at horizon 3: the first test's first graph
    dynamics.compile_rollout()

    def scale_in_place(model: Dynamics) -> None:
        for parameter in model.predictor.parameters():
            parameter.mul_(1.5)

    def replace_a_weight(model: Dynamics) -> None:
        fc1 = model.predictor.predictor_blocks[0].mlp.fc1
        fc1.weight = nn.Parameter(fc1.weight * -2.0, requires_grad=False)

    with torch.no_grad():
        dynamics.rollout(z0, state0, actions, context_actions=context_actions)  # compiled with the first weights
        for change in (scale_in_place, replace_a_weight):
            for model in (dynamics, twin):
                change(model)
            compiled = dynamics.rollout(z0, state0, actions, context_actions=context_actions)
            eager = twin.rollout(z0, state0, actions, context_actions=context_actions)
            torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("min_rows_x_width", "capability"), [(None, None), (0, None), (0, "avx2")])
def test_compiled_rollout_packs_folded_weights_for_large_cpu_products_only(min_rows_x_width: int | None,
                                                                          capability: str | None,
                                                                          monkeypatch) -> None:
    """With products of at least ``FOLD_WEIGHTS_MIN_ROWS_X_WIDTH`` the CPU rollout folds the weights, and inductor
    packs them once, at compile time (oneDNN's products: the speed it is for), with each MLP's bias and GELU fused
    into its first product where inductor writes AVX-512 code (``gelu_in_folded_product``), and not with AVX2 code
    (``ATEN_CPU_CAPABILITY=avx2``: inductor reads it per compile); small products keep the weights graph inputs,
    whose per-call cost is lower. The equality tests pass either way, so they cannot tell."""
    fold_from(min_rows_x_width, monkeypatch)
    if capability is not None:
        monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)
    avx512_code = "avx512" in str(pick_vec_isa())
    dynamics = small_dynamics()
    dynamics.config.rollout_chunk = CHUNK
    z0, state0, context_actions = shared_context()
    actions = torch.randn(CHUNK, 3, 3)
    with torch.no_grad():
        eager = dynamics.rollout(z0, state0, actions, context_actions=context_actions)
        dynamics.compile_rollout()
        counters["inductor"].clear()
        compiled = dynamics.rollout(z0, state0, actions, context_actions=context_actions)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)  # with AVX2 code: the MLP's rational erf
    packed = counters["inductor"]["mkldnn_linear_weight_pack_matcher_count"]
    gelu_fused = counters["inductor"]["mkldnn_unary_fusion_matcher_count"]
    if min_rows_x_width == 0:
        assert packed > 0
        assert gelu_fused >= dynamics.predictor.config.depth if avx512_code else gelu_fused == 0
    else:
        assert packed == gelu_fused == 0


def small_world_model(latent: str) -> WorldModel:
    """A 16 px, one-block ViT with token latents (pooled 2x2 grid) or a global projected latent, and a predictor."""
    torch.manual_seed(0)
    encoder = build_encoder("tiny", img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2)
    latents = LatentConfig(latent=latent, latent_dim=16, projector_hidden=32, latent_pool=2,
                           normalize_latents=latent == "tokens")
    return WorldModel.create(encoder, action_dim=3, latent_config=latents, dim=32, depth=1,
                             num_heads=2).eval().requires_grad_(False)


@pytest.mark.parametrize("latent", ["tokens", "global"])
def test_encode_traces_as_one_graph(latent: str) -> None:
    """``compile_encode`` compiles ``embed`` whole: a graph break would run part of the ViT eagerly, silently."""
    latent_encoder = small_world_model(latent).latent_encoder
    frames = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8)  # channels-last, as cameras give them
    with torch.no_grad():
        explanation = torch._dynamo.explain(latent_encoder.embed)(frames)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_compiled_planning_encodes_and_rolls_out_as_eager() -> None:
    """``compile=true`` in plan.py/evaluate.py: the compiled observation encoder and rollout give eager's latents,
    at one and two frames (the planner's observation, then a batch of goals)."""
    world_model, twin = small_world_model("global"), small_world_model("global")  # the twin stays eager
    frames = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    actions = torch.randn(4, 2, 3)
    configure_speed(world_model, "fp32", compile_planning=True)
    with torch.no_grad():
        for batch in (1, 2):
            torch.testing.assert_close(world_model.encode(frames[:batch]), twin.encode(frames[:batch]),
                                       atol=1e-5, rtol=1e-5)
        z0 = twin.encode(frames[:1])
        torch.testing.assert_close(world_model.rollout(z0, None, actions), twin.rollout(z0, None, actions),
                                   atol=1e-5, rtol=1e-5)
    assert world_model.latent_encoder._compiled_embed is not None
    assert world_model.dynamics._compiled_rollout is not None


@pytest.mark.slow
def test_compiled_agent_compiles_its_encoder_and_rollout_once() -> None:
    """An agent over a compiled world model encodes its goal (one (H, W, 3) image) and each observation with one
    encoder graph, and plans with one rollout graph: a recompile would add its compile time to every run."""
    torch._dynamo.reset()  # error_on_recompile counts this test's compiles only
    world_model = small_world_model("global")
    configure_speed(world_model, "fp32", compile_planning=True)
    box = np.ones(3, dtype=np.float32)
    agent = MPCAgent(world_model, make_planner("cem", samples=4, elites=2, iterations=2), horizon=2,
                     action_low=-box, action_high=box)
    rng = np.random.default_rng(0)
    with torch._dynamo.config.patch(error_on_recompile=True):
        agent.reset(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        for _ in range(2):
            assert np.isfinite(agent.act({"pixels": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)})).all()


@pytest.mark.parametrize("has_bf16_units", [False, True])
def test_bf16_decoding_warns_on_cpus_without_bf16_matrix_instructions(has_bf16_units: bool, monkeypatch,
                                                                      caplog) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: has_bf16_units)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    predictor = small_dynamics().predictor
    with caplog.at_level("WARNING", logger="jepa_world.models.ac_predictor"):
        predictor.autocast_decoding(torch.bfloat16)
        predictor.autocast_decoding(None)  # back to full precision: nothing to warn about
    warnings = [r for r in caplog.records if "AVX512-BF16 or AMX" in r.getMessage()]
    assert len(warnings) == (0 if has_bf16_units else 1)
    assert predictor.decoding_dtype is None


def test_bf16_decoding_is_close_and_returns_the_input_dtype() -> None:
    dynamics = small_dynamics()
    z0, state0, actions = torch.randn(1, 4, 32), torch.randn(1, 4), torch.randn(3, 2, 3)
    with torch.no_grad():
        full = dynamics.rollout(z0, state0, actions)
        dynamics.predictor.autocast_decoding(torch.bfloat16)
        low = dynamics.rollout(z0, state0, actions)
        dynamics.predictor.autocast_decoding(None)
        restored = dynamics.rollout(z0, state0, actions)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=0.1, rtol=0.05)  # bf16 keeps ~3 significant digits
    torch.testing.assert_close(restored, full, atol=0.0, rtol=0.0)


def test_plan_and_evaluate_configs_reach_the_speed_paths() -> None:
    from types import SimpleNamespace

    dynamics = small_dynamics()
    world_model = SimpleNamespace(predictor=dynamics.predictor)  # without compiling it touches only the predictor
    z0, state0, actions = torch.randn(1, 4, 32), torch.randn(1, 4), torch.randn(3, 2, 3)
    with pytest.raises(ValueError, match=r"rollout_precision='fp16'; expected one of \['fp32', 'bf16'\]"):
        configure_speed(world_model, "fp16")
    with torch.no_grad():
        full = dynamics.rollout(z0, state0, actions)
        configure_speed(world_model, "fp32")
        assert torch.equal(dynamics.rollout(z0, state0, actions), full)  # the default changes nothing
        configure_speed(world_model, "bf16")
        assert not torch.equal(dynamics.rollout(z0, state0, actions), full)


def test_rational_erf_gelu_is_as_close_to_the_exact_gelu_as_torchs() -> None:
    """``gelu_rational_erf``, the folded MLP's GELU with AVX2 code: within fp32 GELU's own error of the fp64 GELU,
    finite for any finite input, and 0 / x where GELU saturates."""
    x = torch.cat([torch.linspace(-30, 30, 600_001), torch.tensor([-3e38, -1e4, 0.0, 1e4, 3e38])])
    exact = F.gelu(x.double())
    got = gelu_rational_erf(x).double()
    assert torch.isfinite(got).all()
    error = (got - exact).abs() / exact.abs().clamp_min(1)
    torch_error = (F.gelu(x).double() - exact).abs() / exact.abs().clamp_min(1)
    assert error.max() <= 1.05 * torch_error.max()
    assert error.max() < 1.2e-6
    assert (got[x < -8].abs() < 5e-7).all() and torch.equal(got[x > 8], x[x > 8].double())


def test_half_split_queries_and_keys_give_the_same_attention() -> None:
    """The folded rollout's channel order (``qk_half_split``): queries and keys reordered per head, values not, the
    attention output unchanged; tables in the other order are refused."""
    torch.manual_seed(0)
    attention = Attention(dim=32, num_heads=2).eval()
    x = torch.randn(3, 5, 32)
    tables = rope_tables(grid_positions(5, 1, 1), head_dim=16)
    order = to_half_split(torch.arange(16), 0)
    with torch.no_grad():
        q, k, v = attention.project_qkv(x, tables)
        q_split, k_split, v_split = attention.project_qkv(x, tables.in_half_split_order(), qk_half_split=True)
        torch.testing.assert_close(q_split, q[..., order], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(k_split, k[..., order], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(v_split, v, atol=0, rtol=0)
        torch.testing.assert_close(attention.attend(q_split, k_split, v_split), attention.attend(q, k, v),
                                   atol=1e-6, rtol=1e-6)
        with pytest.raises(ValueError, match="half_split=False .* qk_half_split=True"):
            attention.project_qkv(x, tables, qk_half_split=True)


@pytest.mark.parametrize("masked", [False, True])
def test_explicit_attention_matches_sdpa_and_serves_short_cpu_attention(masked: bool, one_thread) -> None:
    """Attention over few keys runs as explicit matmul + softmax on CPU in bf16 and on several fp32 threads
    (where the flash kernel is the slower one), the kernel on one fp32 thread; the explicit path computes what
    scaled_dot_product_attention does, masks included."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(5, 3, n, 16, generator=g) for n in (4, 10, 10))
    mask = torch.rand(4, 10, generator=g) > 0.3 if masked else None
    if mask is not None:
        mask[:, 0] = True  # every query sees at least one key
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask), expected, rtol=1e-5, atol=1e-6)
    attention = Attention(48, 3).eval()
    low = [x.bfloat16() for x in (q, k, v)]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention.attend(*low, mask)
        explicit = attention.proj(explicit_attention(*low, mask).transpose(1, 2).flatten(2))
    assert torch.equal(out, explicit)  # the explicit path is the one taken
    with torch.no_grad():
        reference = attention.proj(expected.transpose(1, 2).flatten(2))
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)

    def merged(heads: torch.Tensor) -> torch.Tensor:  # (B, H, Nq, hd) -> the layer's (B, Nq, D) output
        return attention.proj(heads.transpose(1, 2).flatten(2))

    long_keys = torch.randn(5, 3, SHORT_ATTENTION_KEYS + 1, 16, generator=g)
    with torch.no_grad():  # fp32: the kernel on one thread (the one_thread fixture), explicit on two
        assert torch.equal(attention.attend(q, k, v, mask), merged(expected))
        torch.set_num_threads(2)
        assert torch.equal(attention.attend(q, k, v, mask), merged(explicit_attention(q, k, v, mask)))
        kernel = F.scaled_dot_product_attention(q, long_keys, long_keys)
        assert torch.equal(attention.attend(q, long_keys, long_keys), merged(kernel))  # long keys keep the kernel


@pytest.mark.parametrize("queries", [1, 4])
def test_one_key_attention_reads_the_value_without_a_kernel(queries: int, one_thread) -> None:
    """Over a single key the softmax weight is exactly 1, so ``attend`` returns that key's value for every query:
    equal to scaled_dot_product_attention bit for bit. The gradient of q and k is exactly zero (the kernel's
    backward leaves rounding of about 1e-8); the value's is the kernel's."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 3, queries, 16, generator=g, requires_grad=True)
    k, v = (torch.randn(5, 3, 1, 16, generator=g, requires_grad=True) for _ in range(2))
    attention = Attention(48, 3)
    out = attention.attend(q, k, v)
    expected = attention.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
    assert torch.equal(out, expected)
    upstream = torch.randn(out.shape, generator=g)
    grad_q, grad_k, grad_v = torch.autograd.grad(out, (q, k, v), upstream, allow_unused=True, materialize_grads=True)
    kernel_q, kernel_k, kernel_v = torch.autograd.grad(expected, (q, k, v), upstream)
    assert not grad_q.any() and not grad_k.any()
    torch.testing.assert_close(grad_q, kernel_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_k, kernel_k, rtol=0, atol=1e-6)
    assert torch.equal(grad_v, kernel_v)
    masked = attention.attend(q, k, v, torch.ones(queries, 1, dtype=torch.bool))  # a mask keeps the kernel path
    assert torch.equal(masked, expected)


@pytest.mark.parametrize("keys", [1, 3, SINGLE_QUERY_SUM_KEYS, SINGLE_QUERY_SUM_KEYS + 1])
def test_single_query_attention_matches_sdpa(keys: int) -> None:
    """One query (KV-cached decoding at one token per step) over few keys takes the multiply-and-sum branch;
    it and the matmul branch beyond it compute what scaled_dot_product_attention does, in fp32 and bf16."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(7, 3, n, 16, generator=g) for n in (1, keys, keys))
    torch.testing.assert_close(explicit_attention(q, k, v), F.scaled_dot_product_attention(q, k, v),
                               rtol=1e-5, atol=1e-6)
    low = [x.bfloat16() for x in (q, k, v)]
    torch.testing.assert_close(explicit_attention(*low).float(), F.scaled_dot_product_attention(q, k, v),
                               rtol=0.05, atol=0.05)


@pytest.mark.parametrize("conditioning", ["tokens", "additive"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_cached_rollout_traces_as_one_graph(conditioning: str, threads: int, dtype: torch.dtype | None,
                                           set_torch_threads) -> None:
    """``compile_rollout`` compiles a chunk's whole cached rollout: a graph break (such as an untraceable call in
    the layer loop, or a RoPE table built inside the graph because ``_build_rope_tables`` missed a step) splits
    it or makes dynamo skip the frame and run it eagerly, which loses the speed without any error."""
    torch.manual_seed(0)
    set_torch_threads(threads)
    predictor = ACPredictor(ACPredictorConfig(encoder_dim=32, action_dim=3, state_dim=4, grid_hw=(2, 2), dim=32,
                                              depth=2, num_heads=2, conditioning=conditioning))
    dynamics = Dynamics(predictor, DynamicsConfig(integrated_state_dims=(0, 1, 2))).eval()
    predictor.autocast_decoding(dtype)
    context, horizon = 2, 3  # a cached prefix with its mask, then steps that attend to it
    z0, state0 = torch.randn(1, context, 4, 32), torch.randn(1, context, 4)
    context_actions, actions = torch.randn(1, context - 1, 3), torch.randn(5, horizon, 3)
    with torch.no_grad():
        dynamics._build_rope_tables(context, horizon, z0.device, half_split=False)  # what rollout does first
        explanation = torch._dynamo.explain(dynamics._cached_rollout)(z0, state0, actions, context_actions)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_compiled_blocks_add_their_biases_apart_from_the_matmul(dtype: torch.dtype | None) -> None:
    """Under torch.compile every block linear is a bias-free matmul plus an add (``layers.linear``), which
    inductor fuses into the next elementwise kernel; eager keeps the fused ``addmm``. Both give the same numbers,
    and under bf16 autocast the add keeps the product's dtype."""
    block = Block(32, 2, 64).eval().requires_grad_(False)
    x = torch.randn(3, 5, 32)
    graphs: list[torch.fx.GraphModule] = []

    def capture(graph: torch.fx.GraphModule, example_inputs: list) -> torch.fx.GraphModule:
        graphs.append(graph)
        return graph

    with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        eager = block(x)
        compiled = torch.compile(block, backend=capture, fullgraph=True)(x)
    linears = [node for graph in graphs for node in graph.graph.nodes if node.target is F.linear]
    assert len(linears) == 4  # qkv, proj, fc1, fc2
    assert all(len(node.args) == 2 and node.kwargs.get("bias") is None for node in linears)
    assert compiled.dtype == eager.dtype
    torch.testing.assert_close(compiled, eager, **({} if dtype is None else {"atol": 0.05, "rtol": 0.05}))
