"""The plain module under the wrappers training adds: DDP / DataParallel and torch.compile.

Weights, model arguments and EMA belong to the plain module; a wrapper only changes how it
runs. `unwrap` is the one place that looks under a wrapper; `WRAPPER_PREFIXES` are the key
prefixes the same wrappers add to a state dict saved without unwrapping.
"""

from __future__ import annotations

from torch import nn

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / DataParallel (`.module`) and torch.compile (`._orig_mod`)."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module
