"""What every stage main shares: reading params.yaml, atomic JSON, logging, errors.

`load_params` (from `jepa.config`) gives the stages the same `JEPAConfig` that the library's
`JEPAConfig.from_yaml` reads from params.yaml, plus the pipeline-only keys (`nproc`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from jepa.config import ConfigError, load_params  # noqa: F401  (stages import load_params here)
from jepa.features import write_json  # noqa: F401  (the stages import it from here)


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
