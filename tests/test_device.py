"""`jepa.device`'s thread shares: slices of a batch run at once, each on its own threads."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from jepa.device import ThreadShares, cpu_thread_shares, row_slices


@pytest.mark.parametrize(("size", "parts"), [(64, 2), (5, 2), (7, 3), (2, 4), (1, 1)])
def test_row_slices_cover_the_rows_in_order_without_empty_slices(size, parts):
    slices = row_slices(size, parts)
    rows = [i for s in slices for i in range(s.start, s.stop)]
    assert rows == list(range(size))
    assert len(slices) == min(size, parts)
    lengths = [s.stop - s.start for s in slices]
    assert max(lengths) - min(lengths) <= 1


def test_each_worker_runs_on_its_share_and_the_caller_keeps_its_threads():
    before = torch.get_num_threads()
    with ThreadShares(2, 1) as shares:
        seen = shares.run(lambda: (threading.get_ident(), torch.get_num_threads()), [(), ()])
    assert {threads for _, threads in seen} == {1}
    assert threading.get_ident() not in {ident for ident, _ in seen}
    assert torch.get_num_threads() == before


def test_the_calls_run_at_once():
    barrier = threading.Barrier(2, timeout=10)  # each call waits for the other to start
    with ThreadShares(2, 1) as shares:
        assert shares.run(lambda i: (barrier.wait(), i)[1], [(0,), (1,)]) == [0, 1]


def test_an_error_is_raised_after_every_call_has_finished():
    finished = []

    def call(i):
        if i == 0:
            raise ValueError("slice 0 failed")
        time.sleep(0.2)
        finished.append(i)

    with ThreadShares(2, 1) as shares, pytest.raises(ValueError, match="slice 0 failed"):
        shares.run(call, [(0,), (1,)])
    assert finished == [1]


def test_no_shares_off_the_cpu_for_one_part_or_too_few_threads():
    assert cpu_thread_shares(1, torch.device("cpu")) is None
    assert cpu_thread_shares(2, torch.device("cuda")) is None
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cpu_thread_shares(2, torch.device("cpu")) is None
    finally:
        torch.set_num_threads(before)
