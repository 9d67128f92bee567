import pytest
import torch

from jepa_world.models.predictor import MaskedPredictor, PredictorConfig

torch.set_num_threads(1)  # tiny ops: OpenMP sync costs dominate on the shared 2-core box

GRID = (2, 4, 4)  # 32 tokens


def tiny_predictor(**overrides) -> MaskedPredictor:
    torch.manual_seed(0)
    cfg = dict(encoder_dim=48, dim=48, depth=2, num_heads=4, num_mask_tokens=2, zero_init_mask_tokens=False)
    cfg.update(overrides)
    return MaskedPredictor(PredictorConfig(**cfg)).eval()


def split_ids(batch: int, n_context: int, n_target: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm(32, generator=g) for _ in range(batch)])
    return perms[:, :n_context], perms[:, n_context : n_context + n_target]


def test_official_parameter_names():
    names = set(tiny_predictor().state_dict())
    for key in ("predictor_embed.weight", "mask_tokens.0", "mask_tokens.1", "predictor_blocks.1.attn.qkv.weight",
                "predictor_blocks.0.mlp.fc2.bias", "predictor_norm.weight", "predictor_proj.bias"):
        assert key in names, key
    assert tiny_predictor().mask_tokens[0].shape == (1, 1, 48)


def test_returns_only_targets_and_is_permutation_equivariant():
    pred = tiny_predictor()
    ctx_ids, tgt_ids = split_ids(3, 12, 7)
    context = torch.randn(3, 12, 48)
    with torch.no_grad():
        out = pred(context, ctx_ids, tgt_ids, GRID)
        assert out.shape == (3, 7, 48)
        perm_t, perm_c = torch.randperm(7), torch.randperm(12)
        torch.testing.assert_close(pred(context[:, perm_c], ctx_ids[:, perm_c], tgt_ids[:, perm_t], GRID),
                                   out[:, perm_t], atol=1e-5, rtol=1e-5)
        # Predictions depend on the context content, the mask token and the target positions.
        assert not torch.allclose(pred(context + 0.5, ctx_ids, tgt_ids, GRID), out)
        assert not torch.allclose(pred(context, ctx_ids, tgt_ids, GRID, mask_index=1), out)
        other_targets = torch.stack([torch.tensor([i for i in range(32) if i not in c][:7]) for c in ctx_ids.tolist()])
        assert not torch.allclose(pred(context, ctx_ids, other_targets, GRID), out)


def test_interleaved_rope_predictions_are_invariant_to_a_time_shift():
    pred = tiny_predictor(rope_layout="interleaved")
    ctx_ids, tgt_ids = split_ids(2, 10, 6)
    context = torch.randn(2, 10, 48)
    shift = 2 * 16  # two whole frames later on a (4, 4, 4) grid
    with torch.no_grad():
        torch.testing.assert_close(pred(context, ctx_ids + shift, tgt_ids + shift, (4, 4, 4)),
                                   pred(context, ctx_ids, tgt_ids, GRID), atol=1e-5, rtol=1e-4)


def test_gradients_reach_only_the_mask_token_used():
    pred = tiny_predictor().train()
    ctx_ids, tgt_ids = split_ids(2, 10, 6)
    pred(torch.randn(2, 10, 48), ctx_ids, tgt_ids, GRID, mask_index=1).sum().backward()
    assert pred.mask_tokens[0].grad is None or pred.mask_tokens[0].grad.abs().sum() == 0
    assert pred.mask_tokens[1].grad.abs().sum() > 0


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_predictor_fits_a_fixed_batch(pos_embed):
    pred = tiny_predictor(pos_embed=pos_embed).train()
    g = torch.Generator().manual_seed(1)
    ctx_ids, tgt_ids = split_ids(4, 12, 8)
    context, target = torch.randn(4, 12, 48, generator=g), torch.randn(4, 8, 48, generator=g)
    opt = torch.optim.Adam(pred.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (pred(context, ctx_ids, tgt_ids, GRID) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.88 * losses[0], losses


def test_activation_checkpointing_matches():
    ctx_ids, tgt_ids = split_ids(2, 10, 6)
    context = torch.randn(2, 10, 48)
    grads = []
    for ckpt in (False, True):
        pred = tiny_predictor(activation_checkpointing=ckpt).train()
        pred(context, ctx_ids, tgt_ids, GRID).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in pred.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1])


def test_bad_inputs_are_named():
    pred = tiny_predictor()
    ctx_ids, tgt_ids = split_ids(2, 10, 6)
    context = torch.randn(2, 10, 48)
    with pytest.raises(ValueError, match="mask_index=2 out of range"):
        pred(context, ctx_ids, tgt_ids, GRID, mask_index=2)
    with pytest.raises(ValueError, match="context_ids has 9 ids but context_tokens has 10"):
        pred(context, ctx_ids[:, :9], tgt_ids, GRID)
    with pytest.raises(ValueError, match="target_ids holds ids in"):
        pred(context, ctx_ids, tgt_ids + 32, GRID)
    with pytest.raises(ValueError, match=r"context_tokens must be \(B, Nc, 48\)"):
        pred(torch.randn(2, 10, 40), ctx_ids, tgt_ids, GRID)
    with pytest.raises(ValueError, match="dim=50 is not divisible by num_heads=4"):
        PredictorConfig(dim=50, num_heads=4)
    with pytest.raises(ValueError, match="pos_embed='learned'"):
        PredictorConfig(pos_embed="learned")
