"""Fast checks of captions, camera projection, the head, InfoNCE, retrieval and segmentation."""

import mujoco
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jepa_world.language import captions as C
from jepa_world.language.data import CameraProjection, TablePositions, gather_latents, sample_index
from jepa_world.language.head import LanguageHead, LanguageHeadConfig, info_nce
from jepa_world.language.retrieval import boundaries, recall_at_k, retrieval_metrics, segment_stream, selective_decode


# ----------------------------------------------------------------------------- captions

def test_regions_follow_image_layout():
    uv = torch.tensor([[0.1, 0.1], [0.5, 0.1], [0.9, 0.1], [0.1, 0.5], [0.5, 0.5], [0.9, 0.9], [1.0, 1.0], [-0.2, 0.5]])
    names = [C.REGIONS[i] for i in C.region_index(uv).tolist()]
    assert names == ["upper left", "upper centre", "upper right", "centre left", "centre",
                     "lower right", "lower right", "centre left"]


def test_held_out_positions_are_a_quarter_of_every_region():
    grid = torch.stack(torch.meshgrid(torch.linspace(0.001, 0.999, 300), torch.linspace(0.001, 0.999, 300),
                                      indexing="xy"), -1).reshape(-1, 2)
    held, region = C.is_held_out_position(grid), C.region_index(grid)
    share = torch.bincount(region[held], minlength=9).float() / torch.bincount(region, minlength=9)
    torch.testing.assert_close(share, torch.full((9,), 0.25), atol=0.01, rtol=0)
    # the held-out corner alternates between horizontal neighbours
    assert C.is_held_out_position(torch.tensor([0.05, 0.05])) and not C.is_held_out_position(torch.tensor([0.38, 0.05]))
    assert C.is_held_out_position(torch.tensor([0.62, 0.05]))


def test_motion_direction_uses_image_axes():
    start = torch.zeros(5, 2) + 0.5
    end = start + torch.tensor([[-0.2, 0.05], [0.2, -0.05], [0.05, -0.2], [0.0, 0.3], [0.01, 0.01]])
    assert [C.MOTIONS[i] for i in C.motion_index(start, end).tolist()] == ["left", "right", "up", "down", "still"]


def test_template_splits_are_disjoint_and_name_their_fact():
    for kind in C.FACT_KINDS:
        train, held = set(C.templates(kind, "train")), set(C.templates(kind, "heldout"))
        assert train and held and not train & held
        captions = C.all_captions(kind, "heldout")
        assert len({c for c, _ in captions}) == len(captions)  # every paraphrase distinct
    for label, text in enumerate(C.candidate_captions("arm", "heldout")):
        assert C.parse_region(text) == label, text
    assert C.parse_region("move the arm to the upper left") == 0
    assert C.parse_region("go to the top-right corner") == 2
    assert C.parse_region("wave hello") is None


def test_sampled_captions_are_seeded_and_use_the_split():
    labels = torch.tensor([0, 4, 8, 4])
    a = C.sample_captions("arm", labels, "heldout", torch.Generator().manual_seed(3))
    b = C.sample_captions("arm", labels, "heldout", torch.Generator().manual_seed(3))
    assert a == b
    frames = [t.split("{}")[0] for t in C.templates("arm", "heldout")]
    assert all(any(text.startswith(f) for f in frames) for text in a)
    assert [C.parse_region(t) for t in a] == labels.tolist()


def test_bad_caption_arguments_are_named():
    with pytest.raises(ValueError, match="unknown fact kind 'gripper'"):
        C.templates("gripper", "train")
    with pytest.raises(ValueError, match="unknown template split 'test'"):
        C.templates("arm", "test")
    with pytest.raises(ValueError, match="label 9 is out of range"):
        C.caption("arm", 9)
    with pytest.raises(ValueError, match=r"end in 2 coordinates"):
        C.region_index(torch.zeros(4, 3))


# ----------------------------------------------------------------------------- positions

