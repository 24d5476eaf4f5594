"""Run a command tree (dvc → torchrun → workers) that can be stopped as a whole.

A stage command starts grandchildren: `dvc repro` runs `torchrun`, which forks one
worker per GPU, each with DataLoader workers of its own. Killing only the direct child
would orphan the rest, still holding GPUs. So the command gets its own session (and
process group), and every way out of `run_in_process_group` — non-zero exit, timeout,
an exception raised into the caller (Prefect's task timeout, `TerminationSignal` on
cancellation, Ctrl-C) — ends with the whole group gone: SIGTERM first so torchrun can
stop its workers cleanly, SIGKILL for whatever is left after a grace period.

This module does not import Prefect; the flow passes a line callback for logging.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 10.0
TAIL_LINES = 200
_POLL_S = 0.1

LineCallback = Callable[[str, str], None]  # (stream name, line without newline)


@dataclass(frozen=True)
class CommandResult:
    """What a finished command left: exit code and the tails of its output streams."""

    cmd: tuple[str, ...]
    returncode: int
    stdout: str  # last TAIL_LINES lines
    stderr: str  # last TAIL_LINES lines
    duration_s: float


class CommandError(RuntimeError):
    """The command exited non-zero; `result` holds its output tails."""

    def __init__(self, message: str, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


class CommandTimeoutError(CommandError, TimeoutError):
    """The command ran past its timeout and was killed with its process group."""


def run_in_process_group(
    cmd: Sequence[str],
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    *,
    grace_s: float = DEFAULT_GRACE_S,
    on_line: LineCallback | None = None,
) -> CommandResult:
    """Run `cmd` in a new session; return its result or raise, never leaving processes behind.

    Raises `CommandError` on a non-zero exit and `CommandTimeoutError` after `timeout`
    seconds, both with the tail of stderr in the message. Any exception that reaches
    this function while it waits (e.g. one Prefect raises into the thread) kills the
    group and propagates unchanged. `on_line(stream, line)` sees each output line as it
    arrives ("stdout" or "stderr").
    """
    start = time.monotonic()
    proc = subprocess.Popen(
        list(cmd),
        cwd=cwd,
        env=None if env is None else dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # pgid == proc.pid, and no terminal signals from ours
    )
    tails = {"stdout": deque(maxlen=TAIL_LINES), "stderr": deque(maxlen=TAIL_LINES)}
    readers = [
        _start_reader(proc.stdout, "stdout", tails["stdout"], on_line),
        _start_reader(proc.stderr, "stderr", tails["stderr"], on_line),
    ]
    timed_out = False
    try:
        timed_out = not _wait(proc, start, timeout)
    finally:
        # Also after a clean exit: a worker that outlived dvc must not keep running.
        if not kill_process_group(proc.pid, grace_s=grace_s):
            log.warning("processes of group %d (`%s`) survived SIGKILL", proc.pid, _quote(cmd))
        proc.wait()
        for reader in readers:
            reader.join(timeout=grace_s)
    result = CommandResult(
        cmd=tuple(cmd),
        returncode=proc.returncode,
        stdout="\n".join(tails["stdout"]),
        stderr="\n".join(tails["stderr"]),
        duration_s=time.monotonic() - start,
    )
    _check(result, cwd, timeout if timed_out else None)
    return result


def _check(result: CommandResult, cwd: str | Path, timed_out_after: float | None) -> None:
    """Raise `CommandTimeoutError` or `CommandError` with the tail of stderr, if due."""
    if timed_out_after is not None:
        raise CommandTimeoutError(
            f"`{_quote(result.cmd)}` in {cwd} timed out after {timed_out_after}s; its process "
            f"group was killed. Last stderr lines:\n{_last(result.stderr)}",
            result,
        )
    if result.returncode != 0:
        raise CommandError(
            f"`{_quote(result.cmd)}` in {cwd} failed with exit code {result.returncode}. "
            f"Last stderr lines:\n{_last(result.stderr)}",
            result,
        )


def kill_process_group(pgid: int, *, grace_s: float = DEFAULT_GRACE_S) -> bool:
    """SIGTERM the group, SIGKILL it after `grace_s`; True if nothing of it was left running."""
    if not group_alive(pgid):
        return True
    _signal_group(pgid, signal.SIGTERM)
    if _wait_group_gone(pgid, grace_s):
        return True
    _signal_group(pgid, signal.SIGKILL)
    return _wait_group_gone(pgid, 5.0)


def group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is in group `pgid`.

    Zombies are left out: an orphaned grandchild that was killed may wait a while for
    PID 1 to reap it, but it no longer runs or holds anything.
    """
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # not Linux: a signal 0 probe counts zombies too
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc_root.iterdir():
        if entry.name.isdigit():
            found = _pgid_and_state(entry)
            if found is not None and found[0] == pgid and found[1] not in "ZX":
                return True
    return False


def _pgid_and_state(proc_dir: Path) -> tuple[int, str] | None:
    try:
        stat = (proc_dir / "stat").read_text()
    except OSError:  # the process exited while we looked
        return None
    # The command name (field 2) may hold spaces and parentheses; split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[2]), fields[0]


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_group_gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while group_alive(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _wait(proc: subprocess.Popen, start: float, timeout: float | None) -> bool:
    """Wait for `proc` in short slices (so exceptions raised into this thread land
    promptly); False if `timeout` passed first."""
    while True:
        try:
            proc.wait(timeout=_POLL_S)
            return True
        except subprocess.TimeoutExpired:
            if timeout is not None and time.monotonic() - start >= timeout:
                return False


def _start_reader(stream, name: str, tail: deque, on_line: LineCallback | None) -> threading.Thread:
    def pump() -> None:
        callback = on_line
        for line in stream:
            line = line.rstrip("\n")
            tail.append(line)
            if callback is not None:
                try:
                    callback(name, line)
                except Exception:
                    # Keep draining the pipe, or the command would block on a full pipe.
                    log.exception("output callback failed; %s is still collected", name)
                    callback = None
        stream.close()

    thread = threading.Thread(target=pump, name=f"{name}-reader", daemon=True)
    thread.start()
    return thread


def _last(text: str, num_lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-num_lines:]) or "(no stderr output)"


def _quote(cmd: Sequence[str]) -> str:
    return shlex.join(list(cmd))
