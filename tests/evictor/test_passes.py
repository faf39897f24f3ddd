"""The evictor's pass runner with a policy that learns from the journal (`adaptive`): it listens from start-up,
so records ingested before the first pass reach its shadows, and the pass saves its state."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evictor_helpers import one_namespace

from evictor.settings import load_settings
from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import Catalog, ghosts
from kvfs.journal import JournalRecord, RecordKind
from kvfs.layout import BlockKey
from kvfs.policy.adaptive import AdaptivePolicy


def test_adaptive_hears_the_journal_from_start_up(
    tmp_path: Path, standalone_runner: Callable[[Any, Any], Any]
) -> None:
    root = tmp_path / "root"
    ns, fp = one_namespace(root)
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = Catalog.open(url, root=root)
    keys = [BlockKey(ns, 0, 0, f"{n:016x}{n:016x}", "kvfs") for n in range(1, 11)]
    for n, key in enumerate(keys):
        assert store_block(root / key.relpath(), b"x" * 1000, BlockIdentity(fp, bytes([n]))).outcome is (
            StoreOutcome.STORED
        )
    size = os.stat(root / keys[0].relpath()).st_size
    settings = load_settings(
        {
            "root": str(root),
            "catalog": url,
            "max_bytes": str(size * 10),
            "high_watermark": "50",
            "low_watermark": "40",
            "min_age": "1s",
            "policy": "adaptive",
        },
        environ={},
    )
    runner = standalone_runner(settings, catalog)
    policy = runner.policy
    assert isinstance(policy, AdaptivePolicy)
    # The ingester's work between passes: two requests, one chain of ten blocks and its head read again.
    old = time.time() - 3600
    catalog.apply_journal(
        [JournalRecord(RecordKind.STORE, k, old, size, pos) for pos, k in enumerate(keys)], {}
    )
    catalog.apply_journal([JournalRecord(RecordKind.ACCESS, keys[0], old + 1, 0, 0)], {})
    try:
        report = runner.run_pass()
        assert report.outcome == "evicted" and report.result is not None
        # Both requests reached the shadows (kept until the pass sized them, then fed).
        assert policy.shadows.tiers and all(tier.served == 2 for tier in policy.shadows.tiers)
        _beta, extra, _span = ghosts.load(catalog, policy="adaptive")
        assert extra is not None and json.loads(extra)["blocks"] == 4
    finally:
        catalog.close()
