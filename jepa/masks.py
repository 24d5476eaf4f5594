"""Mask sampling for I-JEPA, run as the DataLoader `collate_fn`.

`MultiBlockMaskCollator` is the official multi-block strategy: per batch one target block
shape and one context block shape are drawn; per sample `num_pred_masks` target blocks and
`num_enc_masks` context blocks are placed, and the targets are cut out of each context
block. `RandomMaskCollator` is the random-patch ablation (`mask_strategy="random"`).

Distributions: the block scale (fraction of the grid) is uniform in its `(min, max)` range;
the target aspect ratio `h / w` is log-uniform in `aspect_ratio`, so a ratio and its
inverse are equally likely; context blocks are square (aspect ratio 1), as officially.

Unlike the reference sampler, a block's top-left corner ranges over `0 .. G - h`
inclusive (every patch is reachable), sampling is vectorised over the batch with a bounded
number of retries (no hang on small grids), and context masks are equalised by random
subsampling rather than by dropping the highest raster indices.

Reproducibility: every random number is a counter-based hash (splitmix64) of
`(seed, epoch, key...)`. Per-sample draws are keyed by the sample's dataset index, and the
per-batch block shapes by the smallest dataset index in the batch, so masks do not depend on
the sample order in a batch, on the DataLoader worker, or on the DDP rank. Call `set_epoch`
before each epoch's iterator is created (with `persistent_workers=True` the workers keep the
epoch they were started with).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch.utils.data import default_collate

if TYPE_CHECKING:
    from jepa.config import JEPAConfig

Sample = tuple[torch.Tensor, int, int]
Shapes = tuple[tuple[int, int], tuple[int, int]]  # (target (h, w), context (h, w))

# How many times the positions of a sample whose context is too small are redrawn before
# the batch's target blocks are shrunk.
MAX_RESAMPLES = 20

# Independent random streams of the hash RNG.
_STREAM_BATCH, _STREAM_BLOCKS, _STREAM_KEEP, _STREAM_RANDOM, _STREAM_TARGET = range(5)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = (np.uint64(s) for s in (11, 27, 30, 31))


class MaskedBatch(NamedTuple):
    """A collated batch with its masks (patch indices in raster order, row-major)."""

    images: torch.Tensor  # (B, C, H, W) float
    labels: torch.Tensor  # (B,) long
    indices: torch.Tensor  # (B,) long, dataset indices of the samples
    masks_enc: list[torch.Tensor]  # num_enc_masks x (B, K_enc) long, sorted per row
    masks_pred: list[torch.Tensor]  # num_pred_masks x (B, K_pred) long, sorted per row
    num_skipped: int  # samples dropped because the dataset returned None


# ---- counter-based RNG ---------------------------------------------------------------


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    return x ^ (x >> _S31)


def hash_uniform(*keys: int | np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) as a pure function of integer keys (broadcast together).

    Each key is folded into a splitmix64 chain, so the same keys always give the same
    number, independently of any other draw. Returns float64 of the broadcast shape.
    """
    with np.errstate(over="ignore"):
        h = np.zeros((), dtype=np.uint64)
        for key in keys:
            k = np.asarray(key, dtype=np.int64).astype(np.uint64)
            h = _splitmix64(h ^ _splitmix64(k))
        return (h >> _S11).astype(np.float64) * 2.0**-53


# ---- block geometry --------------------------------------------------------------------


def _as_grid(grid_size: int | tuple[int, int]) -> tuple[int, int]:
    grid = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    if len(grid) != 2 or any(not isinstance(g, int) or g < 1 for g in grid):
        raise ValueError(f"grid_size must be a positive int or (height, width), got {grid_size!r}")
    return grid  # type: ignore[return-value]


def block_shape(scale: float, aspect: float, grid: tuple[int, int]) -> tuple[int, int]:
    """`(h, w)` of a block covering `scale` of the grid with `h / w` close to `aspect`.

    A block may span the whole grid. A side cut by the grid gives its area to the other
    side, so on rectangular grids the scale keeps its meaning.
    """
    gh, gw = grid
    area = scale * gh * gw
    h = min(max(round(math.sqrt(area * aspect)), 1), gh)
    w = min(max(round(math.sqrt(area / aspect)), 1), gw)
    if h == gh and w < gw:
        w = min(max(round(area / h), w), gw)
    elif w == gw and h < gh:
        h = min(max(round(area / w), h), gh)
    return h, w


