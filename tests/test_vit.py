import math

import pytest
import torch

from jepa_world.models.vit import VIT_SIZES, ViTConfig, VisionTransformer, build_encoder, sincos_table

torch.set_num_threads(1)  # tiny ops: OpenMP sync costs dominate on the shared 2-core box


def micro(**overrides) -> VisionTransformer:
    torch.manual_seed(0)
    return build_encoder("micro", img_size=32, patch_size=8, depth=2, **overrides).eval()


def test_size_registry_matches_reference_table():
    giant = VIT_SIZES["giant"]
    assert (giant.embed_dim, giant.depth, giant.num_heads, giant.mlp_hidden_dim) == (1408, 40, 22, 6144)
    assert VIT_SIZES["large"].embed_dim == 1024 and VIT_SIZES["large"].depth == 24
    cfg = ViTConfig(size="small", depth=3)
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (384, 3, 6)


def test_unknown_size_lists_available_sizes():
    with pytest.raises(ValueError, match=r"'colossal'.*micro, tiny, small, base, large, huge, giant"):
        build_encoder("colossal")
    with pytest.raises(ValueError, match="patch_sise"):
        build_encoder("micro", patch_sise=8)
    with pytest.raises(ValueError, match="rope_layout='tiled'"):
        ViTConfig(size="micro", rope_layout="tiled")


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 3, 3, 32, 32), "frames 3 must be divisible by tubelet_size=2"),
        ((1, 3, 2, 30, 32), "30x32 must be divisible by patch_size=8"),
        ((1, 1, 32, 32), "1 channels"),
        ((3, 32, 32), r"\(B,C,H,W\) or \(B,C,T,H,W\)"),
    ],
)
def test_bad_input_shapes_are_named(shape, message):
    with pytest.raises(ValueError, match=message):
        micro()(torch.zeros(shape))


def test_bad_masks_are_named():
    enc = micro()
    x = torch.zeros(2, 3, 2, 32, 32)
    with pytest.raises(ValueError, match=r"masks holds ids in \[0, 16\], outside the 16-token grid"):
        enc(x, masks=torch.tensor([[0, 16], [1, 2]]))
    with pytest.raises(ValueError, match="torch.long"):
        enc(x, masks=torch.tensor([[0.0, 1.0], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="batch 1"):
        enc(x, masks=torch.tensor([[0, 1]]))


def test_grid_shape_and_token_count():
    enc = build_encoder("micro", img_size=64, patch_size=8)
    assert enc.grid_shape((2, 3, 16, 64, 64)) == (8, 8, 8)
    assert enc.grid_shape((2, 3, 64, 48)) == (1, 8, 6)
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 4, 64, 48)).shape == (1, 2 * 8 * 6, 96)
    enc2d = build_encoder("micro", patch_size=8, patch_embed="2d")
    assert enc2d.grid_shape((2, 3, 3, 32, 32)) == (3, 4, 4)


