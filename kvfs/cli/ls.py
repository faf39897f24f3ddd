"""`kvfs ls NAMESPACE`: a namespace's blocks in eviction order (first = next to go)."""

from __future__ import annotations

import itertools
import time

import click

from kvfs.catalog import BlockRow
from kvfs.cli.app import KvfsContext, pass_state
from kvfs.cli.output import age, emit_json, size, table
from kvfs.cli.params import PolicyOption
from kvfs.policy import DEFAULT_POLICY, get_policy

# protect_after for "show everything": later than any real timestamp.
_NEVER_PROTECTED = float(1 << 52)


@click.command(name="ls")
@click.argument("namespace")
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Blocks to show (0: all).",
)
@click.option(
    "--policy",
    cls=PolicyOption,
    default=DEFAULT_POLICY,
    show_default=True,
    help="Eviction policy whose order is shown.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def ls(state: KvfsContext, namespace: str, limit: int, policy: str, as_json: bool) -> None:
    """List NAMESPACE's blocks in eviction order: the first line is the block `kvfs gc` would delete first."""
    catalog = state.catalog(create=False)  # answers from the catalog alone: the root need not be mounted
    ids = {ns.name: ns.id for ns in catalog.namespaces()}
    if namespace not in ids:
        known = ", ".join(sorted(ids)) or "none: run `kvfs scan`"
        raise click.ClickException(f"unknown namespace {namespace!r} (known: {known})")
    order = get_policy(policy)
    stream = order.candidates(
        catalog, namespace_ids=[ids[namespace]], protect_after=_NEVER_PROTECTED, limit_bytes=1 << 62
    )
    try:
        blocks = list(itertools.islice(stream, limit or None))
    finally:
        stream.close()  # type: ignore[attr-defined]
    # Reuse count, prefix-chain position and orphan/superseded flags explain the order (the policies read them); one
    # indexed lookup.
    rows_by_key = catalog.get_blocks(c.key for c in blocks)
    stats = {c.key: rows_by_key.get(c.key) for c in blocks}
    now = time.time()
    if as_json:
        emit_json(
            {
                "namespace": namespace,
                "policy": order.name,
                "blocks": [
                    {
                        "path": c.key.relpath(),
                        "rank": c.key.rank,
                        "group": c.key.group,
                        "hash": c.key.block_hash,
                        "format": c.key.fmt,
                        "size": c.size,
                        "last_access": c.last_access,
                        "hits": _hits(stats[c.key]),
                        "chain_pos": _chain_pos(stats[c.key]),
                        "orphan": _orphan(stats[c.key]),
                        "superseded": _superseded(stats[c.key]),
                    }
                    for c in blocks
                ],
            }
        )
        return
    rows = [
        (
            n + 1,
            c.key.relpath(),
            size(c.size),
            age(c.last_access, now),
            _cell(_hits(stats[c.key])),
            _cell(_chain_pos(stats[c.key])),
            _prefix_state(stats[c.key]),
        )
        for n, c in enumerate(blocks)
    ]
    headers = ("#", "path", "size", "last access", "hits", "chain pos", "prefix")
    click.echo(table(headers, rows, right=(0, 2, 4, 5)))
    if limit and len(blocks) == limit:
        click.echo(f"(first {limit} in {order.name} order; --limit 0 for all)")


def _hits(row: BlockRow | None) -> int | None:
    return None if row is None else row.hits


def _chain_pos(row: BlockRow | None) -> int | None:
    """None where unknown: the row went away meanwhile, or no writer recorded the position (-1)."""
    return None if row is None or row.chain_pos < 0 else row.chain_pos


def _orphan(row: BlockRow | None) -> bool:
    """Its parent is gone: vLLM cannot load it (the prefix policy evicts these first)."""
    return row is not None and row.orphan


def _superseded(row: BlockRow | None) -> bool:
    """Never read, and its parent got a newer child: the branch a conversation left behind (evicted next)."""
    return row is not None and row.superseded and not row.orphan


def _prefix_state(row: BlockRow | None) -> str:
    return "orphan" if _orphan(row) else "superseded" if _superseded(row) else ""


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)
