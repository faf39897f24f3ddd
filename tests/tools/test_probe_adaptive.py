"""tools.probe_adaptive: its `plain` variant is the shipped `adaptive`; `align-fifo` acts where S3-FIFO orders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvfs.replay import unique_blocks
from kvfs.replay.chooser import FIFO, simulate_adaptive
from kvfs.replay.memory import _Block
from tools.probe_adaptive import _first_then, main, simulate
from tools.replay_suite import main as suite_main
from tools.tracegen import generate


def _cell() -> tuple[list[list[int]], int, int]:
    trace = [list(r.hash_ids) for r in generate("rag", requests=500, seed=5)]
    capacity = int(unique_blocks(trace) * 0.02)  # 131 blocks: exact shadows, S3-FIFO orders for a while
    return trace, capacity, max(1, capacity // 100)


def test_plain_is_the_shipped_adaptive_request_for_request() -> None:
    trace, capacity, slack = _cell()
    assert (
        simulate(trace, capacity, slack, "plain").per_request
        == simulate_adaptive(trace, capacity, slack).per_request
    )


def test_align_fifo_acts_where_s3fifo_orders() -> None:
    trace, capacity, slack = _cell()
    choices: list[str] = []
    simulate_adaptive(trace, capacity, slack, choices=choices)
    assert FIFO in choices  # the cell exercises the variant
    plain = simulate(trace, capacity, slack, "plain")
    aligned = simulate(trace, capacity, slack, "align-fifo")
    assert aligned.per_request[: choices.index(FIFO) + 1] == plain.per_request[: choices.index(FIFO) + 1]
    assert aligned.hit_blocks != plain.hit_blocks
    with pytest.raises(ValueError, match="unknown variant"):
        simulate(trace, capacity, slack, "nope")


def test_align_fifo_after_waits_that_many_capacities_of_s3fifo_ordering() -> None:
    trace, capacity, slack = _cell()
    plain = simulate(trace, capacity, slack, "plain").per_request
    at_once = simulate(trace, capacity, slack, "align-fifo").per_request
    assert simulate(trace, capacity, slack, "align-fifo", after=0.0).per_request == at_once
    # Longer than the trace: never aligns, the shipped order.
    assert simulate(trace, capacity, slack, "align-fifo", after=1e9).per_request == plain
    later = simulate(trace, capacity, slack, "align-fifo", after=4.0).per_request
    assert later not in (plain, at_once)


def test_first_then_yields_the_lacking_blocks_first_then_the_rest_once_and_closes_the_order() -> None:
    class Tier:
        orphans = {3: None}
        superseded: dict[int, None] = {}

    blocks = {h: _Block(h, float(h), 0, None) for h in range(1, 6)}
    blocks[2].hits = 5
    closed: list[bool] = []

    def base() -> Iterator[tuple[_Block, int | None]]:
        try:
            for h in (1, 2, 4, 5):
                yield blocks[h], 0
        finally:
            closed.append(True)

    got = list(_first_then([blocks[3], blocks[2]], base(), Tier()))  # type: ignore[arg-type]
    # An orphan leaves no class (None); a live block its class; the base order's blocks only once.
    assert [(b.block, cls) for b, cls in got] == [(3, None), (2, 2), (1, 0), (4, 0), (5, 0)]
    assert closed == [True]


def test_main_sets_the_variant_beside_the_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "suite.json"
    args = ["--requests", "120", "--seeds", "3"]
    assert suite_main([*args, "--capacities", "0.05", "--json", str(suite)]) == 0
    capsys.readouterr()
    assert main([str(suite), *args, "--variant", "plain"]) == 0
    printed = capsys.readouterr()
    rows = [line for line in printed.out.splitlines() if "->" in line]
    assert len(rows) == 6 and all(a == b for a, b in (r.split(": ")[1].split(" -> ") for r in rows))
    shipped, plain = printed.err.strip().splitlines()
    assert shipped.removeprefix("shipped: ") == plain.removeprefix("plain: ")
    with pytest.raises(SystemExit):
        main([str(suite), "--requests", "120", "--seeds", "4"])  # other traces than the suite's
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main([str(suite), "--requests", "119", "--seeds", "3"])  # the same names, other requests
    assert "in the suite" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, "", "{not json", '[{"trace": "chat-3"}]', '{"a": 1}'])
def test_main_refuses_a_missing_or_unreadable_suite_with_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    suite = tmp_path / "suite.json"
    if content is not None:
        suite.write_text(content)
    with pytest.raises(SystemExit) as exc:
        main([str(suite), "--requests", "120", "--seeds", "3"])
    assert exc.value.code == 2
    assert f"{suite}: not a replay suite's JSON" in capsys.readouterr().err
