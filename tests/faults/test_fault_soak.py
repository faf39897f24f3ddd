"""The soak's CI version (`make soak` runs it for 10 minutes): writers SIGKILLed at random instants, readers
verifying every payload they load, an evictor SIGKILLed and restarted, bait outside the root."""

from __future__ import annotations

import argparse

import pytest
from soak import broken, run

pytestmark = pytest.mark.slow


def test_short_soak_keeps_every_invariant(tmp_path) -> None:  # type: ignore[no-untyped-def]
    args = argparse.Namespace(
        duration=20.0,
        writers=3,
        readers=2,
        cap_blocks=300,
        universe=3000,
        evictor_kill_every=10.0,
        seed=7,
        dir=str(tmp_path),
        keep=False,
    )
    result = run(args)
    assert broken(result) == [], result
    assert result["writer_kills"] >= 3 and result["evictor_kills"] >= 1, result
    assert result["verified_hits"] > 100, result  # the readers really read
    # Bounded time over the cap: the writers fill the cap in ~3 s; the evictor (restarted once) keeps up.
    assert result["longest_over_cap_s"] < 10.0, result