def _place(u: np.ndarray, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Top-left corners from uniforms `u` (..., 2): row in 0..gh-h, column in 0..gw-w."""
    span = np.array([grid[0] - shape[0] + 1, grid[1] - shape[1] + 1])
    return np.minimum(np.floor(u * span).astype(np.int64), span - 1)


def _block_masks(pos: np.ndarray, shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Boolean masks (B, M, gh * gw) of blocks with top-left corners `pos` (B, M, 2)."""
    rows, cols = np.arange(grid[0]), np.arange(grid[1])
    top, left = pos[..., 0:1], pos[..., 1:2]
    in_rows = (rows >= top) & (rows < top + shape[0])
    in_cols = (cols >= left) & (cols < left + shape[1])
    masks = in_rows[..., :, None] & in_cols[..., None, :]
    return masks.reshape(*pos.shape[:-1], grid[0] * grid[1])


def _block_indices(pos: np.ndarray, shape: tuple[int, int], width: int) -> np.ndarray:
    """Patch indices (B, M, h * w), ascending, of blocks with top-left corners (B, M, 2)."""
    offsets = (np.arange(shape[0])[:, None] * width + np.arange(shape[1])).reshape(-1)
    return (pos[..., 0] * width + pos[..., 1])[..., None] + offsets


def subsample(keep: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """Indices (..., k), ascending, of `k` patches chosen at random among `keep` (..., N).

    The patches with the smallest `keys` (uniforms, same shape as `keep`) win, so every
    kept patch is equally likely to survive whatever its raster position. Each row of
    `keep` must hold at least `k` patches.
    """
    ranked = np.argsort(np.where(keep, keys, 2.0), axis=-1, kind="stable")
    return np.sort(ranked[..., :k], axis=-1)


# ---- collation ---------------------------------------------------------------------------


def _index_array(indices: torch.Tensor | Sequence[int] | np.ndarray) -> np.ndarray:
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    return np.asarray(indices, dtype=np.int64).reshape(-1)


def _to_long(arrays: np.ndarray) -> list[torch.Tensor]:
    """(B, M, K) int array -> M long tensors (B, K)."""
    return [torch.from_numpy(np.ascontiguousarray(arrays[:, m])) for m in range(arrays.shape[1])]


def _collate(
    samples: Sequence[Sample | None],
    sample_masks: Callable[[torch.Tensor], tuple[list[torch.Tensor], list[torch.Tensor]]],
) -> MaskedBatch:
    kept = [s for s in samples if s is not None]
    if kept:
        images = default_collate([s[0] for s in kept])
    else:  # every sample was corrupt; the training loop skips an empty batch
        images = torch.empty(0)
    labels = torch.tensor([int(s[1]) for s in kept], dtype=torch.long)
    indices = torch.tensor([int(s[2]) for s in kept], dtype=torch.long)
    masks_enc, masks_pred = sample_masks(indices)
    return MaskedBatch(images, labels, indices, masks_enc, masks_pred, len(samples) - len(kept))


def _check_range(name: str, value: tuple[float, float], upper: float | None) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not (0 < lo <= hi and (upper is None or hi <= upper)):
        bound = f" <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must satisfy 0 < min <= max{bound}, got {value!r}")
    return lo, hi


class MultiBlockMaskCollator:
    """I-JEPA multi-block masking as a `collate_fn` for `(image, label, index)` samples.

    Per batch: one target shape `(h, w)` (scale from `pred_mask_scale`, aspect ratio from
    `aspect_ratio`) and one square context shape (scale from `enc_mask_scale`). Per sample:
    `num_pred_masks` target blocks and `num_enc_masks` context blocks, each context block
    minus the union of the targets unless `allow_overlap`. Target masks have `h * w`
    patches; context masks are cut to the batch minimum by random subsampling.

    A sample whose context keeps fewer than `min_keep` patches has its blocks redrawn (at
    most `MAX_RESAMPLES` times); if some still fail, the batch's target blocks are shrunk
    one row or column at a time, which always succeeds because `min_keep` is clamped (with
    a warning) to what the smallest context block keeps around 1x1 targets.

    With `fixed_counts`, every batch has the same shapes (`num_context_tokens`,
    `num_target_tokens`), so compiled graphs and CUDA graphs are built once: each context
    keeps exactly `min_keep` patches, chosen at random among its own (rather than the
    batch's smallest count), and each target block keeps the smallest block area its scale
    and aspect ranges allow, chosen at random among the block's patches. This changes the
    objective slightly (fewer target tokens per block on some batches), so it is an option.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int],
        *,
        num_enc_masks: int = 1,
        enc_mask_scale: tuple[float, float] = (0.85, 1.0),
        num_pred_masks: int = 4,
        pred_mask_scale: tuple[float, float] = (0.15, 0.2),
        aspect_ratio: tuple[float, float] = (0.75, 1.5),
        min_keep: int = 10,
        allow_overlap: bool = False,
        fixed_counts: bool = False,
        seed: int = 0,
    ) -> None:
        self.grid = _as_grid(grid_size)
        for name, count in (
            ("num_enc_masks", num_enc_masks),
            ("num_pred_masks", num_pred_masks),
            ("min_keep", min_keep),
        ):
            if count < 1:
                raise ValueError(f"{name} must be >= 1, got {count}")
        self.num_enc_masks = num_enc_masks
        self.num_pred_masks = num_pred_masks
        self.enc_mask_scale = _check_range("enc_mask_scale", enc_mask_scale, 1.0)
        self.pred_mask_scale = _check_range("pred_mask_scale", pred_mask_scale, 1.0)
        self.aspect_ratio = _check_range("aspect_ratio", aspect_ratio, None)
        self.allow_overlap = allow_overlap
        self.seed = seed
        self.epoch = 0
        self.min_keep = self._feasible_min_keep(min_keep)
        self.fixed_counts = fixed_counts

    @property
    def num_context_tokens(self) -> int | None:
        """Patches in every context mask with `fixed_counts` (else None: per batch)."""
        return self.min_keep if self.fixed_counts else None

    @functools.cached_property
    def num_target_tokens(self) -> int | None:
        """Patches in every target mask with `fixed_counts`: the smallest block area over
        the scale and aspect ranges (else None: per batch)."""
        if not self.fixed_counts:
            return None
        lo, hi = np.log(self.aspect_ratio)
        scale = self.pred_mask_scale[0]
        return min(
            math.prod(block_shape(scale, float(aspect), self.grid))
            for aspect in np.exp(np.linspace(lo, hi, 129))
        )

    # ---- setup ---------------------------------------------------------------------------
    def _feasible_min_keep(self, min_keep: int) -> int:
        """Clamp `min_keep` so that resampling plus target shrinking always succeeds."""
        gh, gw = self.grid
        enc_min = math.prod(block_shape(self.enc_mask_scale[0], 1.0, self.grid))
        # Around 1x1 targets a context block keeps at least enc_min - num_pred_masks patches.
        cap = enc_min if self.allow_overlap else enc_min - self.num_pred_masks
        if cap < 1:
            raise ValueError(
                f"on a {gh}x{gw} grid, enc_mask_scale={self.enc_mask_scale} gives context blocks "
                f"of {enc_min} patches, which num_pred_masks={self.num_pred_masks} target blocks "
                f"can cover entirely; raise enc_mask_scale, lower num_pred_masks, use a larger "
                f"grid (image_size / patch_size) or set allow_overlap=True"
            )
        if min_keep > cap:
            warnings.warn(
                f"min_keep={min_keep} exceeds the {cap} context patches a {gh}x{gw} grid can "
                f"guarantee (enc_mask_scale={self.enc_mask_scale}, "
                f"num_pred_masks={self.num_pred_masks}); using min_keep={cap}",
                stacklevel=3,
            )
            min_keep = cap
        best = self._best_context()
        if best < min_keep:
            raise ValueError(
                f"on a {gh}x{gw} grid, pred_mask_scale={self.pred_mask_scale} leaves at most "
                f"{best} context patches (enc_mask_scale={self.enc_mask_scale}), fewer than "
                f"min_keep={min_keep}; lower pred_mask_scale or min_keep, raise enc_mask_scale, "
                f"or set allow_overlap=True"
            )
        return min_keep

    def _best_context(self) -> int:
        """Most context patches left by the largest context and smallest target block."""
        if self.allow_overlap:
            return math.prod(block_shape(self.enc_mask_scale[1], 1.0, self.grid))
        eh, ew = block_shape(self.enc_mask_scale[1], 1.0, self.grid)
        lo, hi = np.log(self.aspect_ratio)
        best = 0
        for aspect in np.exp(np.linspace(lo, hi, 129)):
            th, tw = block_shape(self.pred_mask_scale[0], float(aspect), self.grid)
            # A target pushed into the opposite corner overlaps the context block least.
            overlap = max(0, th + eh - self.grid[0]) * max(0, tw + ew - self.grid[1])
            best = max(best, eh * ew - overlap)
        return best

    def set_epoch(self, epoch: int) -> None:
        """Key the masks of the coming epoch (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    # ---- sampling -------------------------------------------------------------------------
    def block_shapes(self, indices: torch.Tensor) -> Shapes:
        """The batch's `(h, w)` for targets and for context blocks, keyed by min(indices)."""
        u = hash_uniform(
            self.seed, self.epoch, int(_index_array(indices).min()), _STREAM_BATCH, np.arange(3)
        )
        (t_lo, t_hi), (c_lo, c_hi) = self.pred_mask_scale, self.enc_mask_scale
        a_lo, a_hi = np.log(self.aspect_ratio)
        aspect = math.exp(a_lo + u[1] * (a_hi - a_lo))
        target = block_shape(t_lo + u[0] * (t_hi - t_lo), aspect, self.grid)
        context = block_shape(c_lo + u[2] * (c_hi - c_lo), 1.0, self.grid)
        return target, context

    def _positions(
        self, idx: np.ndarray, attempt: int, shapes: Shapes
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-left corners of targets (B, num_pred, 2) and context blocks (B, num_enc, 2)."""
        m_pred, m_enc = self.num_pred_masks, self.num_enc_masks
        counters = np.arange(2 * (m_pred + m_enc))
        u = hash_uniform(self.seed, self.epoch, idx[:, None], _STREAM_BLOCKS, attempt, counters)
        u = u.reshape(len(idx), m_pred + m_enc, 2)
        t_pos = _place(u[:, :m_pred], shapes[0], self.grid)
        return t_pos, _place(u[:, m_pred:], shapes[1], self.grid)

    def _context(self, t_pos: np.ndarray, c_pos: np.ndarray, shapes: Shapes) -> np.ndarray:
        """Context masks (B, num_enc, N): context blocks minus the union of the targets."""
        context = _block_masks(c_pos, shapes[1], self.grid)
        if not self.allow_overlap:
            context &= ~_block_masks(t_pos, shapes[0], self.grid).any(axis=1, keepdims=True)
        return context

    def _failing(self, context: np.ndarray) -> np.ndarray:
        return np.flatnonzero((context.sum(axis=-1) < self.min_keep).any(axis=-1))

    def _resample(
        self,
        idx: np.ndarray,
        shapes: Shapes,
        t_pos: np.ndarray,
        c_pos: np.ndarray,
        context: np.ndarray,
    ) -> None:
        """Redraw, in place, the blocks of the samples whose context is too small."""
        for attempt in range(1, MAX_RESAMPLES + 1):
            failing = self._failing(context)
            if failing.size == 0:
                return
            t_new, c_new = self._positions(idx[failing], attempt, shapes)
            t_pos[failing], c_pos[failing] = t_new, c_new
            context[failing] = self._context(t_new, c_new, shapes)

    def _shrink_targets(
        self, shapes: Shapes, t_pos: np.ndarray, c_pos: np.ndarray, context: np.ndarray
    ) -> tuple[Shapes, np.ndarray]:
        """Last resort: shrink all target blocks (same corners) until every context fits."""
        while self._failing(context).size:
            (h, w), c_shape = shapes
            if h == w == 1:  # excluded by _feasible_min_keep; fail loudly, never loop
                raise RuntimeError(f"context below min_keep={self.min_keep} around 1x1 targets")
            shapes = ((h - 1, w) if h >= w else (h, w - 1)), c_shape
            context = self._context(t_pos, c_pos, shapes)
        return shapes, context

    def sample_masks(self, indices: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Masks for the samples with dataset `indices` (B,).

        Returns `(masks_enc, masks_pred)`: `num_enc_masks` long tensors (B, K_enc) and
        `num_pred_masks` long tensors (B, h * w) of patch indices, ascending per row.
        """
        idx = _index_array(indices)
        if idx.size == 0:
            empty = torch.empty(0, 0, dtype=torch.long)
            return [empty] * self.num_enc_masks, [empty] * self.num_pred_masks
        shapes = self.block_shapes(idx)
        t_pos, c_pos = self._positions(idx, 0, shapes)
        context = self._context(t_pos, c_pos, shapes)
        self._resample(idx, shapes, t_pos, c_pos, context)
        shapes, context = self._shrink_targets(shapes, t_pos, c_pos, context)
        mask_ids, patch_ids = np.arange(self.num_enc_masks)[:, None], np.arange(context.shape[-1])
        keys = hash_uniform(
            self.seed, self.epoch, idx[:, None, None], _STREAM_KEEP, mask_ids, patch_ids
        )
        keep = self.num_context_tokens or int(context.sum(axis=-1).min())
        masks_enc = subsample(context, keys, keep)
        masks_pred = _block_indices(t_pos, shapes[0], self.grid[1])
        if self.fixed_counts:
            masks_pred = self._fixed_targets(idx, masks_pred)
        return _to_long(masks_enc), _to_long(masks_pred)

    def _fixed_targets(self, idx: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """Target blocks (B, M, h * w) cut to `num_target_tokens` random patches each.

        A block that shrank below that count (the last-resort shrinking) repeats its
        patches in turn, so the shapes still hold; a repeated patch weighs twice in the loss.
        """
        count = self.num_target_tokens
        area = blocks.shape[-1]
        if area < count:
            return np.sort(blocks[..., np.arange(count) % area], axis=-1)
        mask_ids = np.arange(self.num_pred_masks)[:, None]
        keys = hash_uniform(
            self.seed, self.epoch, idx[:, None, None], _STREAM_TARGET, mask_ids, np.arange(area)
        )
        chosen = subsample(np.ones(blocks.shape, dtype=bool), keys, count)
        return np.take_along_axis(blocks, chosen, axis=-1)

    def __call__(self, samples: Sequence[Sample | None]) -> MaskedBatch:
        """Collate `(image (C, H, W), label, index)` samples; `None` samples are dropped."""
        return _collate(samples, self.sample_masks)


class RandomMaskCollator:
    """Random-patch masking (ablation): per sample, `round((1 - mask_ratio) * N)` random
    patches form the context and the remaining patches the single target mask."""

    def __init__(
        self, grid_size: int | tuple[int, int], *, mask_ratio: float = 0.75, seed: int = 0
    ) -> None:
        self.grid = _as_grid(grid_size)
        num_patches = self.grid[0] * self.grid[1]
        self.num_context = round((1.0 - mask_ratio) * num_patches)
        if not (0 < mask_ratio < 1 and 1 <= self.num_context < num_patches):
            raise ValueError(
                f"mask_ratio={mask_ratio} on a {self.grid[0]}x{self.grid[1]} grid leaves "
                f"{self.num_context} of {num_patches} patches as context; choose mask_ratio in "
                f"(0, 1) so that both context and target keep at least one patch"
            )
        self.mask_ratio = mask_ratio
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Key the masks of the coming epoch (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def sample_masks(self, indices: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Masks for dataset `indices` (B,): `([context (B, K)], [target (B, N - K)])`."""
        idx = _index_array(indices)
        num_patches = self.grid[0] * self.grid[1]
        keys = hash_uniform(
            self.seed, self.epoch, idx[:, None], _STREAM_RANDOM, np.arange(num_patches)
        )
        ranked = np.argsort(keys, axis=-1, kind="stable").reshape(len(idx), num_patches)
        context = np.sort(ranked[:, : self.num_context], axis=-1)
        target = np.sort(ranked[:, self.num_context :], axis=-1)
        return [torch.from_numpy(context)], [torch.from_numpy(target)]

    def __call__(self, samples: Sequence[Sample | None]) -> MaskedBatch:
        """Collate `(image (C, H, W), label, index)` samples; `None` samples are dropped."""
        return _collate(samples, self.sample_masks)


def build_collator(cfg: JEPAConfig) -> MultiBlockMaskCollator | RandomMaskCollator:
    """The collator for `cfg.mask_strategy` on a `cfg.grid_size` x `cfg.grid_size` grid."""
    if cfg.mask_strategy == "random":
        return RandomMaskCollator(cfg.grid_size, mask_ratio=cfg.mask_ratio, seed=cfg.seed)
    if cfg.mask_strategy != "multiblock":
        raise ValueError(f"mask_strategy={cfg.mask_strategy!r} is not 'multiblock' or 'random'")
    return MultiBlockMaskCollator(
        cfg.grid_size,
        num_enc_masks=cfg.num_enc_masks,
        enc_mask_scale=cfg.enc_mask_scale,
        num_pred_masks=cfg.num_pred_masks,
        pred_mask_scale=cfg.pred_mask_scale,
        aspect_ratio=cfg.aspect_ratio,
        min_keep=cfg.min_keep,
        allow_overlap=cfg.allow_overlap,
        fixed_counts=cfg.fixed_token_counts,
        seed=cfg.seed,
    )
