import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from jepa_world.masks import (
    MASK_PRESETS,
    MaskCollator,
    MultiBlock2DConfig,
    MultiBlock2DMaskGenerator,
    MultiBlock3DConfig,
    MultiBlock3DMaskGenerator,
    build_mask_generators,
    token_grid_shape,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_pair(context: torch.Tensor, target: torch.Tensor, num_tokens: int, batch: int) -> None:
    assert context.dtype == target.dtype == torch.long
    assert context.shape[0] == target.shape[0] == batch
    assert context.shape[1] >= 1 and target.shape[1] >= 1, "empty context or target"
    for ids in (context, target):
        assert ids.min() >= 0 and ids.max() < num_tokens
        assert (ids[:, 1:] > ids[:, :-1]).all(), "ids must be sorted and unique per sample"
    both = torch.cat([context, target], dim=1)
    assert (both.sort(dim=1).values.diff(dim=1) > 0).all(), "context and target overlap"


def _box_extent(ids: torch.Tensor, grid: tuple[int, int, int]) -> tuple[int, int, int]:
    _, h, w = grid
    t, r, c = ids // (h * w), ids // w % h, ids % w
    return (int(t.max() - t.min() + 1), int(r.max() - r.min() + 1), int(c.max() - c.min() + 1))


def test_vjepa2_defaults_match_the_reference_recipe():
    small, large = build_mask_generators("vjepa2")
    assert small.config.num_blocks == 8 and small.config.spatial_scale == (0.15, 0.15)
    assert large.config.num_blocks == 2 and large.config.spatial_scale == (0.7, 0.7)
    for gen in (small, large):
        assert gen.config.temporal_scale == (1.0, 1.0) and gen.config.aspect_ratio == (0.75, 1.5)
    (ijepa,) = build_mask_generators("ijepa")
    cfg = ijepa.config
    assert (cfg.num_targets, cfg.target_scale, cfg.target_aspect_ratio) == (4, (0.15, 0.2), (0.75, 1.5))
    assert cfg.context_scale == (0.85, 1.0)


def test_block_shapes_stay_within_configured_ranges_over_many_draws():
    grid = (8, 32, 32)
    gen = MultiBlock3DMaskGenerator(spatial_scale=(0.1, 0.3), temporal_scale=(0.5, 1.0), aspect_ratio=(0.75, 1.5))
    g = _gen(1)
    ratios, aspects, frames = [], [], []
    for _ in range(400):
        t, r, c = gen.sample_block_shape(grid, g)
        rounding = (0.5 * (r + c) + 0.25) / (32 * 32)  # rounding each side to whole tokens
        ratio = r * c / (32 * 32)
        assert 0.1 - rounding <= ratio <= 0.3 + rounding
        ratios.append(ratio)
        aspects.append(r / c)
        frames.append(t)
    assert min(ratios) < 0.12 and max(ratios) > 0.28, "draws should span the scale range"
    assert 0.75 - 0.2 <= min(aspects) and max(aspects) <= 1.5 + 0.2
    assert min(aspects) < 0.85 and max(aspects) > 1.35
    assert set(frames) == {4, 5, 6, 7}  # int(8 * U[0.5, 1.0)), as in V-JEPA


def test_single_block_target_is_a_box_of_the_drawn_size():
    grid = (4, 12, 12)
    gen = MultiBlock3DMaskGenerator(num_blocks=1, spatial_scale=(0.2, 0.2), temporal_scale=(0.5, 0.5))
    shape = gen.sample_block_shape(grid, _gen(5))
    context, target = gen(16, grid, _gen(5))
    _check_pair(context, target, 4 * 12 * 12, 16)
    assert target.shape[1] == shape[0] * shape[1] * shape[2]
    assert context.shape[1] == 4 * 12 * 12 - target.shape[1], "context is the complement of the target"
    for row in target:
        assert _box_extent(row, grid) == shape
    # Positions vary across the batch.
    assert len({tuple(row[:3].tolist()) for row in target}) > 1


def test_vjepa2_union_ratios_and_invariants():
    grid = (8, 16, 16)
    n = 8 * 16 * 16
    g = _gen(2)
    fractions = {0: [], 1: []}
    for _ in range(30):
        for k, gen in enumerate(build_mask_generators("vjepa2")):
            context, target = gen(8, grid, g)
            _check_pair(context, target, n, 8)
            assert context.shape[1] + target.shape[1] <= n
            fractions[k].append(target.shape[1] / n)
    # Union of 8 blocks of ~15% (one batch-wide size): between one block and eight.
    assert all(0.1 <= f <= 1.0 for f in fractions[0])
    assert 0.4 < sum(fractions[0]) / 30 < 0.9
    # Two ~70% blocks (each below the full grid side): well above 0.5, never everything.
    assert all(0.5 <= f < 1.0 for f in fractions[1])


def test_context_is_never_empty_even_when_blocks_usually_cover_the_grid():
    grid = (2, 4, 4)
    gen = MultiBlock3DMaskGenerator(num_blocks=6, spatial_scale=(0.6, 0.6), aspect_ratio=(1.0, 1.0))
    g = _gen(3)
    for _ in range(100):
        context, target = gen(16, grid, g)
        _check_pair(context, target, 32, 16)


def test_impossible_context_requirement_raises_a_clear_error():
    gen = MultiBlock3DMaskGenerator(num_blocks=1, min_context=1000, max_tries=3)
    with pytest.raises(ValueError, match="too little context"):
        gen(4, (2, 4, 4), _gen())


def test_ijepa_2d_defaults_on_an_image_grid():
    grid = (14, 14)
    g = _gen(4)
    gen = MultiBlock2DMaskGenerator()
    for _ in range(50):
        context, target = gen(8, grid, g)
        _check_pair(context, target, 196, 8)
        assert context.shape[1] >= gen.config.min_context
        # Context block is at most (h-1)*(w-1) tokens, minus targets.
        assert context.shape[1] <= 13 * 13
    one = MultiBlock2DMaskGenerator(num_targets=1)
    for _ in range(50):
        _, target = one(4, grid, g)
        rounding = (0.5 * 2 * 14 + 0.25) / 196
        assert 0.15 - rounding <= target.shape[1] / 196 <= 0.2 + rounding
        for row in target:
            t, r, c = _box_extent(row, (1, 14, 14))
            assert r * c == target.shape[1]


def test_2d_masks_span_every_time_step_of_a_video_grid():
    grid = (3, 6, 6)
    context, target = MultiBlock2DMaskGenerator(min_context=2)(4, grid, _gen(6))
    _check_pair(context, target, 108, 4)
    for ids in (target[0], context[0]):
        per_step = [set((ids[(ids // 36) == t] % 36).tolist()) for t in range(3)]
        assert per_step[0] == per_step[1] == per_step[2] != set()


def test_same_seed_same_masks_and_different_seed_different_masks():
    grid = (4, 8, 8)
    gens = build_mask_generators("vjepa2") + build_mask_generators("ijepa")
    a = [gen(6, grid, _gen(11)) for gen in gens]
    b = [gen(6, grid, _gen(11)) for gen in gens]
    c = [gen(6, grid, _gen(12)) for gen in gens]
    for (ca, ta), (cb, tb) in zip(a, b):
        assert torch.equal(ca, cb) and torch.equal(ta, tb)
    assert any(not torch.equal(ta, tc) for (_, ta), (_, tc) in zip(a, c))


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (MultiBlock3DConfig, "spatial_scale", (-0.1, 0.2)),
        (MultiBlock3DConfig, "spatial_scale", (0.2, 1.5)),
        (MultiBlock3DConfig, "temporal_scale", (0.9, 0.5)),
        (MultiBlock3DConfig, "aspect_ratio", (0.0, 1.0)),
        (MultiBlock3DConfig, "num_blocks", 0),
        (MultiBlock3DConfig, "min_context", 0),
        (MultiBlock2DConfig, "target_scale", (-0.15, 0.2)),
        (MultiBlock2DConfig, "context_aspect_ratio", (-1.0, 1.0)),
        (MultiBlock2DConfig, "num_targets", 1.5),
    ],
)
def test_bad_config_names_field_and_value(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}=") as err:
        cls(**{field: value})
    assert repr(value) in str(err.value)


def test_build_mask_generators_rejects_unknown_names():
    with pytest.raises(ValueError, match="'nope'"):
        build_mask_generators("nope")
    with pytest.raises(ValueError, match="kind='4d'"):
        build_mask_generators([{"kind": "4d"}])
    gens = build_mask_generators([{"kind": "3d", "num_blocks": 3, "spatial_scale": [0.1, 0.2]}])
    assert gens[0].config.spatial_scale == (0.1, 0.2)  # Hydra lists become tuples
    assert set(MASK_PRESETS) >= {"vjepa2", "ijepa"}


def test_token_grid_shape():
    assert token_grid_shape((3, 16, 64, 64), patch_size=8, tubelet_size=2) == (8, 8, 8)
    assert token_grid_shape((3, 64, 48), patch_size=16, tubelet_size=2) == (1, 4, 3)
    with pytest.raises(ValueError, match="does not tile"):
        token_grid_shape((3, 15, 64, 64), patch_size=8, tubelet_size=2)


class _Clips(Dataset):
    def __init__(self, n: int, with_extras: bool = False):
        self.n, self.with_extras = n, with_extras

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        clip = torch.full((3, 4, 16, 16), float(i))
        return (clip, {"index": i}) if self.with_extras else clip


def _collect(loader: DataLoader) -> list:
    return [(clips[:, 0, 0, 0, 0].tolist(), masks) for clips, masks in loader]


def test_collator_masks_depend_only_on_seed_epoch_and_batch_index():
    gens = build_mask_generators("vjepa2")

    def loader(num_workers: int, start: int = 0, epoch: int = 0) -> DataLoader:
        collator = MaskCollator(gens, seed=7, patch_size=8, tubelet_size=2)
        collator.set_epoch(epoch, start_batch=start)
        indices = list(range(start * 4, 24))
        return DataLoader(torch.utils.data.Subset(_Clips(24), indices), batch_size=4,
                          collate_fn=collator, num_workers=num_workers)

    serial = _collect(loader(0))
    assert len(serial) == 6
    parallel = _collect(loader(2))
    resumed = _collect(loader(2, start=3))
    for (ids_a, masks_a), (ids_b, masks_b) in zip(serial, parallel):
        assert ids_a == ids_b
        for (ca, ta), (cb, tb) in zip(masks_a, masks_b):
            assert torch.equal(ca, cb) and torch.equal(ta, tb)
    for (_, masks_a), (_, masks_b) in zip(serial[3:], resumed):
        for (ca, ta), (cb, tb) in zip(masks_a, masks_b):
            assert torch.equal(ca, cb) and torch.equal(ta, tb)
    # Batches within an epoch and the same batch in a new epoch get new masks.
    assert not torch.equal(serial[0][1][0][1], serial[1][1][0][1])
    next_epoch = _collect(loader(0, epoch=1))
    assert not torch.equal(serial[0][1][0][1], next_epoch[0][1][0][1])


def test_collator_passes_extras_through_and_handles_images():
    collator = MaskCollator(build_mask_generators("vjepa2"), seed=0, patch_size=8, tubelet_size=2)
    clips, masks, extras = collator([_Clips(3, with_extras=True)[i] for i in range(3)])
    assert clips.shape == (3, 3, 4, 16, 16)
    assert extras["index"].tolist() == [0, 1, 2]
    assert len(masks) == 2
    for context, target in masks:
        _check_pair(context, target, 2 * 2 * 2, 3)
    images, ((context, target),) = MaskCollator(build_mask_generators("ijepa"), patch_size=4)(
        [torch.zeros(3, 32, 32)] * 2
    )
    assert images.shape == (2, 3, 32, 32)
    _check_pair(context, target, 64, 2)


def test_collator_rejects_bad_arguments():
    with pytest.raises(ValueError, match="generators is empty"):
        MaskCollator([])
    with pytest.raises(ValueError, match="MaskCollator.seed=-1"):
        MaskCollator(build_mask_generators("vjepa2"), seed=-1)
    with pytest.raises(TypeError, match="got dict"):
        MaskCollator(build_mask_generators("vjepa2"))([{"clip": torch.zeros(3, 2, 16, 16)}])
