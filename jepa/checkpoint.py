"""Training checkpoints that never lose work and never silently restart.

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

Encoder exports (and reading an encoder out of any of these files) are `jepa.export`'s;
official I-JEPA releases are `jepa.official`'s. Both read files with `_torch_load` from here.
"""

from __future__ import annotations

import pickle
import random
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from jepa.config import JEPAConfig
from jepa.io import atomic_write
from jepa.models.wrap import WRAPPER_PREFIXES, unwrap

FORMAT = "jepa-checkpoint"
VERSION = 2


# Upgrades of older checkpoint layouts: version v -> a function returning the v+1 dict.
# Register one here whenever VERSION is bumped, so old runs stay resumable.
def _upgrade_v1(state: dict) -> dict:
    """v1 → v2: the config field `subset` became `pretrain_subset` (the same meaning: the
    first N training images, for pretraining). v2 checkpoints may also carry the metrics
    rows logged so far in `extra["log"]`; a v1 run resumes with a log starting there."""
    state = dict(state, version=2)
    for key in ("config", "training_fields"):
        if isinstance(state.get(key), dict) and "subset" in state[key]:
            values = dict(state[key])
            values["pretrain_subset"] = values.pop("subset")
            state[key] = values
    return state


UPGRADES: dict[int, Callable[[dict], dict]] = {1: _upgrade_v1}

_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, foreign, or from a different training run."""


# --------------------------------------------------------------------------- writing


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save(obj)` to `path` atomically (`jepa.io.atomic_write`): a crash mid-save
    leaves an existing file at `path` untouched and no temporary file behind; a full disk
    raises `jepa.io.DiskFullError` with the space the tensors need."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), size=tensor_bytes(obj))


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in `obj` (nested dicts, lists, tuples): about its saved size."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


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
    encoder, predictor, target_encoder = (unwrap(m) for m in (encoder, predictor, target_encoder))
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
        from jepa.official import _is_official  # here, not at the top: it imports this module

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
