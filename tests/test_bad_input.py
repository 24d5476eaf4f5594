"""Bad input through the user's own commands: a mistyped `-S` override, a hand-edited
params.yaml, a dataset that vanishes after `prepare`, a disk that fills while a checkpoint
is written. Each fails with a non-zero exit and one line that names what is wrong and
how to fix it, and no Python traceback.

The dvc cases share one tiny repository (module scope); each leaves it as it found it.
"""

from __future__ import annotations

import errno
import logging
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fmnist_data import write_tiny_fmnist
from test_pipeline import DVC_TIMEOUT_S, TINY, git, make_repo, tool_env
from tiny import tiny_config

from jepa import checkpoint as ckpt
from jepa.io import DiskFullError
from jepa.prepare import DatasetChangedError, build_manifest, verify_manifest, write_manifest
from jepa.runs import CHECKPOINT_NAME, parse_step_log
from jepa.storage import dvc_executable
from jepa.train import pretrain


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tiny_fmnist: Path) -> Path:
    base = tmp_path_factory.mktemp("bad-input")
    return make_repo(base / "repo", [*TINY, f"root_path={tiny_fmnist}", f"run_store={base}/runs"])


@pytest.fixture
def clean_repo(repo: Path) -> Iterator[Path]:
    """The shared repository, put back to its commit afterwards (params.yaml, outputs)."""
    yield repo
    git(repo, "checkout", "-q", "--", ".")
    git(repo, "clean", "-q", "-fdx", "-e", ".dvc")


def failing_dvc(repo: Path, *args: str) -> str:
    """Run `dvc args`, which must fail without a traceback; its stdout and stderr."""
    proc = subprocess.run(
        [dvc_executable(), *args], cwd=repo, env=tool_env(), capture_output=True, text=True,
        timeout=DVC_TIMEOUT_S,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    return output


def one_line(output: str, *words: str) -> str:
    """The one line of `output` holding every one of `words`."""
    lines = [line for line in output.splitlines() if all(word in line for word in words)]
    assert len(lines) == 1, (words, output)
    return lines[0]


# ---- `dvc exp run -S ...` -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, words",
    [
        # The stages check the composed params.yaml (jepa.config.load_params).
        ("lr=abc", ["params.yaml", "lr expects float", "'abc'"]),
        ("epochs=-1", ["params.yaml", "epochs must be >= 1", "-1"]),
        # Hydra refuses a key that no config group defines, naming it ...
        ("no_such_key=1", ["Could not override 'no_such_key'"]),
        # ... and if its "+no_such_key" hint is followed, the stage refuses the key.
        ("+no_such_key=1", ["params.yaml", "unknown config key(s) 'no_such_key'", "--help"]),
        ("model=vit_nonexistent", ["Could not find 'model/vit_nonexistent'"]),
    ],
)
def test_a_bad_override_fails_in_one_line(clean_repo: Path, override: str, words: list[str]):
    output = failing_dvc(clean_repo, "exp", "run", "-S", override)
    one_line(output, *words)
    if override.startswith("model="):  # Hydra's line is followed by the choices
        assert "vit_small" in output.split(words[0])[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "key, value, words",
    [
        ("batch_size", "sixty-four", ["params.yaml", "batch_size expects int", "'sixty-four'"]),
    ],
)
def test_a_hand_edited_params_file_of_the_wrong_type_fails_in_one_line(
    clean_repo: Path, key: str, value: str, words: list[str]
) -> None:
    params = clean_repo / "params.yaml"
    edited, count = re.subn(rf"(?m)^{key}: .*$", f"{key}: {value}", params.read_text())
    assert count == 1
    params.write_text(edited)
    one_line(failing_dvc(clean_repo, "repro"), *words)


# ---- the dataset vanishes or changes after `prepare` --------------------------------------------


