"""tools.bench.regroup: adaptive's journal listener timed on connector-like records."""

from __future__ import annotations

import pytest

from kvfs.journal import RecordKind
from kvfs.policy.regroup import Regrouper
from tools.bench import regroup
from tools.bench.engine_records import interleaved


def test_its_records_regroup_into_the_requests_that_made_them() -> None:
    records = regroup.records_of(3000, seed=1)
    requests: dict[float, list[int]] = {}
    for r in records:
        requests.setdefault(r.time, []).append(r.chain_pos)
        assert (r.kind is RecordKind.STORE) == (r.size == 1)
    assert all(positions == list(range(len(positions))) for positions in requests.values())
    for width in (1, 8):
        out: list[list[int]] = []
        grouper = Regrouper(out.append)
        grouper.add(interleaved(records, width))
        grouper.flush()
        assert [len(r) for r in out] == [len(p) for p in requests.values()]


def test_it_prints_the_listener_beside_the_regrouping_alone(capsys: pytest.CaptureFixture[str]) -> None:
    regroup.main(["--records", "2000", "--runs", "1", "--tier-blocks", "1000", "--interleave", "1,4"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and "regrouping alone" in out[0] and "4 requests interleaved" in out[2]
    assert "1,000-block tier" in out[1] and "x alone)" in out[1]
