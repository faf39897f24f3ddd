"""One eviction pass, assembled once: ingest → plan → recheck → delete.

The evictor (`evictor.passes`), `kvfs gc` and the catalog replay (`kvfs.replay.catalog_replay`) all run
`run_pass`; what differs between them is given, not re-assembled: where the limits come from (a `Limits`, or a
function of the catalog's usage after ingest, as the evictor's watermarks are), what may stop a batch
(`PassHooks.before_batch`: a pause, a stop, lost leadership), and how files are removed (`Remover`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvfs import metrics
from kvfs.eviction.execute import Remover, Result, execute_plan
from kvfs.eviction.limits import Limits
from kvfs.eviction.plan import Plan, Victim, plan_pass
from kvfs.eviction.recheck import still_unused
from kvfs.policy import EvictionPolicy

if TYPE_CHECKING:
    from kvfs.catalog import Catalog, Usage
    from kvfs.scan import TempFile

log = logging.getLogger("kvfs.eviction")


@dataclass
class PassHooks:
    """What a caller adds to the pass.  `ingest`: journals → catalog, run before planning and again before each
    delete batch (recency is current when a victim is confirmed).  `before_batch(n)`: may pause; returning
    False drops the batch (stopping, leadership lost).  `on_phase`: planning | deleting | idle."""

    ingest: Callable[[], Any] | None = None
    before_batch: Callable[[int], bool] | None = None
    on_phase: Callable[[str], None] | None = None


@dataclass
class PassOutcome:
    plan: Plan
    result: Result | None  # None when nothing was planned
    usage: Usage
    limits: Limits
    plan_s: float = 0.0
    duration_s: float = 0.0


def run_pass(
    catalog: Catalog,
    root: str | os.PathLike[str],
    limits: Limits | Callable[[Usage], Limits],
    policy: EvictionPolicy,
    *,
    hooks: PassHooks | None = None,
    temp_files: Sequence[TempFile] = (),
    now: float | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    reclaim_dirs: bool = True,
    remover: Remover | None = None,
    log_evictions: bool = True,
    ingest_first: bool = True,
) -> PassOutcome:
    """Run one pass.  The policy's bookkeeping writes (`policy.prepare`) happen in its planning step, once
    and only when the pass needs candidates: read commands that list a policy's order never write, and a pass
    under every limit writes nothing.  Raises what ingest, usage or planning raise (nothing
    was deleted then); a recheck that fails keeps its batch and is counted in `result.recheck_failures`."""
    started = time.monotonic()
    hooks = hooks or PassHooks()
    now = time.time() if now is None else now
    phase = hooks.on_phase or (lambda _name: None)
    policy.attach(catalog)  # before ingest, so a policy that learns from records sees this pass's too
    if ingest_first and hooks.ingest is not None:  # False: the caller has just ingested
        hooks.ingest()
    usage = catalog.usage()
    if callable(limits):
        limits = limits(usage)
    phase("planning")
    try:
        t0 = time.monotonic()
        plan = plan_pass(catalog, limits, now=now, policy=policy, temp_files=temp_files, usage=usage)
        outcome = PassOutcome(plan, None, usage, limits, plan_s=time.monotonic() - t0)
        if plan.total_files:
            phase("deleting")
            failures = [0]
            outcome.result = execute_plan(
                root,
                catalog,
                plan,
                dry_run=dry_run,
                recheck=recency_recheck(catalog, hooks, limits.min_age, failures),
                batch_size=batch_size,
                now=now,
                policy=policy,
                reclaim_dirs=reclaim_dirs,
                remover=remover,
                log_evictions=log_evictions,
            )
            outcome.result.recheck_failures = failures[0]
    finally:
        phase("idle")
    outcome.duration_s = time.monotonic() - started
    return outcome


def recency_recheck(
    catalog: Catalog, hooks: PassHooks | None = None, min_age: float = 0.0, failures: list[int] | None = None
) -> Callable[[list[Victim]], list[Victim]]:
    """The pass's recheck of a batch: `hooks.before_batch`, then `hooks.ingest` and `still_unused` with the
    protection window `min_age` back from now.  A failure keeps the batch and is counted in `failures[0]`."""
    hooks = hooks or PassHooks()
    failures = [0] if failures is None else failures

    def recheck(victims: list[Victim]) -> list[Victim]:
        if hooks.before_batch is not None and not hooks.before_batch(len(victims)):
            return []
        try:
            if hooks.ingest is not None:
                hooks.ingest()
            keep = still_unused(
                catalog, victims, protect_after=time.time() - min_age if min_age > 0 else None
            )
        except Exception as exc:  # noqa: BLE001 - recency unconfirmed: delete nothing of this batch
            failures[0] += 1
            metrics.CATALOG_ERRORS.labels("recheck").inc()
            log.warning("recheck failed, keeping a batch of %d: %s", len(victims), str(exc).splitlines()[0])
            return []
        spared = len(victims) - len(keep)
        if spared:
            metrics.RECHECK_SPARED.inc(spared)
            log.info("recheck: %d of %d victims were used since they were chosen; kept", spared, len(victims))
        return keep

    return recheck
