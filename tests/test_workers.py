"""workers.prefetched: a producer thread ahead of its consumer."""

import threading
import time

import pytest

from ntulm.workers import prefetched


def test_prefetched_yields_the_items_in_order_from_another_thread():
    seen = []

    def items():
        for i in range(50):
            seen.append(threading.current_thread().name)
            yield i

    assert list(prefetched(items(), depth=2, name="ahead")) == list(range(50))
    assert set(seen) == {"ahead"}
    assert list(prefetched(iter([]))) == []


def test_prefetched_runs_ahead_of_the_consumer():
    made = []

    def items():
        for i in range(5):
            made.append(i)
            yield i

    it = prefetched(items(), depth=2)
    assert next(it) == 0
    deadline = time.monotonic() + 5
    while len(made) < 4 and time.monotonic() < deadline:  # 1 taken, 2 queued, 1 waiting to put
        time.sleep(0.01)
    assert made == [0, 1, 2, 3]
    assert list(it) == [1, 2, 3, 4]


def test_prefetched_raises_the_producers_error_in_the_consumer():
    def items():
        yield 1
        raise ValueError("line 2: bad record")

    it = prefetched(items())
    assert next(it) == 1
    with pytest.raises(ValueError, match="line 2: bad record"):
        next(it)


def test_prefetched_stops_and_closes_the_source_when_the_consumer_stops():
    state = {"closed": False, "made": 0}

    def items():
        try:
            for i in range(10_000):
                state["made"] += 1
                yield i
        finally:
            state["closed"] = True

    threads = threading.active_count()
    for k, _ in enumerate(prefetched(items(), depth=1)):
        if k == 3:
            break
    assert state["closed"] and state["made"] < 10
    assert threading.active_count() == threads  # the producer thread has ended
