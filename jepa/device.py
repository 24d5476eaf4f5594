"""Where tensors run and in which precision: one rule for training and evaluation; and how
the CPU's freed memory is kept for evaluation."""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import sys

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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_HEAP_BYTES = 1 << 30


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse instead of handing it back to the
    kernel. Process-wide and idempotent; returns whether it applied.

    A forward pass at evaluation batch sizes frees buffers of several MB per layer. By
    default glibc often maps blocks this large afresh (or trims them off the heap), and the
    kernel then zero-fills every page on first touch: thousands of page faults per forward
    pass of the default encoder, against a few hundred with the memory kept, and the
    extraction's speed varied with the heap's history. `bench/input_path.py` times it.
    Training keeps its activations for the backward pass and gained nothing. The price is
    that the process keeps its peak heap.

    Applies only on Linux with glibc, and not when the user set `MALLOC_MMAP_THRESHOLD_`
    or `MALLOC_TRIM_THRESHOLD_` (their choice stands).
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"} & os.environ.keys():
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _KEPT_HEAP_BYTES // 4)
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEPT_HEAP_BYTES)
    )
