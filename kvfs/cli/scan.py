"""`kvfs scan`: reconcile the catalog with the tree."""

from __future__ import annotations

import sys
from typing import Any

import click

from kvfs.cli.app import KvfsContext, pass_state
from kvfs.cli.output import emit_json, size, table
from kvfs.eviction.ingest import IngestResult, ingest_journals
from kvfs.scanstate import record_scan


def run_scan(state: KvfsContext, *, quiet: bool) -> Any:
    """Scan the root into the catalog (progress bar only on a terminal) and remember its temp orphans."""
    from kvfs.scan import scan_tree

    root = state.require_root()
    catalog = state.catalog()
    result = scan_tree(root, catalog, progress=not quiet and sys.stderr.isatty())
    record_scan(catalog, result)
    return result


# Journal segments are left in place by default: an evictor keeping its own catalog may not have read them yet.
remove_journals_option = click.option(
    "--remove-journals",
    is_flag=True,
    help="Also delete journal segments that are closed and fully applied to this catalog (only when no "
    "evictor with another catalog reads them).",
)


def ingest_pending(state: KvfsContext, *, remove: bool = False) -> IngestResult:
    """Apply pending journal records to the catalog; `remove` also deletes fully consumed closed segments."""
    return ingest_journals(state.require_root(), state.catalog(), remove_finished=remove)


def scan_json(result: Any) -> dict[str, Any]:
    return {
        "files": result.files,
        "bytes": result.bytes,
        "blocks_added": result.blocks_added,
        "blocks_removed": result.blocks_removed,
        "not_blocks": result.not_blocks,
        "errors": result.errors,
        "temp_files": {"files": len(result.temp_files), "bytes": sum(o.size for o in result.temp_files)},
        "duration_s": round(result.duration_s, 3),
    }


@click.command()
@remove_journals_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def scan(state: KvfsContext, remove_journals: bool, as_json: bool) -> None:
    """Walk the root and reconcile the catalog: add new block files, drop rows whose files are gone.

    Files no journal has reported get last access = max(atime, mtime); pending journal records are applied
    after the walk.  Temp files (`*.tmp`) are counted as orphans for `kvfs du` and
    `kvfs gc --orphans-older-than`.
    """
    result = run_scan(state, quiet=as_json)
    data = scan_json(result)
    ingested = ingest_pending(state, remove=remove_journals)
    data["journal_records_ingested"] = ingested.records
    data["journal_segments_removed"] = ingested.segments_removed
    if as_json:
        emit_json(data)
        return
    rows = [
        ("block files", data["files"], size(data["bytes"])),
        ("added to catalog", data["blocks_added"], ""),
        ("removed (gone)", data["blocks_removed"], ""),
        ("not blocks", data["not_blocks"], ""),
        ("unreadable entries", data["errors"], ""),
        ("temp files", data["temp_files"]["files"], size(data["temp_files"]["bytes"])),
        ("journal records applied", data["journal_records_ingested"], ""),
    ]
    click.echo(table(("", "files", "bytes"), rows, right=(1, 2)))
    rate = data["files"] / result.duration_s if result.duration_s > 0 else 0.0
    click.echo(f"scanned {state.root} in {result.duration_s:.2f}s ({rate:,.0f} files/s)")
