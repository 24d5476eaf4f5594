"""Encoder export and import: one encoder, out of any file this library or I-JEPA writes.

An exported encoder is a directory with `encoder.safetensors` and `encoder.json`
(`{"model_args": ..., **meta}`); the safetensors metadata repeats `model_args`, so the
weights file alone rebuilds the encoder too. `load_encoder` reads such an export (the
directory, or either file), an encoder of a training checkpoint (`jepa.checkpoint`), or an
official I-JEPA release (`jepa.official`), and always returns a `VisionTransformer` in eval
mode with the weights loaded strictly.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from jepa.checkpoint import (
    FORMAT,
    CheckpointError,
    _require_file,
    _torch_load,
    _validate_checkpoint,
    migrate_state_dict,
)
from jepa.io import atomic_write, write_text
from jepa.models.vit import VisionTransformer, sincos_pos_embed_2d
from jepa.models.wrap import unwrap

ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_INFO = "encoder.json"


# --------------------------------------------------------------------------- export


def export_encoder(encoder: nn.Module, out_dir: Path, *, meta: dict | None = None) -> Path:
    """Write `out_dir/encoder.safetensors` and `out_dir/encoder.json`, each atomically.

    The json is `{"model_args": encoder.model_args(), **meta}`; the safetensors metadata
    repeats `model_args`, so the weights file alone can rebuild the encoder too.
    """
    encoder = unwrap(encoder)
    out_dir = Path(out_dir)
    meta = dict(meta or {})
    if "model_args" in meta:
        raise ValueError("meta must not contain 'model_args'; export_encoder writes it")
    args = encoder.model_args()
    try:
        info = json.dumps({"model_args": args, **meta}, indent=2, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"meta for {out_dir} is not JSON-serialisable: {e}") from e
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    table = encoder.pos_embed.detach().cpu()
    grid = encoder.grid_size
    if not _same_table(table, sincos_pos_embed_2d(encoder.embed_dim, grid)[None]):
        tensors["pos_embed"] = table.contiguous()  # e.g. an official table: keep it exactly
    # One metadata key: safetensors stores the header map in no fixed order, and two keys
    # made identical weights produce different bytes (DVC then reruns everything after).
    metadata = {"model_args": json.dumps(args, sort_keys=True)}
    atomic_write(out_dir / ENCODER_WEIGHTS, lambda tmp: save_safetensors(tensors, tmp, metadata))
    write_text(out_dir / ENCODER_INFO, info + "\n")
    return out_dir


# --------------------------------------------------------------------------- import


def load_encoder(
    path: Path,
    *,
    which: str = "target_encoder",
    num_heads: int | None = None,
    image_size: int | None = None,
) -> VisionTransformer:
    """A `VisionTransformer` in eval mode from an export, a training checkpoint or an official release.

    `path`: an export directory or its `.safetensors`/`.json`; a `save_checkpoint` file
    (`which` picks `encoder` or `target_encoder`); or an official I-JEPA `.pth.tar`.
    `image_size` rebuilds the encoder for another input size (positions are analytic);
    `num_heads` is needed only for official files of unusual width; `which` does not apply
    to an export, which holds one encoder.
    """
    path = Path(path)
    if path.is_dir() or path.suffix in (".safetensors", ".json"):
        return _load_export(path, num_heads=num_heads, image_size=image_size)
    _require_file(path, "encoder checkpoint")
    obj = _torch_load(path, "cpu", mmap=zipfile.is_zipfile(path))  # mmap: skip optimizer RAM
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        state = _validate_checkpoint(obj, path)
        _check_which(which, path)
        args = _override_args(state["encoder_args"], path, num_heads, image_size)
        return _build_and_load(args, state[which], path)
    from jepa import official  # here, not at the top: it builds with this module's loader

    if official._is_official(obj):
        return official._official_encoder(
            obj, path, which=which, num_heads=num_heads, image_size=image_size
        )
    raise CheckpointError(
        f"{path} is neither a jepa checkpoint, an encoder export, nor an official I-JEPA "
        f"release (a dict with {', '.join(official.OFFICIAL_KEYS[:3])}); point to one of those"
    )


def _load_export(path: Path, *, num_heads: int | None, image_size: int | None) -> VisionTransformer:
    weights = path / ENCODER_WEIGHTS if path.is_dir() else path.with_suffix(".safetensors")
    info_path = weights.with_suffix(".json")
    _require_file(weights, "encoder weights")
    try:
        tensors = load_safetensors(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"encoder weights {weights} are unreadable ({e}); export the encoder again"
        ) from e
    try:
        if info_path.is_file():
            args = json.loads(info_path.read_text())["model_args"]
        else:  # a lone weights file: the arguments travel in its metadata
            with safe_open(weights, "pt") as f:
                args = json.loads((f.metadata() or {})["model_args"])
    except (KeyError, TypeError, ValueError, SafetensorError) as e:
        raise CheckpointError(
            f"cannot read the encoder's model_args from {info_path} or {weights} ({e!r}); "
            f"export the encoder again"
        ) from e
    args = _override_args(args, info_path, num_heads, image_size)
    return _build_and_load(args, tensors, weights)


def _check_which(which: str, path: Path) -> None:
    if which not in ("encoder", "target_encoder"):
        raise CheckpointError(
            f"which={which!r} is not an encoder in {path}; use 'target_encoder' or 'encoder'"
        )


def _override_args(args: dict, path: Path, num_heads: int | None, image_size: int | None) -> dict:
    """Stored model arguments with `image_size` replaced; `num_heads` must agree if given."""
    args = dict(args)
    if num_heads is not None and num_heads != args.get("num_heads"):
        raise CheckpointError(
            f"num_heads={num_heads} contradicts {path}, which stores num_heads="
            f"{args.get('num_heads')}; leave num_heads unset"
        )
    if image_size is not None:
        args["image_size"] = image_size
    return args


def _build_and_load(args: dict, state_dict: dict, path: Path) -> VisionTransformer:
    """Build `VisionTransformer(**args)` and load `state_dict` strictly; eval mode."""
    if args["image_size"] % args["patch_size"]:
        raise CheckpointError(
            f"image_size={args['image_size']} is not a multiple of the patch size "
            f"{args['patch_size']} of {path}"
        )
    try:
        model = VisionTransformer(**args)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot build an encoder from {path}'s arguments {args}: {e}") from e
    state_dict = migrate_state_dict(state_dict)
    table = state_dict.pop("pos_embed", None)
    if table is not None:
        _adopt_pos_embed(model, table, path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights in {path} do not fit the encoder {args}: {e}") from e
    return model.eval()


def _same_table(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5)


def _adopt_pos_embed(model: VisionTransformer, table: torch.Tensor, path: Path) -> None:
    """Make `model` use the position table a checkpoint was trained with.

    `sincos_pos_embed_2d` follows the official layout (columns in the first half), so
    official weights need nothing here. A table that is not that sin-cos table is kept
    as-is for the training grid, with a warning.
    """
    grid = math.isqrt(table.shape[-2])
    ours = sincos_pos_embed_2d(table.shape[-1], grid)[None]
    if _same_table(table.cpu(), ours):
        return  # our layout: the model's own buffer is already right
    if table.shape != model.pos_embed.shape:
        raise CheckpointError(
            f"{path} has a non-sin-cos pos_embed of shape {tuple(table.shape)}, which cannot be "
            f"regenerated for image_size={model.model_args()['image_size']}; load it at its "
            f"own resolution ({grid * model.patch_size} px)"
        )
    model.pos_embed.copy_(table)
    warnings.warn(
        f"{path} uses a position table that is not sin-cos; the encoder keeps it for "
        f"{model.grid_size}x{model.grid_size} patch grids, other input sizes get sin-cos",
        stacklevel=3,
    )
