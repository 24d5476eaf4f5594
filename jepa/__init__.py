"""I-JEPA pretraining and evaluation.

`JEPAConfig`, `JEPAAgent` and `create_model` are loaded on first access, so `import jepa`
stays cheap (no torch, DVC or Prefect import until something needs them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["ConfigError", "JEPAAgent", "JEPAConfig", "create_model"]

_EXPORTS = {
    "JEPAConfig": "jepa.config",
    "ConfigError": "jepa.config",
    "JEPAAgent": "jepa.api",
    "create_model": "jepa.api",
}

if TYPE_CHECKING:
    from jepa.api import JEPAAgent, create_model
    from jepa.config import ConfigError, JEPAConfig


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'jepa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
