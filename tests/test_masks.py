"""Mask sampling: coverage, disjointness, no hang, reproducibility, speed."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from jepa.config import JEPAConfig
from jepa.masks import (
    MAX_RESAMPLES,
    MaskedBatch,
    MultiBlockMaskCollator,
    RandomMaskCollator,
    block_shape,
    build_collator,
    hash_uniform,
    subsample,
)


def _samples(indices, size: int = 8) -> list[tuple[torch.Tensor, int, int]]:
    return [(torch.full((3, size, size), float(i)), i % 10, i) for i in indices]


def _draw(collator, num_batches: int, batch_size: int, start: int = 0):
    """(masks_enc, masks_pred) of consecutive batches of dataset indices."""
    for b in range(num_batches):
        first = start + b * batch_size
        yield collator.sample_masks(torch.arange(first, first + batch_size))


def _check_valid(masks_enc, masks_pred, num_patches: int, min_keep: int, disjoint: bool) -> None:
    for m in masks_enc + masks_pred:
        assert m.dtype == torch.long
        assert m.min() >= 0 and m.max() < num_patches
        assert (m[:, 1:] > m[:, :-1]).all(), "indices must be strictly ascending per row"
    assert masks_enc[0].shape[1] >= min_keep
    assert len({m.shape for m in masks_pred}) == 1, "all target masks have one length"
    if disjoint:
        covered = torch.zeros(masks_pred[0].shape[0], num_patches, dtype=torch.bool)
        for tgt in masks_pred:
            covered.scatter_(1, tgt, True)
        for ctx in masks_enc:
            assert not covered.gather(1, ctx).any(), "a context patch lies in a target"


# ---- collate ------------------------------------------------------------------------------
def test_collate_stacks_and_drops_corrupt_samples() -> None:
    collator = MultiBlockMaskCollator(7, min_keep=4)
    samples = _samples(range(6))
    samples[2] = None
    samples[4] = None
    batch = collator(samples)
    assert isinstance(batch, MaskedBatch)
    assert batch.num_skipped == 2
    assert batch.images.shape == (4, 3, 8, 8) and batch.images.dtype == torch.float32
    assert batch.indices.tolist() == [0, 1, 3, 5] and batch.indices.dtype == torch.long
    assert batch.labels.tolist() == [0, 1, 3, 5] and batch.labels.dtype == torch.long
    assert batch.images[:, 0, 0, 0].tolist() == [0.0, 1.0, 3.0, 5.0]
    assert len(batch.masks_enc) == 1 and len(batch.masks_pred) == 4
    assert all(m.shape[0] == 4 for m in batch.masks_enc + batch.masks_pred)


def test_collate_all_corrupt_gives_empty_batch() -> None:
    batch = MultiBlockMaskCollator(7, min_keep=4)([None, None])
    assert batch.num_skipped == 2 and batch.images.numel() == 0 and batch.indices.numel() == 0
    assert [m.shape for m in batch.masks_pred] == [(0, 0)] * 4


# ---- geometry -----------------------------------------------------------------------------
@pytest.mark.parametrize("grid", [7, 14])
def test_every_patch_is_reachable(grid: int) -> None:
    collator = MultiBlockMaskCollator(grid, enc_mask_scale=(0.4, 0.6), min_keep=4)
    seen_target = torch.zeros(grid * grid, dtype=torch.bool)
    seen_context = torch.zeros(grid * grid, dtype=torch.bool)
    for masks_enc, masks_pred in _draw(collator, 30, 64):
        for m in masks_pred:
            seen_target[m.reshape(-1)] = True
        seen_context[masks_enc[0].reshape(-1)] = True
    assert seen_target.all(), f"unreached target patches {torch.nonzero(~seen_target).ravel()}"
    assert seen_context.all(), f"unreached context patches {torch.nonzero(~seen_context).ravel()}"


@pytest.mark.parametrize("grid", [7, 14])
def test_block_corner_ranges_over_whole_grid(grid: int) -> None:
    # A fixed 3x3 target: its top row must take every value 0..grid-3, inclusive.
    scale = 9 / grid**2
    collator = MultiBlockMaskCollator(
        grid,
        pred_mask_scale=(scale, scale),
        aspect_ratio=(1.0, 1.0),
        min_keep=1,
        allow_overlap=True,
    )
    tops, lefts = set(), set()
    for _, masks_pred in _draw(collator, 10, 64):
        for m in masks_pred:
            assert m.shape[1] == 9
            tops.update((m[:, 0] // grid).tolist())
            lefts.update((m[:, 0] % grid).tolist())
    assert tops == set(range(grid - 2)) and lefts == set(range(grid - 2))


def test_block_shape_can_span_grid_and_grows_with_scale() -> None:
    assert block_shape(1.0, 1.0, (14, 14)) == (14, 14)
    assert block_shape(1.0, 1.0, (4, 6)) == (4, 6)
    for grid in [(4, 4), (7, 7), (14, 14), (4, 9), (9, 4)]:
        areas = [np.prod(block_shape(s, 1.0, grid)) for s in np.linspace(0.01, 1.0, 500)]
        assert np.all(np.diff(areas) >= 0), grid  # min_keep clamping relies on this


def test_rectangular_grid() -> None:
    collator = MultiBlockMaskCollator((4, 6), min_keep=4)
    for masks_enc, masks_pred in _draw(collator, 20, 32):
        _check_valid(masks_enc, masks_pred, 24, 4, disjoint=True)


# ---- disjointness and min_keep ------------------------------------------------------------
@pytest.mark.parametrize("num_enc_masks", [1, 2])
def test_context_and_targets_disjoint(num_enc_masks: int) -> None:
    collator = MultiBlockMaskCollator(14, num_enc_masks=num_enc_masks)
    for masks_enc, masks_pred in _draw(collator, 10, 32):
        assert len(masks_enc) == num_enc_masks
        assert len({m.shape for m in masks_enc}) == 1
        _check_valid(masks_enc, masks_pred, 196, collator.min_keep, disjoint=True)


def test_allow_overlap_keeps_whole_context_block() -> None:
    collator = MultiBlockMaskCollator(14, enc_mask_scale=(1.0, 1.0), allow_overlap=True)
    masks_enc, masks_pred = collator.sample_masks(torch.arange(16))
    assert masks_enc[0].shape == (16, 196)
    assert (masks_enc[0] == torch.arange(196)).all()


# ---- small grids: no hang, clamping, impossible settings ----------------------------------
def _count_draws(collator: MultiBlockMaskCollator, monkeypatch) -> list[str]:
    """Record every block placement and context construction the collator makes."""
    calls: list[str] = []
    for name in ("_positions", "_context"):
        method = getattr(collator, name)

        def counted(*args, _method=method, _name=name, **kwargs):
            calls.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(collator, name, counted)
    return calls


def _assert_bounded(calls: list[str], num_batches: int, grid: int) -> None:
    """Per batch: one draw plus at most MAX_RESAMPLES redraws, then at most one shrink
    step per target patch. A sampler that loops until it succeeds would exceed this."""
    assert calls.count("_positions") <= num_batches * (1 + MAX_RESAMPLES)
    assert calls.count("_context") <= num_batches * (1 + MAX_RESAMPLES + grid * grid)


@pytest.mark.parametrize("grid", [4, 7])
def test_small_grids_return_valid_masks_with_bounded_sampling(grid: int, monkeypatch) -> None:
    collator = MultiBlockMaskCollator(grid)  # official defaults, min_keep=10
    calls = _count_draws(collator, monkeypatch)
    for masks_enc, masks_pred in _draw(collator, 50, 64):
        _check_valid(masks_enc, masks_pred, grid * grid, 10, disjoint=True)
    _assert_bounded(calls, 50, grid)


def test_targets_shrink_as_last_resort() -> None:
    # On 4x4 with min_keep=10, four 1x2 targets often leave too little context.
    collator = MultiBlockMaskCollator(4)
    shrunk = 0
    for b, (masks_enc, masks_pred) in enumerate(_draw(collator, 40, 64)):
        (h, w), _ = collator.block_shapes(torch.arange(b * 64, b * 64 + 64))
        assert masks_pred[0].shape[1] <= h * w
        shrunk += masks_pred[0].shape[1] < h * w
        assert masks_enc[0].shape[1] >= 10
    assert shrunk > 0


@pytest.mark.parametrize("grid", [7, 14])
def test_resampling_keeps_drawn_target_shape(grid: int) -> None:
    # Redrawing the failing samples' blocks suffices here; shrinking would be a bias.
    collator = MultiBlockMaskCollator(grid)
    for b, (masks_enc, masks_pred) in enumerate(_draw(collator, 30, 128)):
        (h, w), _ = collator.block_shapes(torch.arange(b * 128, b * 128 + 128))
        assert masks_pred[0].shape[1] == h * w
        assert masks_enc[0].shape[1] >= 10


def test_min_keep_is_clamped_with_warning(monkeypatch) -> None:
    with pytest.warns(UserWarning, match=r"min_keep=10 exceeds .* 3x3 grid .* using min_keep=5"):
        collator = MultiBlockMaskCollator(3)
    assert collator.min_keep == 5
    calls = _count_draws(collator, monkeypatch)
    for masks_enc, masks_pred in _draw(collator, 50, 64):
        _check_valid(masks_enc, masks_pred, 9, 5, disjoint=True)
    _assert_bounded(calls, 50, 3)


def test_no_warning_for_official_settings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultiBlockMaskCollator(14)
        MultiBlockMaskCollator(7, min_keep=4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(grid_size=2), r"enc_mask_scale.*num_pred_masks=4.*allow_overlap=True"),
        (
            dict(grid_size=14, pred_mask_scale=(1.0, 1.0), enc_mask_scale=(1.0, 1.0)),
            r"pred_mask_scale=\(1.0, 1.0\).*min_keep=10; lower pred_mask_scale",
        ),
        (dict(grid_size=14, pred_mask_scale=(0.3, 0.2)), r"pred_mask_scale must satisfy"),
        (dict(grid_size=14, num_pred_masks=0), r"num_pred_masks must be >= 1"),
        (dict(grid_size=0), r"grid_size must be"),
    ],
)
def test_impossible_settings_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiBlockMaskCollator(**kwargs)


# ---- context truncation -------------------------------------------------------------------
def test_subsample_picks_random_kept_patches() -> None:
    keep = np.zeros((1000, 20), dtype=bool)
    keep[:, 5:15] = True
    keys = hash_uniform(0, np.arange(1000)[:, None], np.arange(20))
    chosen = subsample(keep, keys, 4)
    assert chosen.shape == (1000, 4)
    assert ((chosen >= 5) & (chosen < 15)).all() and (np.diff(chosen, axis=1) > 0).all()
    counts = np.bincount(chosen.ravel(), minlength=20)[5:15]
    assert counts.min() > 300  # each of the 10 kept patches expected 400 times


def test_context_truncation_is_not_biased_to_low_indices() -> None:
    # The context block is the whole grid, so any bias of truncation shows up directly.
    collator = MultiBlockMaskCollator(14, enc_mask_scale=(1.0, 1.0))
    counts = torch.zeros(196)
    truncated = False
    for masks_enc, _ in _draw(collator, 20, 64):
        counts += torch.bincount(masks_enc[0].reshape(-1), minlength=196)
        truncated |= masks_enc[0].shape[1] < 196 - 4 * 30
    assert truncated
    first_rows, last_rows = counts[:28].mean(), counts[-28:].mean()
    assert 0.8 < float(last_rows / first_rows) < 1.25


# ---- reproducibility ----------------------------------------------------------------------
def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))


def test_masks_depend_on_seed_epoch_and_indices_only() -> None:
    idx = torch.arange(100, 132)
    a = MultiBlockMaskCollator(14, seed=3).sample_masks(idx)
    assert _same(a, MultiBlockMaskCollator(14, seed=3).sample_masks(idx))
    assert not _same(a, MultiBlockMaskCollator(14, seed=4).sample_masks(idx))
    collator = MultiBlockMaskCollator(14, seed=3)
    collator.set_epoch(1)
    assert not _same(a, collator.sample_masks(idx))
    collator.set_epoch(0)
    assert _same(a, collator.sample_masks(idx))


def test_masks_do_not_depend_on_order_or_chunking() -> None:
    collator = MultiBlockMaskCollator(14)
    idx = torch.arange(200, 232)
    enc, pred = collator.sample_masks(idx)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    enc_p, pred_p = collator.sample_masks(idx[perm])
    for a, b in zip(enc + pred, enc_p + pred_p, strict=True):
        assert torch.equal(a[perm], b)
    # A chunk holding the batch's smallest index draws the same block shapes, so each
    # sample gets the same target blocks (context lengths differ with the batch minimum).
    _, pred_chunk = collator.sample_masks(idx[:8])
    for a, b in zip(pred, pred_chunk, strict=True):
        assert torch.equal(a[:8], b)


class _TinyDataset(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return None if i % 7 == 3 else (torch.full((3, 4, 4), float(i)), i % 5, i)


def test_dataloader_workers_do_not_change_batches() -> None:
    def run(num_workers: int) -> list[MaskedBatch]:
        collator = MultiBlockMaskCollator(7, min_keep=4, seed=1)
        collator.set_epoch(2)
        loader = DataLoader(
            _TinyDataset(), batch_size=8, num_workers=num_workers, collate_fn=collator
        )
        return list(loader)

    serial, parallel = run(0), run(2)
    assert sum(b.num_skipped for b in serial) == 6
    assert len(serial) == len(parallel) == 5
    for a, b in zip(serial, parallel, strict=True):
        assert a.num_skipped == b.num_skipped
        for x, y in zip(
            a[:3] + tuple(a.masks_enc + a.masks_pred),
            b[:3] + tuple(b.masks_enc + b.masks_pred),
            strict=True,
        ):
            assert torch.equal(x, y)


def test_hash_uniform() -> None:
    u = hash_uniform(0, 1, np.arange(100_000))
    assert u.shape == (100_000,) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and len(np.unique(u)) == 100_000
    assert np.array_equal(u, hash_uniform(0, 1, np.arange(100_000)))
    assert not np.array_equal(u[:10], hash_uniform(0, 2, np.arange(10)))
    assert hash_uniform(-1, 5).shape == ()


# ---- speed (a loose sanity bound, not a benchmark) -----------------------------------------
def test_collate_is_cheap() -> None:
    collator = MultiBlockMaskCollator(14)
    batches = [_samples(range(b * 128, b * 128 + 128), size=16) for b in range(10)]
    collator(batches[0])  # warm-up
    start = time.perf_counter()
    for samples in batches:
        collator(samples)
    assert (time.perf_counter() - start) / len(batches) < 0.2


# ---- random masking and the builder -------------------------------------------------------
def test_random_mask_collator() -> None:
    collator = RandomMaskCollator(14, mask_ratio=0.75, seed=0)
    batch = collator(_samples(range(16)))
    (context,), (target,) = batch.masks_enc, batch.masks_pred
    assert context.shape == (16, 49) and target.shape == (16, 147)
    both = torch.cat([context, target], dim=1).sort(dim=1).values
    assert (both == torch.arange(196)).all(), "context and target partition the grid"
    assert (context[:, 1:] > context[:, :-1]).all() and (target[:, 1:] > target[:, :-1]).all()
    assert len({tuple(row.tolist()) for row in context}) == 16, "per-sample random"
    again = RandomMaskCollator(14, mask_ratio=0.75, seed=0).sample_masks(batch.indices.flip(0))
    assert torch.equal(again[0][0], context.flip(0))
    with pytest.raises(ValueError, match="mask_ratio=0.999"):
        RandomMaskCollator(4, mask_ratio=0.999)


def test_build_collator_from_config() -> None:
    cfg = JEPAConfig.preset("fmnist_w192")
    collator = build_collator(cfg)
    assert isinstance(collator, MultiBlockMaskCollator)
    assert collator.grid == (7, 7) and collator.min_keep == 4 and collator.seed == cfg.seed
    random_collator = build_collator(cfg.replace(mask_strategy="random", mask_ratio=0.5))
    assert isinstance(random_collator, RandomMaskCollator)
    assert random_collator.num_context == round(0.5 * 49)


# ---- fixed token counts -----------------------------------------------------------------
@pytest.mark.parametrize("grid", [4, 7, 14])
def test_fixed_counts_give_every_batch_the_same_shapes(grid: int) -> None:
    min_keep = {4: 2, 7: 12, 14: 40}[grid]
    collator = MultiBlockMaskCollator(grid, min_keep=min_keep, fixed_counts=True)
    free = MultiBlockMaskCollator(grid, min_keep=min_keep)
    assert collator.num_context_tokens == min_keep and free.num_context_tokens is None
    shapes = set()
    for (masks_enc, masks_pred), (_, free_pred) in zip(
        _draw(collator, 40, 32), _draw(free, 40, 32), strict=True
    ):
        _check_valid(masks_enc, masks_pred, grid * grid, min_keep, disjoint=True)
        shapes.add(tuple(m.shape for m in masks_enc + masks_pred))
        # Each target is a random part of the block the free collator draws for it.
        for kept, block in zip(masks_pred, free_pred, strict=True):
            assert all(set(k.tolist()) <= set(b.tolist()) for k, b in zip(kept, block, strict=True))
    count = collator.num_target_tokens
    assert shapes == {((32, min_keep),) + ((32, count),) * 4}


def test_fixed_target_count_is_the_smallest_block_area() -> None:
    collator = MultiBlockMaskCollator(7, min_keep=4, fixed_counts=True)
    areas = set()
    for _, masks_pred in _draw(MultiBlockMaskCollator(7, min_keep=4), 200, 16):
        areas.add(masks_pred[0].shape[1])
    assert collator.num_target_tokens == min(areas)


def test_fixed_counts_are_reproducible_and_keep_random_patches() -> None:
    a = MultiBlockMaskCollator(7, min_keep=12, fixed_counts=True, seed=3)
    b = MultiBlockMaskCollator(7, min_keep=12, fixed_counts=True, seed=3)
    first, again = a.sample_masks(torch.arange(64)), b.sample_masks(torch.arange(64))
    for x, y in zip(first[0] + first[1], again[0] + again[1], strict=True):
        assert torch.equal(x, y)
    # Kept target patches are not always the block's lowest raster indices.
    free = MultiBlockMaskCollator(7, min_keep=12, seed=3).sample_masks(torch.arange(64))[1]
    prefix = free[0][:, : first[1][0].shape[1]]
    assert not torch.equal(first[1][0], prefix)


def test_fixed_counts_survive_shrunk_targets() -> None:
    # Contexts this large force the last-resort shrinking of the targets; shapes still hold.
    collator = MultiBlockMaskCollator(
        4, enc_mask_scale=(1.0, 1.0), pred_mask_scale=(0.5, 0.5), min_keep=10, fixed_counts=True
    )
    masks_enc, masks_pred = collator.sample_masks(torch.arange(16))
    assert masks_enc[0].shape == (16, collator.num_context_tokens)
    assert {m.shape for m in masks_pred} == {(16, collator.num_target_tokens)}
    rows = masks_pred[0].tolist()
    assert any(len(set(row)) < len(row) for row in rows), "the shrunk blocks repeat patches"