def test_camera_projection_lands_on_the_rendered_fingertip():
    import envs

    env = envs.make("reach", image_size=128)
    env.reset(seed=5)
    base = env.unwrapped
    renderer = mujoco.Renderer(base.model, 128, 128)
    renderer.enable_segmentation_rendering()
    project = CameraProjection.from_env(env)
    fingertip = base.model.geom("fingertip_visual").id  # the drawn sphere (the collision one hides inside it)
    for seed in range(3):
        env.reset(seed=seed)
        renderer.update_scene(base.data, camera=base.camera)
        rows, cols = np.nonzero(renderer.render()[..., 0] == fingertip)
        uv = project(base.data.site_xpos[base.model.site("ee").id][None])[0] * 128
        assert abs(uv[0] - cols.mean()) < 2.0 and abs(uv[1] - rows.mean()) < 2.0, (uv, cols.mean(), rows.mean())
    renderer.close()
    env.close()


def test_table_positions_balance_the_goal_distribution():
    import envs

    env = envs.make("reach", image_size=64)
    env.reset(seed=0)
    table = TablePositions.from_env(env)
    ee = []
    for seed in range(10_000, 11_000):  # goals the fit never saw
        env.unwrapped.set_goal(seed=seed)
        ee.append(env.unwrapped.goal_state()["ee"])
    uv = table(np.array(ee))
    for axis in range(2):
        thirds = torch.bincount((uv[:, axis].clamp(0, 0.999) * 3).long(), minlength=3).float() / len(uv)
        assert (thirds > 0.28).all() and (thirds < 0.39).all(), thirds
    env.close()


def test_sample_index_splits_positions_and_labels_motion():
    arm_uv = torch.tensor([[[0.1, 0.5], [0.5, 0.5], [0.9, 0.5], [0.9, 0.5]]])  # moves right, then rests
    episode, step, labels = sample_index(arm_uv, "motion", 2, "all")
    assert step.tolist() == [1, 2, 3]
    assert [C.MOTIONS[i] for i in labels.tolist()] == ["right", "right", "still"]
    _, _, arm_labels = sample_index(arm_uv, "arm", 2, "all")
    assert arm_labels.tolist() == [3, 4, 5, 5]
    train, held = sample_index(arm_uv, "arm", 2, "train"), sample_index(arm_uv, "arm", 2, "heldout")
    assert len(train[0]) + len(held[0]) == 4
    assert not set(train[1].tolist()) & set(held[1].tolist())
    latents = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 2, 3)
    clips = gather_latents(latents, episode, step, 2)  # (3, 2, 2, 3)
    assert clips[:, :, 0, 0].tolist() == [[0, 1], [1, 2], [2, 3]]


# ----------------------------------------------------------------------------- head and loss

def _head(**overrides):
    torch.manual_seed(0)
    return LanguageHead(LanguageHeadConfig(latent_dim=24, embed_dim=32, width=48, depth=2, num_heads=3, **overrides))


def test_head_output_is_unit_norm_and_depends_on_position_and_query():
    head = _head()
    latents = torch.zeros(2, 16, 24)
    latents[0, 0] = 3.0  # a bright token in the top-left ...
    latents[1, 15] = 3.0  # ... or the bottom-right: same content, other position
    out = head(latents, (4, 4))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2))
    assert (out[0] - out[1]).abs().max() > 1e-3  # absolute positions reach the pooled output
    q1, q2 = torch.randn(1, 32), torch.randn(1, 32)
    assert (head(latents, (4, 4), q1) - head(latents, (4, 4), q2)).abs().max() > 1e-4
    clip = head(torch.randn(3, 2, 16, 24), (4, 4))  # (B, T, N, D) clips
    assert clip.shape == (3, 32)


