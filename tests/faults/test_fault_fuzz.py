"""Fuzzing the inputs kvfs reads from a shared mount it does not control: block files and directory names.

A block file damaged in any way (several random edits: overwrites, truncation, growth, a splice of another
block) must load either as a hit with exactly the bytes that were stored or as a counted miss: never wrong KV,
never an exception.  Any directory or file name under the root (including bytes that are not UTF-8) must
leave `scan_tree` working and the catalog holding only well-formed blocks.  (Journal segments are fuzzed in
tests/faults/test_fault_journal.py and tests/kvfs/test_journal.py.)
"""

from __future__ import annotations

import os

import pytest
from faultlib import Store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvfs.blockfile import HEADER_SIZE, BlockIdentity, check_block_file, load_block
from kvfs.catalog import Catalog
from kvfs.layout import parse_block_relpath
from kvfs.scan import scan_tree

edits = st.lists(
    st.one_of(
        st.tuples(st.just("overwrite"), st.integers(min_value=0), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(b"")),
        st.tuples(st.just("append"), st.just(0), st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("splice"), st.integers(min_value=0), st.just(b"")),
    ),
    min_size=1,
    max_size=4,
)


@given(payload=st.binary(min_size=1, max_size=9000), edits=edits, out_buffer=st.booleans())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_damaged_block_is_exact_or_a_miss(
    tmp_path_factory: pytest.TempPathFactory, payload: bytes, edits: list, out_buffer: bool
) -> None:
    store = Store(tmp_path_factory.mktemp("fuzz") / "root")
    path = store.block(1, payload=payload)
    other = store.block(2, payload=payload[::-1] + b"x")  # a sound block of the same namespace to splice from
    raw = bytearray(path.read_bytes())
    for kind, where, data in edits:
        at = where % (len(raw) + 1)
        if kind == "overwrite":
            raw[at : at + len(data)] = data
        elif kind == "truncate":
            del raw[at:]
        elif kind == "append":
            raw += data
        else:  # another block's bytes from `at` on: a torn rename or a confused writer
            raw[at:] = other.read_bytes()[at:]
    path.write_bytes(bytes(raw))
    ident = BlockIdentity(store.fingerprint, b"key-1")
    out = bytearray(len(payload) + HEADER_SIZE) if out_buffer else None
    result = load_block(path, ident, out)
    if result.ok:
        got = result.payload if out is None else bytes(out[: result.nbytes])
        assert got == payload  # a hit is only ever the stored bytes
        assert check_block_file(path, store.fingerprint) is None
    else:
        assert result.reason is not None


name_bytes = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
)


@given(names=st.lists(st.tuples(name_bytes, st.sampled_from(["dir", "file", "nsdir"])), max_size=12))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_names_under_the_root_leave_scan_working(
    tmp_path_factory: pytest.TempPathFactory, names: list[tuple[bytes, str]]
) -> None:
    base = tmp_path_factory.mktemp("names")
    store = Store(base / "root")
    for n in range(3):
        store.block(n)
    root_b = os.fsencode(store.root)
    for raw, kind in names:
        if kind == "nsdir":  # shaped like a namespace, with a block-shaped file inside
            raw = raw + b"_0123456789ab_r0"
        target = os.path.join(root_b, raw)
        if os.path.lexists(target):
            continue
        if kind == "file":
            with open(target, "wb") as fh:
                fh.write(b"x")
        else:
            bucket = os.path.join(target, b"abc", b"de_g0")
            os.makedirs(bucket)
            with open(os.path.join(bucket, b"abcde" + b"0" * 27 + b".bin"), "wb") as fh:
                fh.write(b"y" * 10)
    with Catalog.open(f"sqlite:///{base / 'catalog.db'}", root=store.root) as catalog:
        result = scan_tree(store.root, catalog)
        keys = [row.key for row in catalog.iter_blocks()]
    assert result.files >= 3
    for key in keys:
        assert parse_block_relpath(key.relpath()) == key
        key.namespace.encode("utf-8")  # everything catalogued can be stored and journaled
    assert {store.key(n) for n in range(3)} <= set(keys)
