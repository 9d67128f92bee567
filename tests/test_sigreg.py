"""SIGReg (jepa_world.training.sigreg): the Epps-Pulley statistic separates Gaussian from collapsed
embeddings, its hand-written gradient matches autograd, descending it de-collapses a point cloud,
and the pretraining hook logs it and resumes exactly."""
from __future__ import annotations

import math

import pytest
import torch

from jepa_world import model_format as ckpt
from jepa_world.training.pretrain import ConfigError, pretrain
from jepa_world.training.run import read_metrics
from jepa_world.training.sigreg import SIGReg, SIGRegConfig, SIGRegConfigError, frame_means, step_generator
from tests.test_pretrain_script import tiny_config


def reference_statistic(x: torch.Tensor, directions: torch.Tensor, config: SIGRegConfig) -> torch.Tensor:
    """The textbook form: complex ECF on the full symmetric grid [-t_max, t_max], torch.trapezoid."""
    t = torch.linspace(-config.t_max, config.t_max, 2 * config.num_knots - 1, dtype=x.dtype)
    gaussian = torch.exp(-0.5 * t**2)
    ecf = torch.exp(1j * (x @ directions).unsqueeze(-1) * t).mean(0)  # (M, K)
    integrand = (ecf - gaussian).abs().square() * gaussian
    return (x.shape[0] * torch.trapezoid(integrand, t, dim=-1)).mean()


