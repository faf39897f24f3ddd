"""A writer process for the evictor tests: publishes kvfs block files and journals them, like the connector.

Run as `python writer.py '<json spec>'`; spec keys: root, model, count, payload, times (journal time per block),
mtimes (file atime/mtime per block, optional), writer_id, fmt ("kvfs" journals; "bin" writes stock raw files
with no journal), accesses ([[index, time], ...] access records after the stores).  Prints one JSON line per
block: {"relpath", "size"}.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from kvfs.blockfile import BlockIdentity, StoreOutcome, store_block
from kvfs.journal import JournalWriter
from kvfs.layout import (
    BlockKey,
    fingerprint_sha256,
    kvfs_fields,
    namespace_name,
    temp_name_for,
    write_namespace_config,
)


def fields_for(model: str, fmt: str) -> dict[str, Any]:
    base = {"model_name": model, "hash_block_size": 16, "tp_size": 1, "dtype": "bfloat16"}
    return kvfs_fields(base) if fmt == "kvfs" else base


def namespace_for(model: str, fmt: str = "kvfs") -> str:
    return namespace_name(fields_for(model, fmt))


def key_for(model: str, index: int, fmt: str = "kvfs") -> BlockKey:
    block_hash = hashlib.sha256(f"{model}/{index}".encode()).hexdigest()
    return BlockKey(namespace_for(model, fmt), 0, 0, block_hash, fmt)  # type: ignore[arg-type]


def main(spec: dict[str, Any]) -> None:
    root = Path(spec["root"])
    model = spec["model"]
    fmt = spec.get("fmt", "kvfs")
    fields = fields_for(model, fmt)
    write_namespace_config(root, fields)
    payload = os.urandom(spec.get("payload", 4096))
    times: list[float] = spec["times"]
    mtimes: list[float] | None = spec.get("mtimes")
    writer = (
        JournalWriter(root, writer_id=spec.get("writer_id", f"test-{os.getpid()}")) if fmt == "kvfs" else None
    )
    out = []
    for i, when in enumerate(times):
        key = key_for(model, spec.get("first", 0) + i, fmt)
        path = root / key.relpath()
        if fmt == "kvfs":
            ident = BlockIdentity(fingerprint_sha256(fields), bytes.fromhex(key.block_hash))
            result = store_block(path, payload, ident)
            if result.outcome is StoreOutcome.FAILED:
                raise SystemExit(f"store failed: {result.error}")
        else:  # stock vLLM fs tier: temp file then rename, no header, no journal
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(temp_name_for(path.name))
            tmp.write_bytes(payload)
            if mtimes is not None:  # times set before the rename: the file appears complete, as it was
                os.utime(tmp, (mtimes[i], mtimes[i]))
            os.replace(tmp, path)
        if mtimes is not None:
            os.utime(path, (mtimes[i], mtimes[i]))
        size = path.stat().st_size
        if writer is not None:
            writer.record_store(key, size, chain_pos=i, now=when)
        out.append({"relpath": key.relpath(), "size": size})
    if writer is not None:
        for index, when in spec.get("accesses", []):
            writer.record_access(key_for(model, index, fmt), now=when)
        writer.close()
    for item in out:
        print(json.dumps(item))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