@pytest.mark.slow
def test_data_that_vanishes_after_prepare_fails_naming_it(
    clean_repo: Path, tiny_fmnist: Path, tmp_path: Path
) -> None:
    from test_pipeline import dvc

    data = shutil.copytree(tiny_fmnist, tmp_path / "data")
    params = clean_repo / "params.yaml"
    params.write_text(re.sub(r"(?m)^root_path: .*$", f"root_path: {data}", params.read_text()))
    dvc(clean_repo, "repro", "prepare")
    shutil.move(data, tmp_path / "moved")

    # The pretrain stage, run on its own, checks the data against prepare's manifest first.
    output = failing_dvc(clean_repo, "repro", "--single-item", "pretrain")
    line = one_line(output, "train data that data/manifest.json describes is gone")
    assert str(data) in line and "restore the data, or rerun `dvc repro`" in line
    assert "rank 0 exited with 2" in output  # the launcher's one line, not its traceback

    # The whole pipeline: prepare, which always runs, finds nothing and says how to get it.
    output = failing_dvc(clean_repo, "repro")
    line = one_line(output, "error: Fashion-MNIST files", "not found", str(data))
    assert "set root_path" in line and "download: true" in line
    assert "Running stage 'pretrain'" not in output


def test_data_that_changed_since_the_manifest_is_refused(tiny_fmnist: Path, tmp_path: Path):
    data = shutil.copytree(tiny_fmnist, tmp_path / "data")
    cfg = tiny_config(root_path=str(data))
    manifest = write_manifest(build_manifest(cfg), tmp_path / "manifest.json")
    verify_manifest(cfg, manifest)  # the data as described: no error

    write_tiny_fmnist(data, seed=1)  # other images under the same names
    with pytest.raises(DatasetChangedError) as info:
        verify_manifest(cfg, manifest)
    message = str(info.value)
    assert f"the train data under {data} changed since {manifest}" in message
    assert "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz" in message
    assert "restore the data, or rerun `dvc repro`" in message

    with pytest.raises(DatasetChangedError, match="describes dataset 'fashion_mnist'.*'cifar10'"):
        verify_manifest(cfg.replace(dataset="cifar10"), manifest)


# ---- a full disk while a checkpoint is written ----------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on a tmpfs of its own, with room for one tiny checkpoint (1.9 MB)
    but not for a second beside it; skips where mounting is not allowed."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:  # lazy: the failed torch.save's file, unlinked, is closed when collected
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fail_save_of_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """`torch.save` of the checkpoint of `step` writes a little, then hits ENOSPC."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == step:
            Path(f).write_bytes(b"PK\x03\x04 the start of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.slow
@pytest.mark.parametrize("disk", ["ENOSPC", "tmpfs"])
def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_says_what_to_free(
    disk: str, request: pytest.FixtureRequest, tmp_path: Path, tiny_fmnist: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """ENOSPC: an OSError from the writer. tmpfs: a real full disk, which `torch.save`
    reports as a RuntimeError without an errno."""
    # 8 steps; checkpoints at the end of each of the two epochs (steps 4 and 8).
    cfg = tiny_config(
        root_path=str(tiny_fmnist), output_dir=str(tmp_path / "run"), epochs=2,
        checkpoint_every=100,
    )  # fmt: skip
    if disk == "tmpfs":
        state_dir = request.getfixturevalue("small_tmpfs")
        free = shutil.disk_usage(state_dir).free
    else:
        state_dir = tmp_path / "state"
        fail_save_of_step(monkeypatch, 8)
    with pytest.raises(DiskFullError) as info:
        pretrain(cfg, state_dir=state_dir)
    monkeypatch.undo()

    latest = state_dir / CHECKPOINT_NAME
    state = ckpt.load_checkpoint(latest, cfg=cfg)
    assert state["step"] == 4
    size = ckpt.tensor_bytes(state)  # what the message says the checkpoint needs
    if disk == "tmpfs":
        assert size < free < 2 * size
    message = str(info.value)
    assert message.startswith("checkpoint of step 8 not saved (a rerun resumes from the last")
    assert f"no space left on the device of {state_dir.resolve()}" in message
    assert f"writing {CHECKPOINT_NAME} needs" in message and f"({size} bytes)" in message
    assert "Free space there" in message and "\n" not in message
    assert sorted(p.name for p in state_dir.iterdir()) == [".lock", CHECKPOINT_NAME]  # no temp

    if disk == "ENOSPC":  # space freed: the rerun resumes from the step-4 checkpoint
        with caplog.at_level(logging.INFO, logger="jepa.train"):
            assert pretrain(cfg, state_dir=state_dir)["steps"] == 8
        assert f"resumed from {latest} at step 4" in caplog.text
        rows = parse_step_log((tmp_path / "run" / "metrics.jsonl").read_text())
        assert [row["step"] for row in rows if "loss" in row] == list(range(1, 9))
