"""Chunks on every core: results in order, the input read only as far as needed, and a
worker that dies costs speed, not results."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from bertpretrain.data import parallel


def scaled(factor: int, chunk: list[int]) -> list[int]:
    return [factor * x for x in chunk]


def dies_in_a_worker(factor: int, chunk: list[int]) -> list[int]:
    if multiprocessing.parent_process() is not None and chunk[0] == 40:
        os._exit(1)  # as the OOM killer would end it
    return scaled(factor, chunk)


@pytest.fixture
def few_serial(monkeypatch):
    monkeypatch.setattr(parallel, "SERIAL_CHUNKS", 2)


def test_results_come_in_order_from_the_workers(few_serial):
    chunks = list(parallel.chunked(range(100), 7))
    assert list(parallel.imap(scaled, 3, chunks, processes=2)) == [scaled(3, c) for c in chunks]


def test_the_input_is_read_only_a_few_chunks_ahead(few_serial):
    pulled = []

    def chunks():
        for i in range(1000):
            pulled.append(i)
            yield [i]

    results = parallel.imap(scaled, 1, chunks(), processes=2)
    for _ in range(5):
        next(results)
    results.close()
    # 2 in this process, then at most IN_FLIGHT per worker queued before the 3rd result
    assert len(pulled) <= 2 + parallel.IN_FLIGHT * 2 + 3


def test_a_killed_worker_leaves_the_rest_to_this_process(few_serial, caplog):
    chunks = list(parallel.chunked(range(100), 10))
    results = list(parallel.imap(dies_in_a_worker, 2, chunks, processes=2))
    assert results == [scaled(2, c) for c in chunks]
    assert "worker processes failed" in caplog.text
