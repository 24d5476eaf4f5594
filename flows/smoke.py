"""A flow that only proves the plumbing: server → work pool → worker → flow run process.

Deploy it next to the real pipeline to check that a worker picks up runs from its pool
and runs them in the checkout (see docs/prefect.md); the tests run it on a schedule.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from jepa.io import write_json


@flow(name="jepa-smoke")
def smoke(marker: str = "outputs/prefect-smoke.json") -> str:
    """Write `marker` (a JSON file: flow run id, working directory, interpreter); return its path."""
    path = Path(marker).resolve()
    info = {"flow_run_id": flow_run.get_id(), "cwd": os.getcwd(), "python": sys.executable}
    write_json(path, info)
    get_run_logger().info("wrote %s", path)
    return str(path)
