"""What every stage main shares: logging and one-line errors.

Stages read params.yaml with `jepa.config.load_params`: the same `JEPAConfig` that the
library's `JEPAConfig.from_yaml` reads, plus the pipeline-only keys (`nproc`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from jepa.config import ConfigError


def run_main(main: Callable[[], None], *expected: type[BaseException]) -> None:
    """Run a stage main with logging; `expected` errors print one line and exit 2.

    Expected errors are the user's to fix (missing data, a bad config); their message
    says how, and a traceback would bury it.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        main()
    except (ConfigError, *expected) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
