"""The plan step of an eviction pass: limits → a victim list in policy order, from the catalog alone.

Planning reads only the catalog (no crawling): the policy streams blocks in eviction order and the planner
stops as soon as each limit is met.  A namespace named in `retire` or a quota that the catalog does not know
is skipped and reported in `Plan.unknown_namespaces` (a typo, or a namespace already gone), never an error
that would stop the pass.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvfs.eviction.limits import EvictReason, Limits
from kvfs.gcpause import cyclic_gc_paused
from kvfs.layout import BlockKey, parse_namespace_dir
from kvfs.policy import EvictionPolicy, get_policy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog, Usage
    from kvfs.catalog.fifo import PassWrites
    from kvfs.scan import TempFile

# "Everything that matches": larger than any real tree, small enough for every SQL integer type.
_ALL_BYTES = 1 << 62


# Not frozen: a frozen dataclass's __init__ costs ~3x more, and the planner builds 100k+ of these.
@dataclass(slots=True)
class Victim:
    key: BlockKey
    size: int
    reason: EvictReason
    # The recency the block was chosen on: the recheck spares it if the catalog now says it was used since.
    last_access: float = 0.0
    block_id: int | None = None


@dataclass(slots=True)
class Tally:
    files: int = 0
    bytes: int = 0

    def add(self, nbytes: int, files: int = 1) -> None:
        self.files += files
        self.bytes += nbytes

    def as_dict(self) -> dict[str, int]:
        return {"files": self.files, "bytes": self.bytes}


@dataclass
class Plan:
    victims: list[Victim]
    temp_files: list[TempFile]
    by_reason: dict[EvictReason, Tally]
    by_namespace: dict[str, Tally]
    total_files: int
    total_bytes: int
    # Catalog usage the plan was computed from (in the pass's scope) and the policy that ordered it.
    usage_files: int = 0
    usage_bytes: int = 0
    policy: str = ""
    now: float = 0.0
    # Retired or quota namespaces the catalog does not know (skipped), and the bytes the capacity or quota
    # limits still exceed after every eligible block was chosen (the rest is protected by min_age).
    unknown_namespaces: list[str] = field(default_factory=list)
    shortfall_bytes: int = 0
    # What the policy's order decided besides the victims (S3-FIFO's queue moves), for the executor.
    writes: PassWrites | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "planned_files": self.total_files,
            "planned_bytes": self.total_bytes,
            "usage_files": self.usage_files,
            "usage_bytes": self.usage_bytes,
            "by_reason": {str(r): t.as_dict() for r, t in self.by_reason.items()},
            "by_namespace": {ns: t.as_dict() for ns, t in self.by_namespace.items()},
            "unknown_namespaces": self.unknown_namespaces,
            "shortfall_bytes": self.shortfall_bytes,
        }


class _Planner:
    def __init__(self, catalog: Catalog, policy: EvictionPolicy, protect_after: float) -> None:
        self.catalog = catalog
        self.policy = policy
        self.protect_after = protect_after
        self.chosen: dict[int | BlockKey, Victim] = {}
        self.chosen_bytes_by_ns: dict[str, int] = {}
        self.by_reason: dict[EvictReason, Tally] = {}
        self.chosen_bytes = 0
        self.prepared = False

    def take(
        self,
        namespace_ids: Sequence[int] | None,
        reason: EvictReason,
        *,
        need_bytes: int = _ALL_BYTES,
        protect_after: float | None = None,
        in_scope_chosen: int = 0,
    ) -> int:
        """Add candidates of `reason` until `need_bytes` more are chosen; already chosen blocks are skipped.
        Returns the bytes chosen."""
        if need_bytes <= 0:
            return 0
        if not self.prepared:  # the policy's bookkeeping, once per pass and only when candidates are needed
            self.policy.prepare(self.catalog)
            self.prepared = True
        protect = self.protect_after if protect_after is None else min(protect_after, self.protect_after)
        # The policy may offer blocks an earlier reason already took: ask for that much more.
        limit = min(_ALL_BYTES, need_bytes + in_scope_chosen)
        stream: Iterator[Any] = self.policy.candidates(
            self.catalog, namespace_ids=namespace_ids, protect_after=protect, limit_bytes=limit
        )
        # Hot loop (100k+ candidates per pass): locals only; per-namespace file counts are taken at the end.
        chosen = self.chosen
        bytes_by_ns: dict[str, int] = {}
        freed = files = 0
        try:
            for cand in stream:
                block_id = cand.block_id
                ident: int | BlockKey = block_id if block_id is not None else cand.key
                if ident in chosen:
                    continue
                size = cand.size
                key = cand.key
                chosen[ident] = Victim(key, size, reason, cand.last_access, block_id)
                ns = key.namespace
                bytes_by_ns[ns] = bytes_by_ns.get(ns, 0) + size
                freed += size
                files += 1
                if freed >= need_bytes:
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        for ns, nbytes in bytes_by_ns.items():
            self.chosen_bytes_by_ns[ns] = self.chosen_bytes_by_ns.get(ns, 0) + nbytes
        self.chosen_bytes += freed
        if files:
            self.by_reason.setdefault(reason, Tally()).add(freed, files)
        return freed


def plan_pass(
    catalog: Catalog,
    limits: Limits,
    *,
    now: float | None = None,
    policy: EvictionPolicy | str | None = None,
    temp_files: Sequence[TempFile] = (),
    usage: Usage | None = None,
) -> Plan:
    """Choose the victims of one pass, from the catalog alone.

    Reasons are applied in this order, each skipping what an earlier one took: retired namespaces, TTL,
    per-namespace quotas (policy order within the namespace), capacity (policy order over the scope until
    usage <= `max_bytes`), then stale temp files older than `temp_grace` (from `temp_files`, as found by a
    scan).  `usage`: the catalog's `usage()` when the caller has just computed it (saves one aggregate).
    Raises ValueError only for an unknown `limits.namespace` (the scope the caller asked for).
    """
    with cyclic_gc_paused():
        return _plan(catalog, limits, now=now, policy=policy, temp_files=temp_files, usage=usage)


def _plan(
    catalog: Catalog,
    limits: Limits,
    *,
    now: float | None,
    policy: EvictionPolicy | str | None,
    temp_files: Sequence[TempFile],
    usage: Usage | None,
) -> Plan:
    now = time.time() if now is None else now
    if policy is None or isinstance(policy, str):
        policy = get_policy(policy)
    infos = {ns.name: ns for ns in catalog.namespaces()}
    scope_name = limits.namespace
    if scope_name is not None and scope_name not in infos:
        raise ValueError(f"unknown namespace {scope_name!r} (not in the catalog: run `kvfs scan` first?)")
    scope_ids = None if scope_name is None else [infos[scope_name].id]
    usage = catalog.usage() if usage is None else usage
    ns_usage = {u.namespace: u for u in usage.namespaces}
    if scope_name is None:
        usage_files, usage_bytes = usage.total_files, usage.total_bytes
    else:
        scoped = ns_usage.get(scope_name)
        usage_files, usage_bytes = (scoped.files, scoped.bytes) if scoped else (0, 0)

    planner = _Planner(catalog, policy, now - limits.min_age)
    unknown: list[str] = []
    shortfall = 0

    for name in dict.fromkeys(limits.retire):
        if name not in infos:
            unknown.append(name)  # a typo, or a namespace already gone: nothing to evict
        elif scope_name is None or name == scope_name:
            planner.take([infos[name].id], EvictReason.RETIRED)

    if limits.ttl is not None:
        planner.take(scope_ids, EvictReason.TTL, protect_after=now - limits.ttl)

    for name, quota in limits.quotas.items():
        if scope_name is not None and name != scope_name:
            continue
        if name not in infos:
            continue  # a quota for a namespace nobody has written yet
        chosen_here = planner.chosen_bytes_by_ns.get(name, 0)
        excess = (ns_usage[name].bytes if name in ns_usage else 0) - chosen_here - quota
        freed = planner.take(
            [infos[name].id], EvictReason.QUOTA, need_bytes=excess, in_scope_chosen=chosen_here
        )
        shortfall += max(0, excess - freed)

    if limits.max_bytes is not None:
        chosen_here = (
            planner.chosen_bytes if scope_name is None else planner.chosen_bytes_by_ns.get(scope_name, 0)
        )
        excess = usage_bytes - chosen_here - limits.max_bytes
        freed = planner.take(scope_ids, EvictReason.CAPACITY, need_bytes=excess, in_scope_chosen=chosen_here)
        shortfall += max(0, excess - freed)

    victims = list(planner.chosen.values())
    by_reason = planner.by_reason
    files_by_ns = Counter(v.key.namespace for v in victims)
    by_namespace = {ns: Tally(files_by_ns[ns], nbytes) for ns, nbytes in planner.chosen_bytes_by_ns.items()}

    stale: list[TempFile] = []
    if limits.temp_grace is not None:
        cutoff = now - limits.temp_grace
        for temp in temp_files:
            ns = temp_file_namespace(temp.relpath)
            if temp.mtime < cutoff and (scope_name is None or ns == scope_name):
                stale.append(temp)
                by_reason.setdefault(EvictReason.TEMP_FILE, Tally()).add(temp.size)
                by_namespace.setdefault(ns or "", Tally()).add(temp.size)

    return Plan(
        victims=victims,
        temp_files=stale,
        by_reason=by_reason,
        by_namespace=by_namespace,
        total_files=len(victims) + len(stale),
        total_bytes=planner.chosen_bytes + sum(t.size for t in stale),
        usage_files=usage_files,
        usage_bytes=usage_bytes,
        policy=policy.name,
        now=now,
        unknown_namespaces=unknown,
        shortfall_bytes=shortfall,
        writes=policy.take_pass_writes(),
    )


def temp_file_namespace(relpath: str) -> str | None:
    """Namespace of a temp file's path (`<ns>[_r<rank>]/...`), None when it is not under one."""
    parsed = parse_namespace_dir(relpath.split("/", 1)[0])
    return parsed[0] if parsed else None
