"""Journal records regrouped into requests for adaptive's shadows (kvfs.policy.regroup)."""

from __future__ import annotations

import itertools

from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey
from kvfs.policy.regroup import Regrouper

NS = "org_model_0123456789ab"


def key(n: int, ns: str = NS, group: int = 0) -> BlockKey:
    return BlockKey(ns, None, group, f"{n:016x}{n:016x}", "kvfs")


_clock = itertools.count(1)


def store(n: int, pos: int, parent: int | None = None, ns: str = NS, t: float | None = None) -> JournalRecord:
    """A STORE at `t`; by default a time of its own, as a writer that stamps each record apart."""
    return JournalRecord(
        RecordKind.STORE,
        key(n, ns),
        float(next(_clock)) if t is None else t,
        1,
        pos,
        None if parent is None else f"{parent:016x}" * 2,
    )


def access(n: int, pos: int = -1, t: float | None = None) -> JournalRecord:
    return JournalRecord(RecordKind.ACCESS, key(n), float(next(_clock)) if t is None else t, 0, pos)


def regroup(*batches: list[JournalRecord]) -> list[list[int]]:
    out: list[list[int]] = []
    grouper = Regrouper(out.append)
    for batch in batches:
        grouper.add(batch)
    grouper.flush()
    return out


def test_positions_split_requests_and_keys_are_the_hash_prefix() -> None:
    # Two requests sharing a prefix: the second starts at position 0 again.
    records = [access(1, 0), store(2, 1, 1), store(3, 2, 2), access(1, 0), access(2, 1), store(4, 2, 2)]
    assert regroup(records) == [[1, 2, 3], [1, 2, 4]]


def test_accesses_without_positions_continue_a_chain_until_a_key_repeats() -> None:
    # A writer that does not record an access's position: its hits, then its stores, form one request; the
    # same prefix sent again starts the next.
    records = [access(1), access(2), store(3, 2, 2), access(1), access(2)]
    assert regroup(records) == [[1, 2, 3], [1, 2]]


def test_a_store_that_does_not_follow_starts_a_request() -> None:
    # Position 5 after a run of two, with another parent: the rest of a chain journaled elsewhere.
    records = [store(1, 0), store(2, 1, 1), store(9, 5, 8), store(10, 6, 9)]
    assert regroup(records) == [[1, 2], [9, 10]]
    # ... but a store whose parent is the run's last block continues it, whatever its position says.
    assert regroup([store(1, 0), store(2, 7, 1)]) == [[1, 2]]


def test_a_request_split_across_batches_is_one_and_flush_hands_it_on() -> None:
    out: list[list[int]] = []
    grouper = Regrouper(out.append)
    grouper.add([store(1, 0), store(2, 1, 1)])
    assert out == []  # still open: the next batch may continue it
    grouper.add([store(3, 2, 2)])
    grouper.flush()
    assert out == [[1, 2, 3]]
    grouper.flush()
    assert out == [[1, 2, 3]]


def test_namespaces_and_groups_get_their_own_key_space() -> None:
    grouper = Regrouper(lambda _req: None)
    a, b, c = grouper.key(key(5)), grouper.key(key(5, "org_other_0123456789ab")), grouper.key(key(5, group=1))
    assert len({a, b, c}) == 3
    assert a == 5  # the first space seen is 0: the in-memory replay's keys
    assert b & ((1 << 64) - 1) == c & ((1 << 64) - 1) == 5  # the sample reads the same 64 bits


def test_records_with_a_requests_time_are_one_request_whatever_their_order() -> None:
    """The connector stamps a request's records with its time: concurrent requests interleave, stores finish in
    any order and come from another writer than the accesses; each request still reaches the shadows whole, in
    chain order, and a block it loads again (a preemption) counts once."""
    a = [access(1, 0, t=10.0), store(2, 1, 1, t=10.0), store(3, 2, 2, t=10.0)]
    b = [access(1, 0, t=11.0), store(4, 1, 1, t=11.0), store(5, 2, 4, t=11.0), store(6, 3, 5, t=11.0)]
    interleaved = [b[0], a[2], b[3], a[0], b[2], a[1], b[1], access(1, 0, t=10.0)]
    assert regroup(interleaved) == [[1, 4, 5, 6], [1, 2, 3]]  # opened first, handed on first
    # Split over batches (the scheduler's and the worker's journals are ingested apart), still one.
    assert regroup(a[:1], b[:2], a[1:], b[2:]) == [[1, 2, 3], [1, 4, 5, 6]]


def test_open_requests_are_bounded() -> None:
    from kvfs.policy import regroup as module

    out: list[list[int]] = []
    grouper = Regrouper(out.append)
    grouper.add([store(n, 0, t=float(n)) for n in range(module.MAX_OPEN + 5)])
    assert [r[0] for r in out] == list(range(5))  # the oldest handed on as they are
    grouper.add([store(10_000, 3, 0, t=0.0)])  # a late record of a request handed on: a request of its own
    grouper.flush()
    assert len(out) == module.MAX_OPEN + 6 and out[-1] == [10_000]
