"""`kvfs du`: usage from the catalog (no crawling), by namespace, model, rank or last-access age."""

from __future__ import annotations

import time
from typing import Any

import click

from kvfs.cli.app import KvfsContext, pass_state
from kvfs.cli.output import age, emit_json, size, table
from kvfs.fsusage import fs_usage
from kvfs.scanstate import last_scan_orphans

# Last-access age buckets for `--by age`: (label, upper bound in seconds).
AGE_BUCKETS: tuple[tuple[str, float], ...] = (
    ("<1h", 3600.0),
    ("1h-1d", 86400.0),
    ("1d-7d", 7 * 86400.0),
    ("7d-30d", 30 * 86400.0),
    (">=30d", float("inf")),
)


def _group(
    key: dict[str, Any], files: int, nbytes: int, la_min: float | None, la_max: float | None
) -> dict[str, Any]:
    return {
        **key,
        "files": int(files),
        "bytes": int(nbytes or 0),
        "last_access_min": la_min,
        "last_access_max": la_max,
    }


def groups_by_model(namespaces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for ns in namespaces:
        model = ns["model"] or "?"
        g = merged.setdefault(model, _group({"model": model, "namespaces": 0}, 0, 0, None, None))
        g["namespaces"] += 1
        g["files"] += ns["files"]
        g["bytes"] += ns["bytes"]
        for k, pick in (("last_access_min", min), ("last_access_max", max)):
            if ns[k] is not None:
                g[k] = ns[k] if g[k] is None else pick(g[k], ns[k])
    return sorted(merged.values(), key=lambda g: -g["bytes"])


def groups_by_rank(state: KvfsContext) -> list[dict[str, Any]]:
    catalog = state.catalog(create=False)  # answers from the catalog alone: the root need not be mounted
    return [
        _group({"namespace": ns, "rank": rank}, u.files, u.bytes, u.last_access_min, u.last_access_max)
        for ns, rank, u in catalog.usage_by_rank()
    ]


def groups_by_age(state: KvfsContext, now: float) -> list[dict[str, Any]]:
    catalog = state.catalog(create=False)  # answers from the catalog alone: the root need not be mounted
    found = catalog.usage_by_age(now, [bound for _, bound in AGE_BUCKETS[:-1]])
    return [
        _group({"age": label}, u.files, u.bytes, u.last_access_min, u.last_access_max)
        for (label, _), u in zip(AGE_BUCKETS, found, strict=True)
    ]


def usage_json(state: KvfsContext, by: str, now: float) -> tuple[dict[str, Any], float | None]:
    """du's JSON (exactly `total_files`, `total_bytes`, `namespaces`, `temp_files` {`files`, `bytes`},
    `filesystem` (statvfs of the root, null when it cannot be read), plus `by` and `groups` for a grouping other
    than by namespace) and the time of the last scan (None: never)."""
    catalog = state.catalog(create=False)  # answers from the catalog alone: the root need not be mounted
    usage = catalog.usage()
    namespaces = [
        {
            "namespace": u.namespace,
            "model": u.model,
            "files": u.files,
            "bytes": u.bytes,
            "last_access_min": u.last_access_min,
            "last_access_max": u.last_access_max,
        }
        for u in usage.namespaces
    ]
    orphans = last_scan_orphans(catalog)
    try:
        # Operators size by the volume: its statvfs figures beside the catalog's (one syscall, no crawl).
        filesystem: dict[str, Any] | None = fs_usage(state.root).to_json()
    except OSError:
        filesystem = None  # du answers from the catalog alone, also where the root is not mounted here
    data: dict[str, Any] = {
        "total_files": usage.total_files,
        "total_bytes": usage.total_bytes,
        "namespaces": namespaces,
        "temp_files": {"files": orphans.files, "bytes": orphans.bytes},
        "filesystem": filesystem,
    }
    if by != "namespace":
        data["by"] = by
    if by == "model":
        data["groups"] = groups_by_model(namespaces)
    elif by == "rank":
        data["groups"] = groups_by_rank(state)
    elif by == "age":
        data["groups"] = groups_by_age(state, now)
    return data, orphans.time


@click.command()
@click.option(
    "--by",
    type=click.Choice(["namespace", "model", "rank", "age"]),
    default="namespace",
    show_default=True,
    help="How to group the usage table (JSON always has `namespaces`; other groupings add `by` and `groups`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def du(state: KvfsContext, by: str, as_json: bool) -> None:
    """Show usage from the catalog: files and bytes per namespace (or model, rank, age).

    Answers from the catalog alone (run `kvfs scan` first on a new catalog).  Temp-file orphans are the figure
    of the last scan.
    """
    now = time.time()
    data, scanned_at = usage_json(state, by, now)
    if as_json:
        emit_json(data)
        return
    first = {"namespace": "namespace", "model": "model", "rank": "namespace", "age": "last access"}[by]
    headers: list[str] = [first]
    if by == "rank":
        headers.append("rank")
    if by == "model":
        headers.append("namespaces")
    headers += ["files", "bytes", "share", "oldest access", "newest access"]
    total = data["total_bytes"] or 1
    rows = []
    for g in data.get("groups", data["namespaces"]):
        label = g["namespace"] if by in ("namespace", "rank") else g[by]
        row: list[Any] = [label]
        if by == "rank":
            row.append("-" if g["rank"] is None else g["rank"])
        if by == "model":
            row.append(g["namespaces"])
        row += [
            f"{g['files']:,}",
            size(g["bytes"]),
            f"{100 * g['bytes'] / total:.1f}%",
            age(g["last_access_min"], now),
            age(g["last_access_max"], now),
        ]
        rows.append(row)
    width = len(headers)
    right = tuple(range(1 if by not in ("rank", "model") else 2, width - 2))
    click.echo(table(headers, rows, right=right))
    click.echo(f"total: {data['total_files']:,} files, {size(data['total_bytes'])}")
    fs = data["filesystem"]
    if fs is None:
        click.echo(f"filesystem: unavailable (cannot statvfs {state.root})")
    else:
        share = (
            f", kvfs blocks {100 * data['total_bytes'] / fs['size_bytes']:.1f}%" if fs["size_bytes"] else ""
        )
        click.echo(
            f"filesystem: {size(fs['used_bytes'])} used of {size(fs['size_bytes'])} "
            f"({100 * fs['use_ratio']:.1f}%{share}), {size(fs['available_bytes'])} available"
        )
    orphans = data["temp_files"]
    if scanned_at is None:
        click.echo("temp files: unknown (no scan recorded; run `kvfs scan`)")
    else:
        click.echo(
            f"temp files: {orphans['files']:,} ({size(orphans['bytes'])}) at the last scan, "
            f"{age(scanned_at, now)}"
        )
