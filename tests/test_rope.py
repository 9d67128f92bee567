import math

import pytest
import torch

from jepa_world.models.rope import (
    apply_rope, axis_segment_width, grid_positions, positions_from_ids, rope_tables, to_half_split)

torch.set_num_threads(1)  # tiny ops: OpenMP sync costs dominate on the shared 2-core box


def rotate_by_hand(x: list[float], position: tuple[int, int, int], layout: str) -> list[float]:
    """Reference rotation of one head vector, written as plain loops over dimensions."""
    head_dim = len(x)
    seg = 2 * ((head_dim // 3) // 2)
    half = seg // 2
    out = list(x)
    for axis in range(3):
        start = axis * seg
        for pair in range(half):
            i, j = start + 2 * pair, start + 2 * pair + 1
            if layout == "official":  # tables tiled: element e of the segment uses frequency e mod half
                freq_i, freq_j = (2 * pair) % half, (2 * pair + 1) % half
            else:  # interleaved: both elements of a pair share one frequency
                freq_i = freq_j = pair
            angle_i = position[axis] / 10000 ** (freq_i / half)
            angle_j = position[axis] / 10000 ** (freq_j / half)
            out[i] = x[i] * math.cos(angle_i) - x[j] * math.sin(angle_i)
            out[j] = x[j] * math.cos(angle_j) + x[i] * math.sin(angle_j)
    return out  # dims past 3*seg stay unrotated


@pytest.mark.parametrize("layout", ["official", "interleaved"])
def test_rotation_matches_hand_computation(layout):
    head_dim = 16  # segments of 4, tail of 4
    torch.manual_seed(0)
    positions = torch.tensor([[0, 0, 0], [1, 2, 3], [3, 0, 5], [7, 6, 1]])
    x = torch.randn(1, 1, 4, head_dim, dtype=torch.float64)
    got = apply_rope(x.float(), rope_tables(positions, head_dim, layout))[0, 0]
    for n, pos in enumerate(positions.tolist()):
        expected = torch.tensor(rotate_by_hand(x[0, 0, n].tolist(), tuple(pos), layout))
        torch.testing.assert_close(got[n], expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, 12:], x[0, 0, :, 12:].float())  # tail untouched


@pytest.mark.parametrize("layout", ["official", "interleaved"])
def test_half_split_order_rotates_the_same_channels(layout):
    """Queries in half-split order rotated by tables in that order are the rotated queries, reordered."""
    head_dim = 16
    torch.manual_seed(0)
    positions = torch.tensor([[0, 0, 0], [1, 2, 3], [3, 0, 5], [7, 6, 1]])
    tables = rope_tables(positions, head_dim, layout)
    order = to_half_split(torch.arange(head_dim), 0)
    assert order.tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15]
    x = torch.randn(2, 3, 4, head_dim)
    half_split = tables.in_half_split_order()
    assert half_split.half_split and half_split.rows(slice(1, 3)).half_split
    torch.testing.assert_close(apply_rope(x[..., order], half_split), apply_rope(x, tables)[..., order],
                               atol=0, rtol=0)


def attention_logits(q, k, positions, layout):
    tables = rope_tables(positions, q.shape[-1], layout)
    return apply_rope(q, tables) @ apply_rope(k, tables).transpose(-1, -2)


def test_interleaved_logits_depend_only_on_relative_positions():
    torch.manual_seed(0)
    head_dim = 64
    q, k = torch.randn(2, 4, 20, head_dim), torch.randn(2, 4, 20, head_dim)
    positions = torch.randint(0, 16, (20, 3))
    reference = attention_logits(q, k, positions, "interleaved")
    for offset in ([3, 0, 0], [0, 5, 11], [7, 2, 9]):
        shifted = attention_logits(q, k, positions + torch.tensor(offset), "interleaved")
        torch.testing.assert_close(shifted, reference, atol=1e-4, rtol=1e-4)


def test_official_layout_mixes_frequencies_so_shifts_change_logits():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 10, 64), torch.randn(1, 2, 10, 64)
    positions = torch.randint(0, 8, (10, 3))
    reference = attention_logits(q, k, positions, "official")
    shifted = attention_logits(q, k, positions + torch.tensor([5, 5, 5]), "official")
    assert (shifted - reference).abs().max() > 1e-2
    # Zero positions rotate nothing in either layout.
    zero = torch.zeros(10, 3, dtype=torch.long)
    torch.testing.assert_close(attention_logits(q, k, zero, "official"), q @ k.transpose(-1, -2))


def test_segment_widths_follow_official_rule():
    assert axis_segment_width(64) == 20  # 20/20/20 + 4 unrotated
    assert axis_segment_width(32) == 10
    assert axis_segment_width(16) == 4


def test_positions_from_ids_inverts_grid_order():
    t, h, w = 3, 4, 5
    grid = grid_positions(t, h, w)
    ids = torch.arange(t * h * w)
    torch.testing.assert_close(positions_from_ids(ids, (h, w)), grid)
    assert grid[1 * 20 + 2 * 5 + 3].tolist() == [1, 2, 3]
    batch_ids = torch.tensor([[59, 0], [21, 7]])
    assert positions_from_ids(batch_ids, (h, w)).tolist() == [[[2, 3, 4], [0, 0, 0]], [[1, 0, 1], [0, 1, 2]]]


def test_axis_mask_leaves_masked_axes_unrotated():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 2, 16)
    positions = torch.tensor([[3, 4, 5], [3, 4, 5]])
    axis_mask = torch.tensor([[True, False, False], [True, True, True]])
    rotated = apply_rope(x, rope_tables(positions, 16, "official", axis_mask=axis_mask))[0, 0]
    time_only = torch.tensor(rotate_by_hand(x[0, 0, 0].tolist(), (3, 0, 0), "official"))
    torch.testing.assert_close(rotated[0], time_only, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(rotated[1], time_only, atol=1e-3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown RoPE layout 'tiled'"):
        rope_tables(torch.zeros(2, 3), 16, "tiled")
    with pytest.raises(ValueError, match="even head_dim, got 15"):
        rope_tables(torch.zeros(2, 3), 15)
    with pytest.raises(ValueError, match=r"\(N, 3\) or \(B, N, 3\).*got shape \(2, 2\)"):
        rope_tables(torch.zeros(2, 2), 16)