def test_head_rejects_bad_shapes():
    head = _head()
    with pytest.raises(ValueError, match=r"grid_hw \(3, 3\) has 9 tokens but the latents have 16"):
        head(torch.zeros(2, 16, 24), (3, 3))
    with pytest.raises(ValueError, match=r"latents must be"):
        head(torch.zeros(2, 16, 25), (4, 4))
    with pytest.raises(ValueError, match=r"query must be"):
        head(torch.zeros(2, 16, 24), (4, 4), torch.zeros(3, 32))
    with pytest.raises(ValueError, match="takes no query"):
        _head(num_query_tokens=0)(torch.zeros(2, 16, 24), (4, 4), torch.zeros(2, 32))
    with pytest.raises(ValueError, match="width=50 is not divisible by num_heads=3"):
        LanguageHeadConfig(width=50, num_heads=3)


def test_info_nce_multi_positive_targets():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(4, 8), dim=-1)  # rows 0 and 1: two paraphrases of label 0
    labels = torch.tensor([0, 0, 1, 2])
    visual = F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(20.0)
    swapped = text[[1, 0, 2, 3]]  # give each label-0 clip the other paraphrase
    # same-label pairs are positives: which paraphrase a clip drew does not matter ...
    torch.testing.assert_close(info_nce(visual, text, scale, labels)[0], info_nce(visual, swapped, scale, labels)[0])
    # ... whereas single-positive InfoNCE treats the other paraphrase as a negative
    assert (info_nce(visual, text, scale)[0] - info_nce(visual, swapped, scale)[0]).abs() > 1e-3
    # a perfect match reaches the floor: log(2) for the two rows/columns that share a label
    perfect, acc = info_nce(text[[0, 0, 2, 3]], text[[0, 0, 2, 3]], torch.tensor(200.0), labels)
    assert acc == 1.0 and perfect.item() == pytest.approx(0.5 * np.log(2), abs=1e-3)
    wrong, acc_wrong = info_nce(text[[2, 2, 3, 0]], text[[0, 0, 2, 3]], torch.tensor(200.0), labels)
    assert wrong > perfect and acc_wrong == 0.0


