"""The adaptive default's decisions, apart from any storage: ARC's regret on prefix chains, two boundaries.

Order, from five LRU-ordered streams (oldest first, deeper chain position first on ties) and two numbers:

1. orphans (their parent is gone: never loadable), 2. superseded leaves (never read, their parent got a newer
child), as `prefix` does; 3. never-reused blocks (FRESH, `hits = 0`) beyond `fresh_share` of what stays,
oldest first; 4. blocks reused once (ONCE, `hits = 1`) beyond `once_share` of what stays, oldest first;
5. the rest: FRESH, ONCE and FREQUENT (`hits >= 2`) merged by last access (ties: deeper position first), i.e. LRU.

Two nested ARC boundaries: `fresh_share` between never-reused and reused blocks (ARC's T1/T2 split, 2Q's
probation), `once_share` inside reused blocks between those read once and those read more (what S3-FIFO's
frequency counter and ARC's T2 keep: a system prompt read hundreds of times outlives a history block read
once).  Both shares at 1 are LRU with the prefix rules.  Neither is a constant: each moves on the ghosts of
its two sides, as ARC's `p`.  A FRESH ghost stored again says FRESH blocks went too early: `fresh_share`
grows; a ONCE or FREQUENT ghost stored again: it shrinks.  Inside reused blocks, a ONCE ghost grows
`once_share`, a FREQUENT ghost shrinks it.  The step scales with the evidence: each returning ghost moves
its share by one over its side's ghost list (those left plus those returned), i.e. by the fraction of that
side's remembered victims that proved wrong.  A short ghost list (a small tier, or the side that rarely
loses blocks) moves the share fast; a long one, slowly, so a session resend that brings back 40 ghosts of a
list of 4,000 moves it by 1%, not by 40 blocks.  (ARC's step, one block of the tier times the
ghost-list ratio, was too slow at 1% capacity and too jumpy on resends: docs/policy.md.)  A block stored
again while its ghost is remembered counts as read once (ARC's ghost hit goes to T2; 2Q's re-store skips
probation).

A chain's tail still goes before its head: `hits` never grows along a chain, so a head is in the same class as
its tail or a later one, and within each class the order is LRU with deeper-first ties.

The catalog and the in-memory replay (`kvfs.replay.memory`) feed the same functions.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

# Classes of live blocks, by `hits`: never reused, reused once, reused more (a ghost keeps its block's class).
FRESH, ONCE, FREQUENT = 0, 1, 2
# Where the shares start: 2Q's probation share for FRESH (the classic the replay suite finds best at small
# capacities), half of what stays for ONCE; evidence moves both.  Replay suite (docs/policy.md), cells below
# 0.995x the best other policy: one boundary (ONCE share fixed at 1) 23 of 78; ONCE share starting at 1 18 of
# 52 (1, 2, 10, 25%), at 0.5 17, at 0.1 22, at 0 21.
FRESH_SHARE_INITIAL = 0.1
ONCE_SHARE_INITIAL = 0.5
# Ghosts are kept for this many recency spans (newest minus oldest last access in the tier), as 2q's
# (kvfs.policy.twoq.HORIZON), so one ghost store serves both.
HORIZON = 3.0


class Sized(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def last_access(self) -> float: ...
    @property
    def chain_pos(self) -> int: ...


T = TypeVar("T", bound=Sized)


@dataclass(frozen=True, slots=True)
class State:
    """What persists between passes (the catalog's state row)."""

    fresh_share: float = FRESH_SHARE_INITIAL
    once_share: float = ONCE_SHARE_INITIAL


def _move(share: float, grow: int, shrink: int, grow_ghosts: int, shrink_ghosts: int) -> float:
    # Each return counts as one over its side's ghost list (left + returned): the share of that side's
    # remembered victims that came back.
    step = grow / max(1, grow_ghosts + grow) - shrink / max(1, shrink_ghosts + shrink)
    return min(1.0, max(0.0, share + step))


def adapt(state: State, returned: Sequence[int], ghosts: Sequence[int]) -> State:
    """The new shares after `returned[c]` ghosts of class c (FRESH, ONCE, FREQUENT) were stored again since
    the last pass; `ghosts[c]`: ghosts of class c left."""
    reused, reused_ghosts = returned[ONCE] + returned[FREQUENT], ghosts[ONCE] + ghosts[FREQUENT]
    fresh = _move(state.fresh_share, returned[FRESH], reused, ghosts[FRESH], reused_ghosts)
    once = _move(state.once_share, returned[ONCE], returned[FREQUENT], ghosts[ONCE], ghosts[FREQUENT])
    return State(fresh, once)


def surpluses(sizes: Sequence[int], total: int, need: int, state: State) -> tuple[int, int]:
    """Bytes of FRESH and of ONCE blocks beyond their shares of what stays after the pass (`sizes`: bytes per
    class, protected blocks included; `total`: bytes in scope)."""
    keep = max(0, total - need)
    return sizes[FRESH] - int(state.fresh_share * keep), sizes[ONCE] - int(state.once_share * keep)


def _lru_key(block: Sized) -> tuple[float, int]:
    return block.last_access, -block.chain_pos


def order(
    orphans: Iterable[T],
    superseded: Iterable[T],
    live: tuple[Iterable[T], Iterable[T], Iterable[T]],
    surplus: tuple[int, int],
) -> Iterator[tuple[T, int | None]]:
    """The eviction order (see the module) from the orphan, superseded, FRESH, ONCE and FREQUENT streams.
    Yields (block, its class), None for orphans and superseded leaves (no regret: they leave no ghost)."""
    for item in orphans:
        yield item, None
    for item in superseded:
        yield item, None
    streams = [iter(s) for s in live]
    for cls in (FRESH, ONCE):
        taken = 0
        if surplus[cls] > 0:
            for item in streams[cls]:
                yield item, cls
                taken += item.size
                if taken >= surplus[cls]:
                    break
    tagged = [_tag(stream, cls) for cls, stream in enumerate(streams)]
    yield from heapq.merge(*tagged, key=lambda pair: _lru_key(pair[0]))


def _tag(stream: Iterator[T], cls: int) -> Iterator[tuple[T, int]]:
    for item in stream:
        yield item, cls
