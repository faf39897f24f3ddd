"""The eviction pass, once: `ingest` (journals → catalog), `plan` (limits → victims in policy order), `recheck`
(spare what was used since), `execute` (the one path that removes block files), assembled by `run.run_pass`
for the evictor, `kvfs gc`, `kvfs verify --delete-corrupt` (execute only) and the catalog replay."""

from kvfs.eviction.execute import (
    CatalogOnly,
    Remover,
    Result,
    delete_corrupt,
    execute_plan,
    reclaim_empty_dirs,
)
from kvfs.eviction.limits import KEEPING, EvictReason, Limits, limits_for_command, limits_from_settings
from kvfs.eviction.plan import Plan, Tally, Victim, plan_pass, temp_file_namespace
from kvfs.eviction.recheck import still_unused
from kvfs.eviction.run import PassHooks, PassOutcome, recency_recheck, run_pass

__all__ = [
    "KEEPING",
    "CatalogOnly",
    "EvictReason",
    "Limits",
    "PassHooks",
    "PassOutcome",
    "Plan",
    "Remover",
    "Result",
    "Tally",
    "Victim",
    "delete_corrupt",
    "execute_plan",
    "limits_for_command",
    "limits_from_settings",
    "plan_pass",
    "reclaim_empty_dirs",
    "recency_recheck",
    "run_pass",
    "still_unused",
    "temp_file_namespace",
]
