"""Seeded generators of Mooncake-format request traces for realistic prefix-reuse workloads.

A trace is one JSON object a line: `timestamp` (ms), `input_length` and `output_length` (tokens) and
`hash_ids`, the request's prefix blocks of 512 tokens: equal ids at the same position are the same KV block.
Ids are interned from (parent block id, block content), so two requests share a block exactly when they share
every token up to its end, as with vLLM's chained block hashes.  The last, partial block of a request is its
own block: the next turn fills it with other tokens.

Workloads (`WORKLOADS`), each a different reuse shape the eviction policy must handle:

* `chat`: multi-turn sessions whose prefix grows each turn (the whole history is resent), a few popular
  system prompts shared by every session, think times of tens of seconds between turns;
* `agent`: tool-call loops: a long shared tool-description prompt, a task, then iterations that each append a
  tool result to the context, seconds apart;
* `rag`: one-off requests: a shared system prompt plus a long document that is usually unique (some
  documents are popular and come back);
* `mixed`: the three together;
* `sysprompt`: many users of a few applications: long shared system prompts (a few thousand to 16k tokens,
  Zipf popularity) followed by one or two short turns of a unique conversation;
* `sessions`: long multi-turn sessions (coding assistants, agents with a human in the loop) that re-send a
  growing prefix every turn and are often resumed after a pause of many minutes.

`python -m tools.tracegen --workload chat --requests 4000 --seed 1 -o chat.jsonl`
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvfs.trace import BLOCK_TOKENS, TraceRequest, write_trace


class BlockInterner:
    """Block ids from (parent id, content): a block is shared only when its whole prefix is."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, tuple[tuple[int, int, int], ...]], int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def blocks(self, segments: Iterable[tuple[int, int]]) -> tuple[list[int], int]:
        """Block ids of a token stream made of `(segment id, length)` pieces, and its token count.

        A segment id names content: the same id is the same tokens (a shared system prompt, one session's
        turn).  A block's content is the list of segment slices it covers.
        """
        ids: list[int] = []
        parent = -1
        pieces: list[tuple[int, int, int]] = []
        filled = 0
        total = 0
        for seg_id, length in segments:
            offset = 0
            while offset < length:
                take = min(length - offset, BLOCK_TOKENS - filled)
                pieces.append((seg_id, offset, offset + take))
                offset += take
                filled += take
                if filled == BLOCK_TOKENS:
                    parent = self._intern(parent, pieces)
                    ids.append(parent)
                    pieces, filled = [], 0
            total += length
        if pieces:
            ids.append(self._intern(parent, pieces))
        return ids, total

    def _intern(self, parent: int, pieces: list[tuple[int, int, int]]) -> int:
        key = (parent, tuple(pieces))
        block_id = self._ids.get(key)
        if block_id is None:
            block_id = self._ids[key] = len(self._ids)
        return block_id


@dataclass
class _Gen:
    """Shared state of one generation run: the random stream, segment ids and the block interner."""

    rng: random.Random
    interner: BlockInterner = field(default_factory=BlockInterner)
    next_segment: int = 0
    events: list[tuple[float, int, list[tuple[int, int]], int]] = field(default_factory=list)
    order: int = 0

    def segment(self) -> int:
        self.next_segment += 1
        return self.next_segment

    def emit(self, t_s: float, segments: list[tuple[int, int]], output_length: int) -> None:
        self.order += 1
        self.events.append((t_s, self.order, list(segments), output_length))

    def lognormal(self, median: float, sigma: float, lo: float, hi: float) -> int:
        return int(min(hi, max(lo, self.rng.lognormvariate(math.log(median), sigma))))

    def zipf_pick(self, n: int, s: float = 1.1) -> int:
        weights = [1.0 / (k + 1) ** s for k in range(n)]
        return self.rng.choices(range(n), weights=weights)[0]


def _prompts(gen: _Gen, count: int, median_tokens: float, lo: float, hi: float) -> list[tuple[int, int]]:
    return [(gen.segment(), gen.lognormal(median_tokens, 0.6, lo, hi)) for _ in range(count)]


def _conversation(
    gen: _Gen,
    history: list[tuple[int, int]],
    turns: int,
    start: float,
    made: int,
    requests: int,
    *,
    user: Callable[[], int],
    answer: Callable[[], int],
    think: Callable[[], float],
) -> int:
    """One session of up to `turns` turns from `start`: each sends the whole history plus the user's new message,
    and the answer becomes context of the next turn.  Returns the requests made so far (stops at `requests`)."""
    turn_t = start
    for _ in range(turns):
        if made >= requests:
            break
        history.append((gen.segment(), user()))
        out = answer()
        gen.emit(turn_t, history, out)
        made += 1
        history.append((gen.segment(), out))
        turn_t += think()
    return made


def _chat(gen: _Gen, requests: int, t0: float = 0.0, rate: float = 4.0) -> None:
    """Multi-turn sessions: the history grows every turn and is resent whole."""
    system = _prompts(gen, 8, 1500, 300, 6000)
    t = t0
    made = 0
    while made < requests:
        t += gen.rng.expovariate(rate / 5.0)  # session arrivals; ~5 turns a session on average
        history = [system[gen.zipf_pick(len(system))]]
        turns = 1 + min(40, int(gen.rng.expovariate(1 / 4.0)))
        made = _conversation(
            gen, history, turns, t, made, requests,
            user=lambda: gen.lognormal(300, 1.0, 20, 8000),
            answer=lambda: gen.lognormal(250, 0.8, 10, 2000),
            think=lambda: gen.lognormal(45, 1.0, 3, 1800),
        )  # fmt: skip


