"""Checkpoints that never lose work and never silently restart.

A training checkpoint is one `torch.save`d dict of plain values (tensors, dicts, lists,
tuples, str/int/float/bool/None), so it loads with `weights_only=True`. It is written to a
temporary file beside its destination and moved into place (`jepa.io.atomic_write`), so a
crash mid-save leaves the previous checkpoint whole. Every failure to read one raises
`CheckpointError` naming the file and the fix: a caller can never mistake a damaged or
foreign file for "no checkpoint" and restart from step 0.

Layout of a training checkpoint (`FORMAT`, `VERSION`):

    format, version                    marker, so foreign files are recognised
    encoder, predictor, target_encoder state dicts of the unwrapped modules
    optimizer                          optimizer state dict
    step, epoch                        global optimizer step, epoch
    rng                                `capture_rng_state()`
    encoder_args, predictor_args       `model_args()`: rebuild the networks from the file alone
    config, config_hash,               `cfg.to_dict()`, `cfg.training_hash()`,
    training_fields                    `cfg.training_fields()` (names the fields that differ)
    extra                              caller's plain values (e.g. metrics)

An exported encoder is a directory with `encoder.safetensors` and `encoder.json`
(`{"model_args": ..., **meta}`). `load_encoder` also reads the official I-JEPA releases.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import nn

from jepa.config import JEPAConfig
from jepa.io import atomic_write, write_text
from jepa.models.vit import VisionTransformer, sincos_pos_embed_2d

FORMAT = "jepa-checkpoint"
VERSION = 1
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_INFO = "encoder.json"

# Upgrades of older checkpoint layouts: version v -> a function returning the v+1 dict.
# Register one here whenever VERSION is bumped, so old runs stay resumable.
UPGRADES: dict[int, Callable[[dict], dict]] = {}

# Prefixes added by wrappers (DDP / DataParallel, torch.compile); never part of a weight's name.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# The official I-JEPA code does not store num_heads; these are its widths' head counts.
OFFICIAL_NUM_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
OFFICIAL_KEYS = ("encoder", "predictor", "target_encoder", "opt", "epoch")

_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, foreign, or from a different training run."""


# --------------------------------------------------------------------------- writing


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save(obj)` to `path` atomically (`jepa.io.atomic_write`): a crash mid-save
    leaves an existing file at `path` untouched and no temporary file behind."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    path: Path,
    *,
    encoder: nn.Module,
    predictor: nn.Module,
    target_encoder: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    cfg: JEPAConfig,
    rng: dict,
    extra: dict | None = None,
) -> None:
    """Write a resumable training checkpoint to `path` atomically (see the module docstring).

    Raises `CheckpointError` before touching `path` if anything in it would not load with
    `weights_only=True` (e.g. a numpy scalar in `extra`).
    """
    path = Path(path)
    encoder, predictor, target_encoder = (
        unwrap_model(m) for m in (encoder, predictor, target_encoder)
    )
    state = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": encoder.state_dict(),
        "predictor": predictor.state_dict(),
        "target_encoder": target_encoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": int(step),
        "epoch": int(epoch),
        "rng": rng,
        "encoder_args": encoder.model_args(),
        "predictor_args": predictor.model_args(),
        "config": cfg.to_dict(),
        "config_hash": cfg.training_hash(),
        "training_fields": cfg.training_fields(),
        "extra": dict(extra or {}),
    }
    _check_plain(state, "checkpoint", path)
    atomic_save(state, path)


def _check_plain(obj: Any, where: str, path: Path) -> None:
    """Raise unless `obj` holds only what `torch.load(weights_only=True)` accepts."""
    # Exact types: a numpy float64 is a float subclass but pickles as a numpy object.
    if type(obj) in _PLAIN_SCALARS or type(obj) in (torch.Tensor, nn.Parameter):
        return
    if type(obj) in (dict, OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise CheckpointError(
                    f"cannot save {path}: {where} has a key {key!r} of type "
                    f"{type(key).__name__}; use str or int keys"
                )
            _check_plain(value, f"{where}[{key!r}]", path)
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]", path)
    else:
        raise CheckpointError(
            f"cannot save {path}: {where} is a {type(obj).__module__}.{type(obj).__name__}; "
            f"checkpoints hold only tensors, dicts, lists, tuples, str, int, float, bool and "
            f"None (convert it, e.g. with float(x), x.item() or x.tolist())"
        )


# --------------------------------------------------------------------------- reading


def load_checkpoint(
    path: Path, *, cfg: JEPAConfig | None = None, map_location: Any = "cpu"
) -> dict:
    """Load a training checkpoint written by `save_checkpoint`.

    With `cfg`, also refuse a checkpoint whose training fields differ from `cfg`'s.
    Never returns None: every problem is a `CheckpointError` naming the file and the fix.
    """
    path = Path(path)
    _require_file(path, "checkpoint")
    state = _torch_load(path, map_location)
    state = _validate_checkpoint(state, path)
    if cfg is not None:
        _check_training_config(state, cfg, path)
    return state


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory; expected a file")
    if not path.is_file():
        fix = "or set resume: false to start a new run" if what == "checkpoint" else "or export it"
        raise CheckpointError(
            f"{what} {path} does not exist; check the path (or output_dir), {fix}"
        )


def _torch_load(path: Path, map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)`, with every failure turned into a `CheckpointError`."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise CheckpointError(
                f"{path} holds Python objects besides tensors and plain containers, so it "
                f"cannot be loaded safely with weights_only=True; it was not written by "
                f"jepa.checkpoint. If you trust its source, re-save just the weights, e.g. "
                f"torch.save({{'target_encoder': obj['target_encoder']}}, 'clean.pth') after "
                f"torch.load(path, weights_only=False). Details: {_unpickler_reason(e)}"
            ) from e
        raise _unreadable(path, e) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, ValueError, ... on bad bytes
        raise _unreadable(path, e) from e


