"""Official I-JEPA releases (`IN1K-vit.h.14-300e.pth.tar`, ...) as this library's encoder.

An official file is a `torch.save`d dict with `encoder`, `predictor`, `target_encoder`
(state dicts with DDP's `module.` prefix), `opt` and `epoch`; it stores no architecture.
`infer_official_args` reads the `VisionTransformer` arguments from the weights themselves,
except the head count, which comes from the official model sizes (`jepa.config.MODEL_SIZES`).
"""

from __future__ import annotations

import functools
import math
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from jepa import config
from jepa.checkpoint import CheckpointError, _require_file, _torch_load, migrate_state_dict
from jepa.export import _build_and_load, _check_which
from jepa.models.vit import VisionTransformer

OFFICIAL_KEYS = ("encoder", "predictor", "target_encoder", "opt", "epoch")


@functools.cache
def official_num_heads() -> dict[int, int]:
    """Width -> head count of the official models: the weights store no `num_heads`."""
    return {dim: heads for dim, _, heads in config.MODEL_SIZES.values()}


def load_official_checkpoint(
    path: Path,
    *,
    which: str = "target_encoder",
    num_heads: int | None = None,
    image_size: int | None = None,
) -> VisionTransformer:
    """An encoder (eval mode) from an official I-JEPA release (`IN1K-vit.h.14-300e.pth.tar`, ...).

    The architecture is read from the weights: width, patch size and channels from
    `patch_embed.proj.weight`, depth from the block indices, `mlp_ratio` from `fc1`,
    `image_size` from `pos_embed`'s N (unless given). `num_heads` is not in the weights:
    it defaults to the official head count for the width.
    """
    path = Path(path)
    _require_file(path, "official checkpoint")
    obj = _torch_load(path, "cpu", mmap=zipfile.is_zipfile(path))
    if not _is_official(obj):
        raise CheckpointError(
            f"{path} is not an official I-JEPA checkpoint (a dict with "
            f"{', '.join(OFFICIAL_KEYS)}); for this library's files use load_encoder()"
        )
    return _official_encoder(obj, path, which=which, num_heads=num_heads, image_size=image_size)


def _is_official(obj: Any) -> bool:
    return isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in OFFICIAL_KEYS[:3])


def _official_encoder(
    obj: dict, path: Path, *, which: str, num_heads: int | None, image_size: int | None
) -> VisionTransformer:
    _check_which(which, path)
    if not isinstance(obj.get(which), dict):
        present = [k for k in OFFICIAL_KEYS[:3] if isinstance(obj.get(k), dict)]
        raise CheckpointError(f"{path} has no {which!r} weights; it holds {present}")
    state_dict = migrate_state_dict(obj[which])
    args = infer_official_args(state_dict, path, num_heads=num_heads, image_size=image_size)
    return _build_and_load(args, state_dict, path)


def infer_official_args(
    state_dict: dict[str, torch.Tensor],
    path: Path,
    *,
    num_heads: int | None = None,
    image_size: int | None = None,
) -> dict:
    """`VisionTransformer` arguments for an (unprefixed) official encoder state dict."""
    if "patch_embed.proj.weight" not in state_dict:
        raise CheckpointError(
            f"{path} has no patch_embed.proj.weight; keys start {sorted(state_dict)[:5]}; "
            f"it is not an I-JEPA ViT encoder"
        )
    embed_dim, in_chans, patch_size, _ = state_dict["patch_embed.proj.weight"].shape
    blocks = {int(m[1]) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))}
    if not blocks:
        raise CheckpointError(f"{path} has no transformer blocks (blocks.N.*)")
    if num_heads is None:
        heads = official_num_heads()
        if embed_dim not in heads:
            raise CheckpointError(
                f"{path} has width {embed_dim}, which no official model uses; pass num_heads"
            )
        num_heads = heads[embed_dim]
    if embed_dim % num_heads:
        raise CheckpointError(f"num_heads={num_heads} does not divide {path}'s width {embed_dim}")
    fc1 = state_dict.get(f"blocks.{min(blocks)}.mlp.fc1.weight")
    if fc1 is None:
        raise CheckpointError(f"{path} has no blocks.{min(blocks)}.mlp.fc1.weight")
    hidden = fc1.shape[0]
    mlp_ratio = hidden / embed_dim
    while int(embed_dim * mlp_ratio) < hidden:  # Block uses int(dim * ratio): avoid 6143.99
        mlp_ratio = math.nextafter(mlp_ratio, math.inf)
    if image_size is None:
        image_size = _native_grid(state_dict, path) * patch_size
    return dict(
        image_size=image_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=max(blocks) + 1,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
    )


def _native_grid(state_dict: dict, path: Path) -> int:
    """Patches per side of the training resolution, from `pos_embed` `(1, N, D)` (224 px if absent)."""
    table = state_dict.get("pos_embed")
    if table is None:
        return 224 // state_dict["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(table.shape[-2])
    if grid * grid != table.shape[-2]:
        raise CheckpointError(
            f"{path}'s pos_embed has {table.shape[-2]} positions, not a square grid (class token?)"
        )
    return grid
