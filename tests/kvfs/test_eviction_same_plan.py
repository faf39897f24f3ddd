"""`kvfs gc` and the evictor enforce the same limits (issue 19): one catalog, one settings file, both plan the
same victims.  Before, gc applied quotas stored in the catalog and the evictor only its settings' quotas."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_gc import make_namespace, write_block

from evictor.passes import capacity_target
from evictor.settings import load_settings
from kvfs.catalog import BlockRow, Catalog
from kvfs.cli import main
from kvfs.eviction import limits_for_command, limits_from_settings, plan_pass

NOW = time.time()


@pytest.fixture
def fleet(tmp_path: Path, catalog_url: str):
    """Three namespaces of real files with distinct recencies: one to retire, one over its quota, one big."""
    root = tmp_path / "root"
    root.mkdir()
    catalog = Catalog.open(catalog_url, root=root)
    names = {}
    n = 0
    for model, count in (("org/big", 12), ("org/quota", 6), ("org/retired", 3)):
        ns, fp = make_namespace(root, model)
        names[model] = ns
        for i in range(count):
            n += 1
            key, size = write_block(root, ns, fp, n)
            # Ages from 3 days to ~1 minute: some beyond the TTL, all beyond min_age.
            age = 3 * 86400 if i == 0 else 3600 * (count - i) + 60 * n
            catalog.upsert_blocks([BlockRow(key, size, NOW - age, NOW - age, chain_pos=i)])
    yield root, catalog, names, size
    catalog.close()


def test_gc_and_the_evictor_plan_the_same_victims(
    tmp_path: Path, catalog_url: str, fleet, standalone_runner: Callable[[Any, Any], Any]
) -> None:
    root, catalog, names, size = fleet
    config = tmp_path / "evictor.yaml"
    config.write_text(
        "\n".join(
            [
                f"root: {root}",
                f"catalog: {catalog_url}",
                f"max_bytes: {14 * size}",
                "high_watermark: 50",
                "low_watermark: 40",
                "ttl: 2d",
                "min_age: 30s",
                "policy: lru",
                "dry_run: true",
                f"quotas: {{{names['org/quota']}: {3 * size}}}",
                f"retire: [{names['org/retired']}]",
            ]
        )
    )
    settings = load_settings(environ={}, config=config)

    runner = standalone_runner(settings, catalog)
    report = runner.run_pass()
    assert report.result is not None and report.result.dry_run
    target = capacity_target(settings, report.capacity)  # the evictor's own target for this usage
    assert target is not None
    evictor_view = report.result.to_json()

    out = CliRunner().invoke(
        main,
        ["--root", str(root), "--catalog", catalog_url, "gc", "--config", str(config), "--dry-run", "--json",
         "--no-scan", "--max-bytes", str(target), "--ttl", "2d", "--min-age", "30s", "--policy", "lru"],
        env={"KVFS_CONFIG": None},
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    gc_view = json.loads(out.stdout)
    # Every reason is there, and both passes chose the same files and bytes for each reason and namespace.
    assert set(gc_view["by_reason"]) == {"retired", "ttl", "quota", "capacity"}
    assert gc_view["by_reason"] == evictor_view["by_reason"]
    assert gc_view["by_namespace"] == evictor_view["by_namespace"]

    # And block for block: the limits each assembles (the evictor from its settings, gc from the settings and
    # its flags) are the same, so they plan the same victims.
    evictor_limits = limits_from_settings(settings, max_bytes=target)
    gc_limits = limits_for_command(settings, max_bytes=target, ttl=2 * 86400, min_age=30.0, temp_grace=None)
    assert gc_limits == dataclasses.replace(evictor_limits, temp_grace=None)
    a = plan_pass(catalog, evictor_limits, now=NOW, policy="lru")
    b = plan_pass(catalog, gc_limits, now=NOW, policy="lru")
    assert [(v.key, v.reason) for v in a.victims] == [(v.key, v.reason) for v in b.victims]
