"""The tiered path in a real engine (vLLM 0.33): GPU → vLLM's CPU tier → `KvfsTier`, against GPU → CPU tier →
vLLM's stock `fs` tier and the CPU tier alone, all behind vLLM's own `TieringOffloadingSpec`.

Per mode and prompt, in one run:
  * writer engine: recompute (cold) TTFT; the stores cascade from the CPU tier to the secondary tier, counted as
    the files that appear under the root (one per 256-token chunk; waited for, with a deadline); then the
    **local hit** (`reset_prefix_cache`, the KV comes back from the CPU tier in RAM), median of `--reps`;
  * reader engine (a new process, empty CPU tier, same root): the **cross-replica hit** — the secondary tier
    promotes the files into the CPU tier, then vLLM loads them — then its later (local) hits.
Greedy tokens of every hit are compared with the first recompute's (dummy weights are fixed by the seed).  The
table prints local hits ÷ CPU tier alone (goal ≤ 1.05) and kvfs's cross-replica hit ÷ the stock tier's (goal ≤
1.0 in time, i.e. ≥ 1.0× its speed).  A local hit never reaches the secondary tier, yet the CPU tier alone's
took 0.174-0.229 s in three engines of one machine (docs/benchmarks.md, session 11): `--rounds N` runs the
writers N times, the modes' order rotated each round, and prints each round's local hits ÷ the same round's CPU
tier alone and their median, so the ratio is read across engines, not from one pair.  For the GPU machine with
vLLM 0.33 (recipe: ../shared/gpu/README.md); the pure parts (arguments, tier configuration, table, the
orchestration with its engines stood in for) are tested on CPU.

    python -m tools.e2e.tiered [--modes cpu,kvfs,fs] [--prompts 32k,64k] [--root /dev/shm/kvfs-tiered]
        [--reps 3] [--rounds 1] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tools.e2e.engine import CHUNK_TOKENS, Engine, prompt_tokens
from tools.e2e.main import (
    _brief,
    _fmt,
    _progress,
    add_engine_arguments,
    check_engine_arguments,
    child_main,
    engine_base,
    median,
    ratio,
    run_child,
)

MODES = ("cpu", "kvfs", "fs")
# The tier behind the CPU tier as the tables name it.
MODE_NAMES = {"cpu": "none (CPU tier alone)", "kvfs": "KvfsTier", "fs": "vLLM fs tier"}
MODULE = "tools.e2e.tiered"  # what the engine processes run (`--child`)
GIB = 1 << 30


def secondary_tiers(mode: str, root: str) -> list[dict[str, Any]]:
    """`secondary_tiers` of TieringOffloadingSpec for a mode: none (CPU tier alone), kvfs's tier or vLLM's own
    `fs` tier (its defaults: 16 read and 16 write threads, O_DIRECT where its probe passes)."""
    if mode == "cpu":
        return []
    if mode == "kvfs":
        return [{"type": "KvfsTier", "module_path": "connector.tier", "root": root}]
    if mode == "fs":
        return [{"type": "fs", "root_dir": root}]
    raise ValueError(f"unknown mode {mode!r}: {', '.join(MODES)}")


def tier_files(root: str) -> int:
    """Finished chunk files under `root`: kvfs's `*.kvfs` and the stock tier's `*.bin` (their temporary files, the
    O_DIRECT probe and the config files end otherwise)."""
    n = 0
    for _d, _dirs, files in os.walk(root):
        n += sum(1 for f in files if f.endswith((".kvfs", ".bin")))
    return n


def wait_for_files(
    engine: Any, root: str, expected: int, timeout: float = 120.0, stall_s: float = 10.0
) -> tuple[int, float]:
    """Until `expected` chunk files exist under `root` (or the count stops growing for `stall_s`, or the
    deadline): vLLM submits a step's stores at the next step, so a tiny request pushes the last ones through.
    (files, seconds)."""
    started = time.perf_counter()
    last, last_change = -1, started
    while True:
        engine.generate([7] * 16)
        n = tier_files(root)
        now = time.perf_counter()
        if n != last:
            last, last_change = n, now
        if n >= expected or now - last_change > stall_s or now - started > timeout:
            return n, now - started
        time.sleep(0.25)


def _hit(engine: Any, tokens: list[int], ref: list[int], variant: str) -> dict[str, Any]:
    engine.llm.reset_prefix_cache()
    out, ttft, wall = engine.generate(tokens)
    return {"variant": variant, "ttft_s": ttft, "wall_s": wall, "tokens_equal": out == ref}


def _engine_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What tools.e2e.engine.Engine builds: the tiering spec with this mode's secondary tier."""
    return {**spec, "connector": "tiered", "secondary_tiers": secondary_tiers(spec["mode"], spec["root"])}