def test_head_learns_a_positional_fact_with_info_nce():
    """Same content, different quadrant, different caption: needs the head's absolute positions."""
    torch.manual_seed(0)
    head = _head()
    captions = F.normalize(torch.randn(4, 32), dim=-1)  # one caption embedding per quadrant
    quadrant = torch.zeros(4, 4, 4, dtype=torch.bool)
    for q in range(4):
        quadrant[q, q // 2 * 2 : q // 2 * 2 + 2, q % 2 * 2 : q % 2 * 2 + 2] = True
    quadrant = quadrant.flatten(1)  # (4, 16) tokens lit for each quadrant
    feature = torch.randn(24)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses, accuracies = [], []
    for step in range(70):
        labels = torch.randint(0, 4, (64,))
        latents = torch.randn(64, 16, 24) * 0.3 + quadrant[labels][..., None] * feature  # (64, 16, 24)
        loss, accuracy = info_nce(head(latents, (4, 4)), captions[labels], head.temperature_scale(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        accuracies.append(accuracy.item())
    floor = np.log(64 / 4)  # soft targets over the ~16 same-label positives per row
    assert np.mean(losses[-10:]) - floor < 0.3 * (np.mean(losses[:5]) - floor), losses
    assert np.mean(accuracies[-10:]) > 0.9 > np.mean(accuracies[:5]), accuracies


# ----------------------------------------------------------------------------- retrieval

def test_recall_at_k_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(30, 12, generator=g)
    correct = torch.rand(30, 12, generator=g) < 0.1
    got = recall_at_k(sim, correct, (1, 3, 12))
    for k in (1, 3, 12):
        top = sim.topk(k, dim=1).indices
        expected = np.mean([bool(correct[i, top[i]].any()) for i in range(30)])
        assert got[k] == pytest.approx(expected)


def test_retrieval_metrics_perfect_and_chance():
    captions = torch.eye(4)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    m = retrieval_metrics(captions[labels], captions, labels)
    assert m["clip_to_caption_R@1"] == m["caption_to_clip_R@1"] == m["accuracy"] == 1.0
    assert m["clip_to_caption_chance_R@1"] == 0.25
    shuffled = retrieval_metrics(captions[(labels + 1) % 4], captions, labels)
    assert shuffled["clip_to_caption_R@1"] == 0.0
    with pytest.raises(ValueError, match="labels must be"):
        retrieval_metrics(captions[labels], captions, labels + 4)


def _piecewise_stream(lengths, dim=16, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(len(lengths), dim, generator=g), dim=-1)
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    stream = F.normalize(centres[labels] + noise * torch.randn(len(labels), dim, generator=g), dim=-1)
    return stream, labels, centres


def test_segmentation_recovers_piecewise_constant_boundaries():
    lengths = [7, 3, 12, 5, 9]
    stream, labels, _ = _piecewise_stream(lengths)
    ids = segment_stream(stream, num_segments=len(lengths))
    assert boundaries(ids).tolist() == np.cumsum(lengths)[:-1].tolist()
    by_threshold = segment_stream(stream, threshold=0.5)
    assert torch.equal(by_threshold, ids)
    assert segment_stream(stream, threshold=1e9).max() == 0  # everything merges
    assert segment_stream(stream, threshold=-1.0).tolist() == list(range(len(stream)))  # nothing does


def test_segmentation_is_contiguous_even_when_a_state_recurs():
    stream, labels, centres = _piecewise_stream([5, 5, 5])
    stream = torch.cat([stream, stream[:5]])  # back to the first state: must be a new segment
    ids = segment_stream(stream, num_segments=4)
    assert boundaries(ids).tolist() == [5, 10, 15]
    assert (ids.diff() >= 0).all()


def test_selective_decode_saves_decodes_at_equal_accuracy():
    lengths = [10, 6, 14, 8]
    stream, labels, centres = _piecewise_stream(lengths, noise=0.4, seed=1)
    result = selective_decode(stream, centres, threshold=2.0)
    per_frame_acc = (result.per_frame_labels == labels).float().mean()
    segment_acc = (result.frame_labels == labels).float().mean()
    assert result.decodes < len(stream) / 3 and result.decode_savings > 3
    assert per_frame_acc < 1.0 and segment_acc == 1.0  # averaging within a segment denoises
    assert boundaries(result.segment_ids).tolist() == np.cumsum(lengths)[:-1].tolist()


def test_segmentation_rejects_bad_arguments():
    with pytest.raises(ValueError, match="exactly one of"):
        segment_stream(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"num_segments=9 must be in \[1, 5\]"):
        segment_stream(torch.randn(5, 4), num_segments=9)
    with pytest.raises(ValueError, match="non-empty"):
        segment_stream(torch.zeros(0, 4), threshold=1.0)


def test_latent_standardisation_uses_training_statistics():
    head = _head(num_tokens=16)
    static = torch.randn(16, 24) * 5  # a large per-token background shared by every frame
    frames = static + 0.05 * torch.randn(200, 16, 24)
    head.fit_latent_stats(frames)
    torch.testing.assert_close(head.latent_mean, frames.mean(0))
    shifted = head(static[None] + 0.05, (4, 4))
    plain = _head(num_tokens=0)(static[None] + 0.05, (4, 4))
    # the same small change moves the standardised head more than the raw one, relative to the static frame
    moved = (shifted - head(static[None], (4, 4))).norm()
    raw_moved = (plain - _head(num_tokens=0)(static[None], (4, 4))).norm()
    assert moved > 5 * raw_moved
    assert "latent_mean" in head.state_dict() and "latent_std" in head.state_dict()
    with pytest.raises(ValueError, match=r"latents must be \(M, 16, 24\)"):
        head.fit_latent_stats(torch.zeros(5, 9, 24))
    with pytest.raises(ValueError, match="standardises 16 tokens per frame, got 9"):
        head(torch.zeros(1, 9, 24), (3, 3))
    with pytest.raises(ValueError, match="keeps no latent statistics"):
        _head().fit_latent_stats(frames)
