"""The one tiny config every test starts from: the real config groups composed with
`debug=tiny` (exactly what `dvc exp run -S debug=tiny` runs), shrunk further per test."""

from __future__ import annotations

from typing import Any

from jepa.config import JEPAConfig


def tiny_config(**overrides: Any) -> JEPAConfig:
    """`JEPAConfig.compose("debug=tiny")` with `overrides` applied as by `replace`."""
    return JEPAConfig.compose("debug=tiny").replace(**overrides)