def gaussian_samples(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def sigreg() -> SIGReg:
    return SIGReg(SIGRegConfig(weight=0.1, num_directions=512))


def test_null_expectation_matches_the_closed_form(sigreg):
    # E stat = integral (1 - g^2) g dt over [-3, 3] with g = exp(-t^2/2)
    phi = lambda x: 0.5 * (1 + math.erf(x / math.sqrt(2)))  # noqa: E731
    exact = math.sqrt(2 * math.pi) * ((2 * phi(3) - 1) - (2 * phi(3 * math.sqrt(3)) - 1) / math.sqrt(3))
    assert sigreg.null_expectation() == pytest.approx(exact, rel=0.02)


def test_gaussian_scores_its_null_value_and_collapse_scores_order_n(sigreg):
    n, d = 4000, 32
    directions = sigreg.sample_directions(d, step_generator(0, 0))
    null = sigreg.null_expectation()  # ~1.05: the statistic of exact N(0, I) samples, whatever N
    gaussian = sigreg(gaussian_samples(n, d), directions).item()
    assert 0.7 * null < gaussian < 1.3 * null, gaussian
    rank_one = gaussian_samples(n, 1) * torch.nn.functional.normalize(torch.ones(1, d), dim=1)  # (n, d) on one line
    scores = {
        "constant": sigreg(torch.zeros(n, d), directions).item(),
        "rank-1": sigreg(rank_one, directions).item(),
        "shifted by 1": sigreg(gaussian_samples(n, d) + 1.0, directions).item(),
        "scaled x2": sigreg(2.0 * gaussian_samples(n, d), directions).item(),
        "scaled x0.3": sigreg(0.3 * gaussian_samples(n, d), directions).item(),
    }
    for name, score in scores.items():
        assert score > 50 * null, (name, score)
    # Non-Gaussian embeddings score O(N): twice the samples, twice the statistic.
    half = sigreg(torch.zeros(n // 2, d), directions).item()
    assert scores["constant"] == pytest.approx(2 * half, rel=1e-4)


def test_matches_the_complex_reference_and_its_gradient():
    config = SIGRegConfig(weight=1.0, num_directions=16, num_knots=9, t_max=2.5)
    sigreg = SIGReg(config).double()
    x = (gaussian_samples(300, 8, seed=1).double() * torch.linspace(0.2, 2.0, 8).double() + 0.3).requires_grad_()
    directions = sigreg.sample_directions(8, step_generator(3, 7)).double()
    ours = sigreg(x, directions)
    (grad,) = torch.autograd.grad(ours, x)
    reference = reference_statistic(x, directions, config)
    (reference_grad,) = torch.autograd.grad(reference, x)
    # float32 inside SIGReg, so compare at float32 accuracy
    assert ours.item() == pytest.approx(reference.item(), rel=1e-4)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-3, atol=1e-6)


def test_descending_sigreg_alone_decollapses_a_point_cloud():
    sigreg = SIGReg(SIGRegConfig(weight=1.0, num_directions=64))
    scales = torch.tensor([1.0, 0.05, 0.05, 0.05, 0.05, 0.05])  # nearly rank-1, off-centre
    x = (gaussian_samples(512, 6, seed=2) * scales + 0.5).requires_grad_()
    optimizer = torch.optim.Adam([x], lr=0.05)

    def smallest_eigenvalue() -> float:
        return torch.linalg.eigvalsh(torch.cov(x.detach().T)).min().item()

    before_eigen = smallest_eigenvalue()
    before = sigreg(x.detach(), sigreg.sample_directions(6, step_generator(0, 10_000))).item()
    for step in range(150):
        loss = sigreg(x, sigreg.sample_directions(6, step_generator(0, step)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = sigreg(x.detach(), sigreg.sample_directions(6, step_generator(0, 10_000))).item()
    assert before_eigen < 0.01 and smallest_eigenvalue() > 0.3, (before_eigen, smallest_eigenvalue())
    assert after < 0.05 * before and x.detach().mean(0).abs().max() < 0.15


def test_directions_are_unit_and_reproducible_per_step(sigreg):
    a = sigreg.sample_directions(24, step_generator(5, 11))
    assert a.shape == (24, 512)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(512))
    assert torch.equal(a, sigreg.sample_directions(24, step_generator(5, 11)))
    assert not torch.equal(a, sigreg.sample_directions(24, step_generator(5, 12)))
    assert not torch.equal(a, sigreg.sample_directions(24, step_generator(6, 11)))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weight": -0.1}, r"sigreg.weight=-0.1: expected a finite number >= 0"),
        ({"weight": float("nan")}, r"sigreg.weight=nan"),
        ({"num_directions": 0}, r"sigreg.num_directions=0: expected an integer >= 1"),
        ({"num_knots": 1}, r"sigreg.num_knots=1: expected an integer >= 2"),
        ({"t_max": 0.0}, r"sigreg.t_max=0.0: expected a finite number > 0"),
        ({"samples": "clips"}, r"sigreg.samples='clips': expected one of \('tokens', 'frames'\)"),
    ],
)
def test_bad_config_values_are_named(fields, message):
    with pytest.raises(SIGRegConfigError, match=message):
        SIGRegConfig(**fields)


def test_frame_means_average_the_present_tokens_of_each_clip_and_time_slice():
    tokens = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(4))  # (B, K, D)
    ids = torch.stack([torch.randperm(12, generator=torch.Generator().manual_seed(b))[:7] for b in range(3)])  # 4 tokens x 3 frames
    means = frame_means(tokens, ids, tokens_per_frame=4, num_frames=3)
    expected = [tokens[b, ids[b] // 4 == t].mean(0) for b in range(3) for t in range(3) if (ids[b] // 4 == t).any()]
    torch.testing.assert_close(means, torch.stack(expected))


def test_bad_shapes_are_named(sigreg):
    with pytest.raises(ValueError, match=r"embeddings \(N, D\) and directions \(D, M\); got \(10, 8\) and \(6, 512\)"):
        sigreg(torch.zeros(10, 8), sigreg.sample_directions(6, step_generator(0, 0)))


def test_pretrain_config_error_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"sigreg.num_directions=0"):
        pretrain(tiny_config(tmp_path / "run", "max_steps=2", "sigreg.weight=0.1", "sigreg.num_directions=0"))
    with pytest.raises(ConfigError, match=r"sigreg: unknown keys \['wieght'\]"):
        pretrain(tiny_config(tmp_path / "run", "max_steps=2", "+sigreg.wieght=0.1"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pretrain_with_sigreg_logs_it_and_resumes_exactly(tmp_path):
    """6 steps straight == 3 + resume + 3 with SIGReg on; loss = prediction + weight * SIGReg."""
    on = ("max_steps=6", "sigreg.weight=0.1", "sigreg.num_directions=32")
    straight = pretrain(tiny_config(tmp_path / "straight", *on))
    pretrain(tiny_config(tmp_path / "split", *on, "stop_at_step=3"))
    pretrain(tiny_config(tmp_path / "split", *on, "resume=true"))
    records = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    for record in records:
        assert math.isfinite(record["loss_sigreg"]) and record["loss_sigreg"] > 0
        assert record["loss"] == pytest.approx(record["loss_pred"] + 0.1 * record["loss_sigreg"], rel=1e-5)
    resumed = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(records, resumed):
        assert a["loss_sigreg"] == pytest.approx(b["loss_sigreg"], abs=1e-5)
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    a = ckpt.read_tensors(tmp_path / "straight" / "checkpoints" / "last")
    b = ckpt.read_tensors(tmp_path / "split" / "checkpoints" / "last")
    assert a.keys() == b.keys() and not any(key.startswith("sigreg") for key in a)  # no new checkpoint keys
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{key} differs after resume")
    assert straight.final_loss == pytest.approx(records[-1]["loss"])
    # SIGReg changes the run: the same seed without it ends at different weights and logs no SIGReg term
    plain = pretrain(tiny_config(tmp_path / "plain", "max_steps=2"))
    assert "loss_sigreg" not in read_metrics(tmp_path / "plain" / "metrics.jsonl")[-1]
    sigreg_two = pretrain(tiny_config(tmp_path / "two", "max_steps=2", "sigreg.weight=0.1", "sigreg.num_directions=32"))
    assert not torch.equal(plain.encoder.blocks[0].attn.qkv.weight, sigreg_two.encoder.blocks[0].attn.qkv.weight)
    # per-frame samples: 4 clips x 2 time slices instead of every context token, so a smaller statistic
    frames = pretrain(tiny_config(tmp_path / "frames", "max_steps=2", "sigreg.weight=0.1", "sigreg.num_directions=32", "sigreg.samples=frames"))
    frame_records = read_metrics(tmp_path / "frames" / "metrics.jsonl")
    token_records = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert 0 < frame_records[0]["loss_sigreg"] < token_records[0]["loss_sigreg"]
    assert not torch.equal(frames.encoder.blocks[0].attn.qkv.weight, sigreg_two.encoder.blocks[0].attn.qkv.weight)
