"""The evictor's observable surface in-process: JSON log lines carry their fields as keys (a real eviction pass
over real block files), and /metrics has no `_created` series."""

from __future__ import annotations

import io
import json
import logging
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from evictor_helpers import one_namespace
from prometheus_client import REGISTRY

from evictor.http import StatusServer
from evictor.logs import JsonFormatter
from evictor.settings import load_settings
from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.catalog import BlockRow, Catalog
from kvfs.layout import BlockKey
from kvfs.policy import DEFAULT_POLICY
from kvfs.replay.chooser import CANDIDATES


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Records of the `kvfs` loggers, formatted by the evictor's JSON formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("kvfs")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_put_extra_fields_as_keys(json_log: io.StringIO) -> None:
    logging.getLogger("kvfs.test").warning(
        "refused %d", 2, extra={"event": "refused", "files": 2, "bytes": 10, "reason": "symlink"}
    )
    (line,) = lines(json_log)
    assert line["msg"] == "refused 2" and line["level"] == "warning"
    assert (line["event"], line["files"], line["bytes"], line["reason"]) == ("refused", 2, 10, "symlink")
    assert not {"args", "levelno", "pathname", "msecs"} & line.keys()  # LogRecord internals stay out


def test_a_pass_logs_what_it_evicted_as_fields(
    tmp_path: Path, json_log: io.StringIO, standalone_runner: Callable[[Any, Any], Any]
) -> None:
    root = tmp_path / "root"
    ns, fp = one_namespace(root)
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", root=root)
    old = time.time() - 3600
    size = 0
    for n in range(10):
        key = BlockKey(ns, 0, 0, f"{n:032x}", "kvfs")
        assert store_block(root / key.relpath(), b"x" * 1000, BlockIdentity(fp, bytes([n]))).outcome is (
            StoreOutcome.STORED
        )
        size = os.stat(root / key.relpath()).st_size
        catalog.upsert_blocks([BlockRow(key, size, old + n, old + n)])
    settings = load_settings(
        {
            "root": str(root),
            "catalog": f"sqlite:///{tmp_path / 'catalog.db'}",
            "max_bytes": str(size * 10),
            "high_watermark": "50",
            "low_watermark": "40",
            "min_age": "1s",
        },
        environ={},
    )
    runner = standalone_runner(settings, catalog)
    try:
        report = runner.run_pass()
    finally:
        catalog.close()
    assert report.outcome == "evicted" and report.result is not None
    assert DEFAULT_POLICY == "adaptive"
    (line,) = [x for x in lines(json_log) if x.get("event") == "evicted"]
    assert line["files"] == report.result.deleted_files == 6
    assert line["bytes"] == report.result.deleted_bytes == 6 * size
    assert line["reasons"] == {"capacity": {"files": 6, "bytes": 6 * size}}
    assert line["namespaces"] == {ns: {"files": 6, "bytes": 6 * size}}
    assert line["usage_bytes"] == 10 * size and line["errors"] == 0 and line["refused"] == 0
    # The default policy (adaptive) says which of its orders ranked the victims, in the line and as a gauge.
    assert line["order"] == runner.policy.current_order() and line["msg"].endswith(f"; order {line['order']}")
    orders = {o: REGISTRY.get_sample_value("kvfs_policy_order", {"order": o}) for o in CANDIDATES}
    assert orders == {o: 1.0 if o == line["order"] else 0.0 for o in CANDIDATES}


def test_metrics_endpoint_has_no_created_series() -> None:
    import kvfs.metrics  # noqa: F401 - the core's counters, as in the service

    server = StatusServer(
        "127.0.0.1", 0, health=lambda: (True, ""), ready=lambda: (True, ""), status=lambda: {}
    )
    server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
    finally:
        server.stop()
    assert "kvfs_evicted_files_total" in text and "kvfs_evictor_leader " in text
    assert [line for line in text.splitlines() if "_created" in line] == []
