"""Atomic writes: the destination holds its old bytes or all the new ones, and no temp is left."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jepa.io import atomic_output, atomic_write, write_json, write_text


def test_atomic_write_creates_parents_and_returns_the_path(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.bin"
    assert atomic_write(path, lambda tmp: tmp.write_bytes(b"new")) == path
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["out.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, error) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"ne")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_temp_file_is_hidden_beside_the_target_with_its_suffix(tmp_path: Path) -> None:
    seen = []
    with atomic_output(tmp_path / "params.yaml") as tmp:
        seen.append(tmp)
        assert tmp.is_file() and tmp.read_bytes() == b""
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.suffix == ".yaml"
    assert not tmp.exists() and (tmp_path / "params.yaml").read_bytes() == b""


def test_write_json_is_sorted_indented_and_reads_numpy(tmp_path: Path) -> None:
    data = {"b": np.float32(0.5), "a": (1, np.int64(2)), "p": Path("x/y"), "v": np.arange(2)}
    path = write_json(tmp_path / "m.json", data)
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert json.loads(text) == {"a": [1, 2], "b": 0.5, "p": "x/y", "v": [0, 1]}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        write_json(path, {"x": object()})
    assert json.loads(path.read_text())["b"] == 0.5  # the failed write left the file as it was


def test_write_text_is_utf8(tmp_path: Path) -> None:
    path = write_text(tmp_path / "r.md", "accuracy ≥ 80 %\n")
    assert path.read_bytes() == "accuracy ≥ 80 %\n".encode()