def test_image_is_a_repeated_frame_clip():
    enc = micro()
    image = torch.randn(2, 3, 32, 32)
    clip = image.unsqueeze(2).repeat(1, 1, 2, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(enc(image), enc(clip))


def test_token_order_is_time_major_then_row_major():
    enc = micro()
    video = torch.randn(1, 3, 4, 32, 32)
    t, row, col = 1, 2, 3
    bumped = video.clone()
    bumped[:, :, 2 * t : 2 * t + 2, 8 * row : 8 * row + 8, 8 * col : 8 * col + 8] += 1.0
    with torch.no_grad():
        changed = (enc.patch_embed(bumped) - enc.patch_embed(video)).abs().sum(-1)[0] > 0  # (N,)
    assert changed.nonzero().flatten().tolist() == [t * 16 + row * 4 + col]


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
def test_masked_forward_ignores_dropped_tokens_and_is_permutation_equivariant(pos_embed):
    enc = micro(pos_embed=pos_embed)
    video = torch.randn(2, 3, 4, 32, 32)
    keep = torch.stack([torch.randperm(32)[:10], torch.randperm(32)[:10]])
    with torch.no_grad():
        out = enc(video, masks=keep)
        assert out.shape == (2, 10, 96)
        torch.testing.assert_close(enc(video, masks=torch.arange(32).expand(2, -1)), enc(video))
        perm = torch.randperm(10)
        torch.testing.assert_close(enc(video, masks=keep[:, perm]), out[:, perm])
        # Pixels of dropped tubelets must not reach the kept tokens; kept pixels must.
        dropped_mask = torch.ones(2, 32, dtype=torch.bool)
        dropped_mask.scatter_(1, keep, False)
        token_noise = torch.randn(2, 32, 1) * dropped_mask.unsqueeze(-1)  # (B, N, 1)
        noise = token_noise.reshape(2, 1, 2, 1, 4, 1, 4, 1).expand(2, 3, 2, 2, 4, 8, 4, 8).reshape(video.shape)
        torch.testing.assert_close(enc(video + noise, masks=keep), out)
        assert not torch.allclose(enc(video + 1.0 - noise, masks=keep), out)


@pytest.mark.parametrize("layout, corner", [("official", (0, 0, 0)), ("interleaved", (1, 2, 1))])
def test_masked_tokens_keep_their_grid_positions(layout, corner):
    """Keeping a sub-box of the grid equals encoding the cropped clip; the crop keeps absolute
    positions at the origin (official layout) and relative ones anywhere (interleaved RoPE)."""
    enc = micro(rope_layout=layout)
    video = torch.randn(1, 3, 6, 48, 40)  # grid (3, 6, 5)
    t0, r0, c0 = corner
    ts, rs, cs = torch.meshgrid(torch.arange(t0, t0 + 2), torch.arange(r0, r0 + 3), torch.arange(c0, c0 + 4),
                                indexing="ij")
    keep = (ts * 30 + rs * 5 + cs).reshape(1, -1)
    crop = video[:, :, 2 * t0 : 2 * t0 + 4, 8 * r0 : 8 * r0 + 24, 8 * c0 : 8 * c0 + 32]
    with torch.no_grad():
        torch.testing.assert_close(enc(video, masks=keep), enc(crop), atol=2e-5, rtol=1e-4)
        if corner != (0, 0, 0):  # the positions really matter
            assert not torch.allclose(enc(video, masks=keep - keep.min()), enc(crop), atol=1e-3)


def test_activation_checkpointing_gives_same_outputs_and_gradients():
    video = torch.randn(2, 3, 4, 32, 32)
    keep = torch.stack([torch.randperm(32)[:12], torch.randperm(32)[:12]])
    results = []
    for ckpt in (False, True):
        enc = micro(activation_checkpointing=ckpt).train()
        out = enc(video, masks=keep)
        out.pow(2).mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, msg=f"gradient of {name} differs")


def test_sincos_table_layout():
    dim = 16
    table = sincos_table((2, 3, 4), dim)  # (24, 16): time D/2, rows D/4, cols D/4
    token = 1 * 12 + 2 * 4 + 3  # t=1, row=2, col=3
    expected_time = [math.sin(1 / 10000 ** (i / 4)) for i in range(4)] + [math.cos(1 / 10000 ** (i / 4)) for i in range(4)]
    expected_row = [math.sin(2.0), math.sin(2 / 100), math.cos(2.0), math.cos(2 / 100)]
    expected_col = [math.sin(3.0), math.sin(3 / 100), math.cos(3.0), math.cos(3 / 100)]
    torch.testing.assert_close(table[token], torch.tensor(expected_time + expected_row + expected_col))
    image_table = sincos_table((1, 3, 4), dim)  # I-JEPA 2-D: [cols D/2, rows D/2]
    torch.testing.assert_close(image_table[2 * 4 + 3, :8], sincos_table((1, 1, 4), dim)[3, :8])
    torch.testing.assert_close(image_table[2 * 4 + 3, 8:], image_table[2 * 4 + 0, 8:])


def test_two_d_patch_embed_encodes_each_frame():
    enc = micro(patch_embed="2d", pos_embed="sincos")
    video = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        out = enc(video)
        assert out.shape == (1, 3 * 16, 96)
        # frames are tokenised independently: frame 2's patch tokens equal an image's
        torch.testing.assert_close(enc.patch_embed(video)[:, 32:], enc.patch_embed(video[:, :, 2:3]))


def test_encoder_trains_and_handles_bf16():
    enc = micro().train()
    video = torch.randn(2, 3, 2, 32, 32)
    target = torch.randn(2, 16, 96)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = (enc(video) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(enc(video).float()).all()


def test_attention_matches_torch_multihead_attention():
    from jepa_world.models.layers import Attention

    torch.manual_seed(0)
    ours = Attention(48, 4)
    theirs = torch.nn.MultiheadAttention(48, 4, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        theirs.in_proj_bias.copy_(ours.qkv.bias)
        theirs.out_proj.weight.copy_(ours.proj.weight)
        theirs.out_proj.bias.copy_(ours.proj.bias)
        x = torch.randn(2, 10, 48)
        torch.testing.assert_close(ours(x), theirs(x, x, x, need_weights=False)[0])
