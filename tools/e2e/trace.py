"""The end-to-end benchmark's trace phase: `kvfs-evictor` under a generated multi-turn trace in a real engine.

    python -m tools.e2e --roots none --no-cpu-tier --evictor-trace chat:150 [--evictor-fraction 0.33]

A `tools.tracegen` workload (requests as ids of prefix blocks) is turned into token prompts: every block id
becomes CHUNK_TOKENS deterministic tokens, i.e. one kvfs file, so the engine's prefix chains are the trace's
(a conversation's next turn re-sends the history and replaces the previous turn's last block).  One engine serves
the requests in order (GPU prefix cache reset before each, so only kvfs serves) while `kvfs-evictor` with its
defaults (the policy `--evictor-policy`, the evictor's default unless given) holds a fresh root to `fraction` of
the trace's unique blocks.  Reported: the hit ratio (tokens loaded from kvfs / prompt tokens) next to the
replay of that policy, `prefix`, LRU and Belady on the same block sequence under the
evictor's watermarks (over 85% of the capacity, down to 70%), and greedy tokens of every `check_every`-th
request against a plain engine's recompute (phase `trace-ref`, run first in its own process).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from tools.e2e.engine import (
    CHUNK_TOKENS,
    Engine,
    du_bytes,
    measure_hit,
    prompt_tokens,
    start_evictor,
    stop_evictor,
    watermark_blocks,
)

PAUSE_S = 1.2  # about one enforcement interval between requests, as between a user's turns at scale
# A running figure every this many requests: a phase cut by a call's time limit on a lent GPU still tells how far
# it got and what it measured so far.
PROGRESS_EVERY = 10


def parse_trace(text: str) -> tuple[str, int]:
    """`WORKLOAD:REQUESTS` (e.g. `chat:150`) -> (workload, requests)."""
    from tools.tracegen import WORKLOADS

    workload, _, count = text.partition(":")
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} (one of {', '.join(WORKLOADS)})")
    requests = int(count) if count else 150
    if requests <= 0:
        raise ValueError(f"requests must be positive: {count!r}")
    return workload, requests


def trace_requests(workload: str, requests: int, seed: int) -> list[list[int]]:
    from tools.tracegen import generate

    return [list(r.hash_ids) for r in generate(workload, requests=requests, seed=seed)]


def request_tokens(blocks: Sequence[int], vocab: int) -> list[int]:
    """The prompt of a request: each block id's own CHUNK_TOKENS tokens, so equal prefixes of ids are equal
    prefixes of tokens (and of vLLM's chained block hashes)."""
    tokens: list[int] = []
    for block in blocks:
        tokens += prompt_tokens(CHUNK_TOKENS, 7_000_000 + block, vocab)
    return tokens


def checked(requests: int, every: int) -> list[int]:
    """Indices of the requests whose greedy tokens are compared with a recompute."""
    return list(range(every - 1, requests, every))


def trace_oracles(
    requests: Sequence[Sequence[int]], capacity_blocks: int, policy: str | None = None
) -> dict[str, Any]:
    """The replay's prefix-hit ratios on the block sequence under the evictor's watermarks: the evictor's own
    `policy` (its default when None), `prefix`, LRU and Belady."""
    from kvfs.policy import DEFAULT_POLICY
    from kvfs.replay import simulate_policy
    from kvfs.replay.baselines import simulate_belady, simulate_lru
    from kvfs.replay.chooser import simulate_adaptive
    from kvfs.replay.memory import simulate_prefix

    high, low = watermark_blocks(capacity_blocks)
    slack = max(1, high - low)
    policy = policy or DEFAULT_POLICY
    orders: list[str] = []
    if policy == "adaptive":  # the same replay, with the order it chose after each request
        own = simulate_adaptive(requests, high, slack, choices=orders)
    else:
        own = simulate_policy(requests, high, slack, policy)
    return {
        "policy": policy,
        "replay_policy_hit_ratio": own.hit_ratio,
        "replay_policy_per_request": own.per_request,
        "replay_orders": orders,
        "replay_prefix_hit_ratio": simulate_prefix(requests, high, slack).hit_ratio,
        "lru_hit_ratio": simulate_lru(requests, high, slack).hit_ratio,
        "belady_hit_ratio": simulate_belady(requests, high, slack).hit_ratio,
    }


def reference_phase(spec: Mapping[str, Any], engine: Any = None) -> dict[str, Any]:
    """Greedy tokens of the checked requests from a plain engine (no connector): the recompute reference."""
    engine = engine or Engine({**spec, "connector": "none"})
    reqs = trace_requests(spec["workload"], spec["requests"], spec["trace_seed"])
    refs: dict[str, list[int]] = {}
    for i in checked(len(reqs), spec["check_every"]):
        hit = measure_hit(
            engine, request_tokens(reqs[i], spec["vocab"]), [], "recompute", spec["bytes_per_token"]
        )
        refs[str(i)] = hit["out"]
    return {"refs": refs}


def evictor_trace_phase(
    spec: Mapping[str, Any], engine: Any = None, pause_s: float = PAUSE_S
) -> dict[str, Any]:
    root, bpt = spec["root"], spec["bytes_per_token"]
    reqs = trace_requests(spec["workload"], spec["requests"], spec["trace_seed"])
    unique = len({b for r in reqs for b in r})
    file_bytes = CHUNK_TOKENS * bpt
    capacity_blocks = max(1, int(unique * spec["fraction"]))
    capacity = capacity_blocks * file_bytes
    refs: dict[str, list[int]] = spec.get("refs", {})
    res: dict[str, Any] = {
        "workload": spec["workload"], "requests": len(reqs), "unique_blocks": unique,
        "capacity_blocks": capacity_blocks, "capacity_bytes": capacity, "fraction": spec["fraction"],
        "per_request": [],
    }  # fmt: skip
    evictor, log, log_path, catalog_url = start_evictor(spec, root, capacity)
    peak = errors = 0
    log_text = ""
    try:
        engine = engine or Engine(spec)
        for i, blocks in enumerate(reqs):
            tokens = request_tokens(blocks, spec["vocab"])
            ref = refs.get(str(i))
            started = time.time()
            try:
                hit = measure_hit(engine, tokens, ref or [], "trace", bpt)
                engine.settle()
            except Exception as exc:  # noqa: BLE001 - recorded; the next request goes on
                errors += 1
                res["per_request"].append({"i": i, "error": repr(exc)})
                continue
            res["per_request"].append(
                {
                    "i": i,
                    "started": started,
                    "tokens": len(tokens),
                    "loaded_tokens": min(int(hit.get("loaded_tokens", 0)), len(tokens)),
                    "ttft_s": hit["ttft_s"],
                    "misses": sum(hit.get("misses", {}).values()),
                    **({"tokens_equal": hit["tokens_equal"]} if ref is not None else {}),
                }
            )
            time.sleep(pause_s)
            peak = max(peak, du_bytes(root))
            if (i + 1) % PROGRESS_EVERY == 0:
                print(f"[e2e trace] {running_line(res['per_request'], len(reqs))}", flush=True)
    finally:
        log_text = stop_evictor(evictor, log, log_path, res)
    res["catalog"] = chain_counts(catalog_url)
    res.update(summarize(res["per_request"], capacity, peak))
    res["request_errors"] = errors
    res.update(trace_oracles(reqs, capacity_blocks, spec.get("policy")))
    res["pass_orders"] = pass_orders(log_text)
    res["against_replay"] = against_replay(
        res["per_request"], res.pop("replay_policy_per_request"), res.pop("replay_orders"), res["pass_orders"]
    )
    return res


# The evictor's text log line of a pass that evicted (evictor/passes.py), with the order `adaptive` ranked it by.
_PASS_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO \S+: evicted .*; order (\S+)$")


def pass_orders(log_text: str) -> list[tuple[float, str]]:
    """(time, order) of each pass that evicted, from the evictor's log (its local-time stamps, as `time.time()`
    on the same machine reads them)."""
    found = []
    for line in log_text.splitlines():
        m = _PASS_LINE.match(line)
        if m:
            stamp = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            found.append((stamp, m.group(3)))
    return found


def against_replay(
    per_request: Sequence[Mapping[str, Any]],
    replay_hits: Sequence[int],
    replay_orders: Sequence[str] = (),
    engine_orders: Sequence[tuple[float, str]] = (),
) -> dict[str, Any]:
    """Where the engine's hits depart from its policy's replay, request by request: how many requests loaded
    exactly the blocks the replay hit, how many fewer or more (and the blocks), and how many of the fewer had a
    load miss (a file gone between lookup and load) rather than a lookup that found less.  With the orders
    (`adaptive`), each departing request also names the order of the engine's last evicting pass before it
    started and the replay's order after the request before it: the evictions that decided its hits."""
    same = below = above = lost = gained = with_misses = 0
    departures = []
    for q in per_request:
        if "error" in q:
            continue
        i = q["i"]
        engine, replay = q["loaded_tokens"] // CHUNK_TOKENS, replay_hits[i]
        if engine == replay:
            same += 1
            continue
        if engine < replay:
            below, lost = below + 1, lost + replay - engine
            with_misses += bool(q["misses"])
        else:
            above, gained = above + 1, gained + engine - replay
        before = [order for t, order in engine_orders if t <= q.get("started", 0.0)]
        departures.append(
            {
                "i": i, "replay_blocks": replay, "engine_blocks": engine, "load_misses": q["misses"],
                "replay_order": replay_orders[i - 1] if 0 < i <= len(replay_orders) else None,
                "engine_order": before[-1] if before else None,
            }
        )  # fmt: skip
    return {
        "same": same, "below": below, "blocks_lost": lost, "below_with_load_misses": with_misses,
        "above": above, "blocks_gained": gained, "departures": departures,
    }  # fmt: skip


def chain_counts(catalog_url: str) -> dict[str, Any]:
    """What the evictor's catalog holds at the end: blocks, how many with a recorded parent, orphans and
    superseded leaves (are the chains the policy relies on really fed by the engine?)."""
    from kvfs.catalog import Catalog, CatalogError

    try:
        with Catalog.open(catalog_url, create=False) as catalog:
            return catalog.chain_counts()
    except CatalogError as exc:
        return {"error": str(exc)}


def summarize(per_request: Sequence[Mapping[str, Any]], capacity: int, peak: int) -> dict[str, Any]:
    done = [q for q in per_request if "error" not in q]
    total = sum(q["tokens"] for q in done)
    compared = [q["tokens_equal"] for q in done if "tokens_equal" in q]
    return {
        "hit_ratio": sum(q["loaded_tokens"] for q in done) / total if total else 0.0,
        "tokens_checked": len(compared),
        "tokens_equal": bool(compared) and all(compared),
        "load_misses": sum(q["misses"] for q in done),
        "peak_usage_ratio": peak / capacity if capacity else 0.0,
    }


def running_line(per_request: Sequence[Mapping[str, Any]], total: int) -> str:
    """How far the phase got: requests done, the hit ratio so far, tokens compared so far."""
    done = [q for q in per_request if "error" not in q]
    tokens = sum(q["tokens"] for q in done)
    compared = [q["tokens_equal"] for q in done if "tokens_equal" in q]
    ratio = sum(q["loaded_tokens"] for q in done) / tokens if tokens else 0.0
    return (
        f"{len(per_request)}/{total} requests, hit ratio so far {ratio:.3f}, tokens equal {sum(compared)} of "
        f"{len(compared)}, errors {len(per_request) - len(done)}"
    )


def format_trace(ev: Mapping[str, Any]) -> str:
    if not ev:
        return ""
    if "hit_ratio" not in ev:
        return f"evictor trace phase: {ev.get('error', 'not run')}"
    return (
        f"evictor trace phase: {ev['workload']}, {ev['requests']} requests, {ev['unique_blocks']} unique blocks of "
        f"{CHUNK_TOKENS} tokens, capacity {ev['capacity_blocks']} blocks ({ev['fraction']:.2f}); hit ratio "
        f"{ev['hit_ratio']:.3f} under `{ev['policy']}`; the replay on the same sequence under the 85/70% "
        f"watermarks: `{ev['policy']}` {ev['replay_policy_hit_ratio']:.3f} (engine ÷ replay "
        f"{ev['hit_ratio'] / ev['replay_policy_hit_ratio'] if ev['replay_policy_hit_ratio'] else 0:.3f}), prefix "
        f"{ev['replay_prefix_hit_ratio']:.3f}, LRU {ev['lru_hit_ratio']:.3f}, Belady {ev['belady_hit_ratio']:.3f}; "
        f"tokens equal to recompute: {'yes' if ev['tokens_equal'] else 'NO'} ({ev['tokens_checked']} checked); "
        f"request errors {ev['request_errors']}, load misses {ev['load_misses']}, evictor errors "
        f"{ev['evictor_errors']}, peak usage {ev['peak_usage_ratio']:.2f}× capacity; catalog at the end: "
        + ", ".join(f"{k} {v}" for k, v in ev.get("catalog", {}).items())
        + _format_against(ev.get("against_replay"))
    )


def _format_against(against: Mapping[str, int] | None) -> str:
    if not against:
        return ""
    line = (
        f"; request by request against the replay: {against['same']} loaded what it hit, {against['below']} less "
        f"({against['blocks_lost']} blocks; {against['below_with_load_misses']} with load misses), "
        f"{against['above']} more ({against['blocks_gained']} blocks)"
    )
    shown = [
        f"{d['i']}: {d['replay_blocks']}→{d['engine_blocks']}"
        + (f" ({d['replay_order']}/{d['engine_order']})" if d["replay_order"] or d["engine_order"] else "")
        for d in against.get("departures", [])[:12]
    ]
    return line + (
        f"; request: replay→engine blocks (replay/engine order): {', '.join(shown)}" if shown else ""
    )
