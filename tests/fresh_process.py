"""What a fresh Python process imports, for tests that keep slow imports off a code path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def modules_after(code: str, modules: Sequence[str]) -> list[str]:
    """Those of `modules` that a fresh interpreter has imported after running `code`."""
    report = f"\nimport sys\nprint(' '.join(m for m in {tuple(modules)!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", code + report], capture_output=True, text=True, check=True
    )
    return out.stdout.split()
