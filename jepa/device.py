"""Where tensors run and in which precision: one rule for training and evaluation."""

from __future__ import annotations

import torch

from jepa.config import AMP_MODES


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """`auto` → this rank's GPU when CUDA is present, else CPU; `cuda` → `cuda:local_rank`.

    Raises when a CUDA device is asked for on a machine without one.
    """
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={name!r} but CUDA is not available here; use device: cpu or auto"
        )
    return torch.device(name)


def autocast(amp: str, device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA by default (`amp: auto`); on the CPU only when asked (`amp: bf16`);
    float32 everywhere with `amp: none`."""
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} is not one of {', '.join(map(repr, AMP_MODES))}")
    enabled = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