def _agent(gen: _Gen, requests: int, t0: float = 0.0, rate: float = 4.0) -> None:
    """Tool-call loops over a long shared tool prompt: each iteration appends a tool result."""
    tools = _prompts(gen, 4, 6000, 2000, 16000)
    t = t0
    made = 0
    while made < requests:
        t += gen.rng.expovariate(rate / 12.0)  # ~12 iterations a task
        context = [tools[gen.zipf_pick(len(tools), 1.3)], (gen.segment(), gen.lognormal(800, 0.8, 50, 8000))]
        step_t = t
        steps = 2 + min(60, int(gen.rng.expovariate(1 / 10.0)))
        for _ in range(steps):
            if made >= requests:
                break
            out = gen.lognormal(120, 0.7, 10, 1500)
            gen.emit(step_t, context, out)
            made += 1
            context.append((gen.segment(), out))  # the tool call the model wrote
            context.append((gen.segment(), gen.lognormal(1200, 1.0, 30, 12000)))  # its result
            step_t += gen.lognormal(4, 0.8, 0.5, 120)


def _rag(gen: _Gen, requests: int, t0: float = 0.0, rate: float = 4.0) -> None:
    """One-off questions over documents: shared system prompt + document + question; some documents recur."""
    system = _prompts(gen, 3, 800, 200, 3000)
    popular = [(gen.segment(), gen.lognormal(6000, 0.8, 500, 60000)) for _ in range(max(10, requests // 40))]
    t = t0
    for _ in range(requests):
        t += gen.rng.expovariate(rate)
        sys_prompt = system[gen.zipf_pick(len(system))]
        if gen.rng.random() < 0.3:
            doc = popular[gen.zipf_pick(len(popular), 0.9)]
        else:
            doc = (gen.segment(), gen.lognormal(6000, 0.8, 500, 60000))
        question = (gen.segment(), gen.lognormal(60, 0.6, 5, 600))
        gen.emit(t, [sys_prompt, doc, question], gen.lognormal(200, 0.8, 10, 2000))


def _mixed(gen: _Gen, requests: int, t0: float = 0.0, rate: float = 4.0) -> None:
    _chat(gen, requests * 4 // 10, t0, rate * 0.4)
    _agent(gen, requests * 3 // 10, t0, rate * 0.3)
    _rag(gen, requests - requests * 4 // 10 - requests * 3 // 10, t0, rate * 0.3)


def _sysprompt(gen: _Gen, requests: int, t0: float = 0.0, rate: float = 4.0) -> None:
    """Long shared system prompts, each followed by one or two short turns of a unique conversation."""
    apps = _prompts(gen, 24, 5000, 1500, 16000)
    t = t0
    made = 0
    while made < requests:
        t += gen.rng.expovariate(rate / 1.3)
        history = [apps[gen.zipf_pick(len(apps), 1.0)]]
        turns = 1 + (gen.rng.random() < 0.3)
        made = _conversation(
            gen, history, turns, t, made, requests,
            user=lambda: gen.lognormal(150, 0.8, 10, 2000),
            answer=lambda: gen.lognormal(200, 0.8, 10, 1500),
            think=lambda: gen.lognormal(30, 1.0, 3, 600),
        )  # fmt: skip


def _sessions(gen: _Gen, requests: int, t0: float = 0.0, rate: float = 4.0) -> None:
    """Long sessions re-sending a growing prefix; one pause in five lasts many minutes (a resumed session)."""
    system = _prompts(gen, 4, 3000, 1000, 8000)
    t = t0
    made = 0
    while made < requests:
        t += gen.rng.expovariate(rate / 15.0)  # ~15 turns a session
        history = [system[gen.zipf_pick(len(system))]]
        turns = 3 + min(80, int(gen.rng.expovariate(1 / 12.0)))
        made = _conversation(
            gen, history, turns, t, made, requests,
            user=lambda: gen.lognormal(200, 1.0, 10, 6000),
            answer=lambda: gen.lognormal(400, 0.8, 20, 3000),
            # one pause in five: resumed later
            think=lambda: (
                gen.lognormal(1200, 0.7, 300, 7200) if gen.rng.random() < 0.2 else gen.lognormal(40, 0.8, 3, 600)
            ),
        )  # fmt: skip


WORKLOADS: dict[str, Callable[..., None]] = {
    "chat": _chat,
    "agent": _agent,
    "rag": _rag,
    "mixed": _mixed,
    "sysprompt": _sysprompt,
    "sessions": _sessions,
}


def generate(workload: str, *, requests: int = 4000, seed: int = 0, rate: float = 4.0) -> list[TraceRequest]:
    """A deterministic trace of `requests` requests (arriving at about `rate` a second) of `workload`."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r} (one of {', '.join(WORKLOADS)})")
    if requests < 0:
        raise ValueError(f"requests must not be negative: {requests}")
    gen = _Gen(random.Random(f"{workload}:{seed}"))
    WORKLOADS[workload](gen, requests, 0.0, rate)
    gen.events.sort(key=lambda e: (e[0], e[1]))
    out = []
    for t_s, _, segments, output_length in gen.events[:requests]:
        ids, tokens = gen.interner.blocks(segments)
        out.append(TraceRequest(int(t_s * 1000), tokens, output_length, tuple(ids)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.tracegen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="mixed")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate", type=float, default=4.0, help="requests a second (arrival rate)")
    parser.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    trace = generate(args.workload, requests=args.requests, seed=args.seed, rate=args.rate)
    if args.output == "-":
        write_trace(trace, sys.stdout)
    else:
        with open(args.output, "w", encoding="utf-8") as fh:
            write_trace(trace, fh)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