def writer_phase(spec: Mapping[str, Any]) -> dict[str, Any]:
    engine = Engine(_engine_spec(spec))
    res: dict[str, Any] = {"startup_s": engine.startup_s, "prompts": []}
    for n, seed in zip(spec["sizes"], spec["seeds"], strict=True):
        entry: dict[str, Any] = {"tokens": n}
        try:
            tokens = prompt_tokens(n, seed, spec["vocab"])
            before = tier_files(spec["root"]) if spec["mode"] != "cpu" else 0
            ref, cold, _ = engine.generate(tokens)
            entry.update(cold_ttft_s=cold, ref_tokens=ref, chunks=n // CHUNK_TOKENS)
            if spec["mode"] != "cpu":
                files, waited = wait_for_files(engine, spec["root"], before + n // CHUNK_TOKENS)
                entry.update(stored=files - before, settle_s=waited)
            else:
                engine.generate([7] * 16)
                time.sleep(2.0)
            entry["hits"] = [_hit(engine, tokens, ref, "local") for _ in range(spec["reps"])]
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next prompt
            entry["error"] = repr(exc)
        res["prompts"].append(entry)
        _progress(f"tiered writer {spec['mode']} {n}: {_brief(entry)}")
    return res


def reader_phase(spec: Mapping[str, Any]) -> dict[str, Any]:
    engine = Engine(_engine_spec(spec))
    res: dict[str, Any] = {"startup_s": engine.startup_s, "prompts": []}
    refs = spec.get("refs") or [None] * len(spec["sizes"])
    for n, seed, ref in zip(spec["sizes"], spec["seeds"], refs, strict=True):
        entry: dict[str, Any] = {"tokens": n}
        try:
            tokens = prompt_tokens(n, seed, spec["vocab"])
            if ref is None:
                raise RuntimeError("no reference tokens from the writer")
            first = _hit(engine, tokens, ref, "cross")
            again = [_hit(engine, tokens, ref, "again") for _ in range(spec["reps"])]
            entry.update(
                first_ttft_s=first["ttft_s"],
                again_ttft_s=median([h["ttft_s"] for h in again]),
                tokens_equal=first["tokens_equal"] and all(h["tokens_equal"] for h in again),
            )
        except Exception as exc:  # noqa: BLE001 - record it and go on with the next prompt
            entry["error"] = repr(exc)
        res["prompts"].append(entry)
        _progress(f"tiered reader {spec['mode']} {n}: {_brief(entry)}")
    return res


# ---- result maths (pure) ----


@dataclass
class TierRow:
    mode: str
    tokens: int
    recompute_s: float | None
    local_s: float | None  # writer's hits after reset_prefix_cache (median): from the CPU tier in RAM
    cross_s: float | None  # a new engine's first hit: from the secondary tier's files
    cross_again_s: float | None
    stored: int | None
    chunks: int
    tokens_equal: bool
    errors: tuple[str, ...] = ()


def rows_of(results: Mapping[str, Any]) -> list[TierRow]:
    rows = []
    for mode, phases in results.get("modes", {}).items():
        reader = {p["tokens"]: p for p in phases.get("reader", {}).get("prompts", [])}
        for w in phases.get("writer", {}).get("prompts", []):
            r = reader.get(w["tokens"], {})
            hits = w.get("hits", [])
            errors = tuple(
                e for e in (phases.get("writer", {}).get("error"), w.get("error"), r.get("error")) if e
            )
            rows.append(
                TierRow(
                    mode=mode,
                    tokens=w["tokens"],
                    recompute_s=w.get("cold_ttft_s"),
                    local_s=median([h["ttft_s"] for h in hits]),
                    cross_s=r.get("first_ttft_s"),
                    cross_again_s=r.get("again_ttft_s"),
                    stored=w.get("stored"),
                    chunks=int(w.get("chunks", 0)),
                    tokens_equal=bool(hits)
                    and all(h["tokens_equal"] for h in hits)
                    and r.get("tokens_equal", True),
                    errors=errors,
                )
            )
    return rows


def phase_errors(results: Mapping[str, Any]) -> list[str]:
    """Engines that failed as a whole (no prompt ran): `mode phase: error` (`mode phase, round N: error` after the
    first round)."""
    return [
        f"{mode} {name}{f', round {i + 1}' if i else ''}: {phase['error']}"
        for i, modes in enumerate(_rounds(results))
        for mode, phases in modes.items()
        for name, phase in phases.items()
        if isinstance(phase, Mapping) and phase.get("error")
    ]


def format_table(rows: Sequence[TierRow]) -> str:
    """Local hits ÷ the CPU tier alone's, cross-replica hits ÷ the stock fs tier's, per prompt length."""
    cpu = {r.tokens: r for r in rows if r.mode == "cpu"}
    fs = {r.tokens: r for r in rows if r.mode == "fs"}
    out = [
        "| tier behind the CPU tier | prompt | recompute | local hit | ÷ CPU tier alone | cross-replica hit"
        " | ÷ stock fs tier | reader's later hits | stored / chunks | tokens equal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.tokens, MODES.index(r.mode) if r.mode in MODES else 9)):
        c, f = cpu.get(r.tokens), fs.get(r.tokens)
        stored = "–" if r.stored is None else f"{r.stored} / {r.chunks}"
        out.append(
            f"| {MODE_NAMES.get(r.mode, r.mode)} | {r.tokens:,} | {_fmt(r.recompute_s, '.3f', ' s')}"
            f" | {_fmt(r.local_s, '.3f', ' s')} | {_fmt(ratio(r.local_s, c.local_s if c else None), '.2f', '×')}"
            f" | {_fmt(r.cross_s, '.3f', ' s')} | {_fmt(ratio(r.cross_s, f.cross_s if f else None), '.2f', '×')}"
            f" | {_fmt(r.cross_again_s, '.3f', ' s')} | {stored} | {'yes' if r.tokens_equal else 'NO'} |"
        )
    errors = [f"- {r.mode} {r.tokens:,}: {e}" for r in rows for e in r.errors]
    return "\n".join(out + (["", "Errors:", *errors] if errors else []))


def round_order(modes: Sequence[str], round_index: int) -> list[str]:
    """The modes' order in round `round_index` (0-based): rotated by one each round, so that no mode's engine
    always starts first (or last) on the machine."""
    k = round_index % len(modes) if modes else 0
    return [*modes[k:], *modes[:k]]


def _rounds(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Each round's modes: round 1 in `modes` (the main table's), later rounds in `rounds`."""
    return [results.get("modes", {}), *results.get("rounds", [])]


def local_ratios(results: Mapping[str, Any]) -> dict[tuple[str, int], list[float]]:
    """Per (mode, prompt) other than the CPU tier alone: each round's local hit ÷ the CPU tier alone's of the same
    round (a round without either is left out)."""
    ratios: dict[tuple[str, int], list[float]] = {}
    for modes in _rounds(results):
        rows = rows_of({"modes": modes})
        cpu = {r.tokens: r.local_s for r in rows if r.mode == "cpu"}
        for r in rows:
            value = ratio(r.local_s, cpu.get(r.tokens))
            if r.mode != "cpu" and value is not None:
                ratios.setdefault((r.mode, r.tokens), []).append(value)
    return ratios


def format_rounds(results: Mapping[str, Any]) -> str:
    """The paired local-hit ratios of every round and their median ('' with a single round)."""
    if not results.get("rounds"):
        return ""
    out = [
        "| tier behind the CPU tier | prompt | local hit ÷ CPU tier alone, each round | median |",
        "|---|---|---|---|",
    ]
    ratios = local_ratios(results)
    for mode, tokens in sorted(ratios, key=lambda k: (k[1], MODES.index(k[0]))):
        each = ratios[(mode, tokens)]
        out.append(
            f"| {MODE_NAMES.get(mode, mode)} | {tokens:,} | {', '.join(f'{r:.2f}' for r in each)}"
            f" | {_fmt(median(each), '.2f', '×')} |"
        )
    return "\n".join(out)


# ---- orchestration (parent) ----


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.e2e.tiered",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_arguments(p, prompts="32k,64k", child_timeout=600.0)
    p.add_argument("--modes", default=",".join(MODES), help="cpu (CPU tier alone), kvfs, fs")
    p.add_argument("--root", default="/dev/shm/kvfs-tiered", help="the shared root (one directory per mode)")
    p.add_argument("--cpu-gib", type=float, default=16.0, help="vLLM's CPU tier size (cpu_bytes_to_use)")
    p.add_argument("--no-reader", action="store_true", help="skip the cross-replica engines")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the writers this many times, the modes' order rotated each round, and print each round's local "
        "hits ÷ the same round's CPU tier alone (the reader engines run in the first round only)",
    )
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes takes some of {', '.join(MODES)}")
    if args.rounds < 1:
        p.error("--rounds takes a positive count")
    check_engine_arguments(p, args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, {"tiered-writer": writer_phase, "tiered-reader": reader_phase})
    work = tempfile.mkdtemp(prefix="kvfs-tiered-")
    base = engine_base(args, work) | {
        "cpu_bytes": int(args.cpu_gib * GIB),
    }
    results: dict[str, Any] = {
        "command": "python -m tools.e2e.tiered " + " ".join(sys.argv[1:] if argv is None else argv),
        "model": args.model,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "modes": {},
    }

    def save() -> None:
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump(results, f, indent=1)

    if args.rounds > 1:
        results["rounds"] = [{} for _ in range(args.rounds - 1)]
    for round_index, modes in enumerate(_rounds(results)):
        for mode in round_order(args.modes, round_index):
            root = os.path.join(args.root, mode)
            shutil.rmtree(root, ignore_errors=True)
            os.makedirs(root)
            phases: dict[str, Any] = {}
            modes[mode] = phases
            spec = {**base, "mode": mode, "root": root, "name": f"tiered-writer-{mode}"}
            phases["writer"] = run_child(args, {**spec, "phase": "tiered-writer"}, work, MODULE)
            save()
            if mode != "cpu" and not args.no_reader and round_index == 0:
                refs = [p.get("ref_tokens") for p in phases["writer"].get("prompts", [])]
                if len(refs) == len(args.prompt_sizes):
                    reader = {**spec, "phase": "tiered-reader", "name": f"tiered-reader-{mode}", "refs": refs}
                    phases["reader"] = run_child(args, reader, work, MODULE)
                    save()
            shutil.rmtree(root, ignore_errors=True)
    table = format_table(rows_of(results))
    rounds = format_rounds(results)
    if rounds:
        table += "\n\nLocal hits, round by round (each ÷ the CPU tier alone of its own round):\n\n" + rounds
    failed = phase_errors(results)
    if failed:
        table += "\n\nEngines that failed:\n" + "\n".join(f"- {e}" for e in failed)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