def _unpickler_reason(error: Exception) -> str:
    """The line of torch's long weights_only message that names the offending object."""
    lines = [line.strip() for line in str(error).splitlines()]
    return next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")


def _unreadable(path: Path, cause: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is unreadable (truncated or corrupt: {type(cause).__name__}: "
        f"{cause}). Delete or move it aside to start over, or point to another checkpoint "
        f"(e.g. the S3 mirror, or a fresh output_dir)."
    )


def _validate_checkpoint(state: Any, path: Path) -> dict:
    """Check the format marker, upgrade old versions, and require the training keys."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        hint = ""
        if _is_official(state):
            hint = " It looks like an official I-JEPA release: read it with load_encoder()."
        raise CheckpointError(
            f"{path} is not a jepa training checkpoint (no {FORMAT!r} marker).{hint} "
            f"Delete it or point resume/read_checkpoint at a checkpoint written by this library."
        )
    version = state.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {version!r}, newer than this library's {VERSION}; "
            f"upgrade the jepa package to read it"
        )
    while state["version"] < VERSION:
        if state["version"] not in UPGRADES:
            raise CheckpointError(
                f"{path} has checkpoint version {state['version']} and no upgrade to "
                f"{state['version'] + 1} is registered in jepa.checkpoint.UPGRADES"
            )
        state = UPGRADES[state["version"]](state)
    required = ("encoder", "predictor", "target_encoder", "optimizer", "step", "epoch", "rng")
    missing = [key for key in (*required, "encoder_args", "config_hash") if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(missing)}; it is incomplete. Delete it or "
            f"point to another checkpoint."
        )
    return state


def _check_training_config(state: dict, cfg: JEPAConfig, path: Path) -> None:
    """Refuse to resume a run whose trajectory-defining fields changed."""
    if state["config_hash"] == cfg.training_hash():
        return
    saved = state.get("training_fields") or {}
    current = cfg.training_fields()
    lines = [
        f"  {key}: saved {saved.get(key, '<absent>')!r}, current {current.get(key, '<absent>')!r}"
        for key in sorted(set(saved) | set(current))
        if key not in saved or key not in current or saved[key] != current[key]
    ]
    if saved and not lines:
        return  # identical fields; only the hash's encoding changed, so it is the same run
    detail = "\n".join(lines) or "  (the checkpoint does not record its training fields)"
    raise CheckpointError(
        f"checkpoint {path} was written by a run with a different training config "
        f"(hash {state['config_hash']} vs {cfg.training_hash()}):\n{detail}\n"
        f"Resuming would mix two runs. Use a fresh output_dir for the new settings, or set "
        f"resume: false to start from step 0."
    )


def migrate_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key migration for state dicts from elsewhere: drop wrapper prefixes (`module.`, `_orig_mod.`)."""
    migrated = {}
    for key, value in state_dict.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = key.split(".", 1)[1]
        migrated[key] = value
    return migrated


# --------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict:
    """Torch (CPU and every CUDA device), python `random` and numpy RNG states, as plain values."""
    version, mt_state, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": {
            "version": version,
            "state": torch.tensor(mt_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 → int64: lossless
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
    }


def restore_rng_state(state: dict) -> None:
    """Undo `capture_rng_state`: the next draws repeat those made after the capture."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = [s.cpu() for s in state.get("cuda", [])]
    if cuda and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count != len(cuda):
            warnings.warn(
                f"RNG state has {len(cuda)} CUDA device(s) but {count} are visible; restoring "
                f"the first {min(count, len(cuda))}, so CUDA random draws will not repeat exactly",
                stacklevel=2,
            )
        for device, device_state in enumerate(cuda[:count]):
            torch.cuda.set_rng_state(device_state, device)
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss_next"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].cpu().numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )


# --------------------------------------------------------------------------- export


def export_encoder(encoder: nn.Module, out_dir: Path, *, meta: dict | None = None) -> Path:
    """Write `out_dir/encoder.safetensors` and `out_dir/encoder.json`, each atomically.

    The json is `{"model_args": encoder.model_args(), **meta}`; the safetensors metadata
    repeats `model_args`, so the weights file alone can rebuild the encoder too.
    """
    encoder = unwrap_model(encoder)
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
    if _is_official(obj):
        return _official_encoder(obj, path, which=which, num_heads=num_heads, image_size=image_size)
    raise CheckpointError(
        f"{path} is neither a jepa checkpoint, an encoder export, nor an official I-JEPA "
        f"release (a dict with {', '.join(OFFICIAL_KEYS[:3])}); point to one of those"
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


# --------------------------------------------------------------------------- official I-JEPA


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
        if embed_dim not in OFFICIAL_NUM_HEADS:
            raise CheckpointError(
                f"{path} has width {embed_dim}, which no official model uses; pass num_heads"
            )
        num_heads = OFFICIAL_NUM_HEADS[embed_dim]
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
