import pytest
import torch

from jepa_world.probe import effective_rank, ridge_probe_r2


def test_ridge_probe_recovers_a_linear_factor_and_rejects_noise():
    g = torch.Generator().manual_seed(0)
    factor = torch.rand(600, 2, generator=g)
    mixing = torch.randn(2, 64, generator=g)
    informative = factor @ mixing + 0.01 * torch.randn(600, 64, generator=g)
    noise = torch.randn(600, 64, generator=g)
    assert ridge_probe_r2(informative, factor, 400, 100) > 0.99
    assert ridge_probe_r2(noise, factor, 400, 100) < 0.1


def test_ridge_probe_needs_test_rows():
    with pytest.raises(ValueError, match="no test rows"):
        ridge_probe_r2(torch.randn(10, 3), torch.randn(10, 1), 8, 2)


def test_effective_rank_detects_collapse():
    g = torch.Generator().manual_seed(0)
    assert effective_rank(torch.randn(500, 32, generator=g)) > 25
    collapsed = torch.randn(500, 1, generator=g) @ torch.randn(1, 32, generator=g)
    assert effective_rank(collapsed) < 1.5
