"""Layout: path <-> BlockKey round trips (property-based), rejection of non-block paths, namespaces, config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvfs.layout import (
    BlockKey,
    canonical_json,
    fingerprint_sha256,
    is_temp_name,
    journal_dir,
    kvfs_fields,
    model_of_namespace,
    namespace_name,
    parse_block_relpath,
    parse_namespace_dir,
    read_namespace_config,
    temp_name_for,
    write_namespace_config,
)

HEX = "0123456789abcdef"
models = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._/", min_size=1, max_size=40
)
digests = st.text(alphabet=HEX, min_size=12, max_size=12)
namespaces = st.builds(lambda m, d: f"{m.replace('/', '_')}_{d}", models, digests)
block_keys = st.builds(
    BlockKey,
    namespace=namespaces,
    rank=st.none() | st.integers(min_value=0, max_value=4096),
    group=st.integers(min_value=0, max_value=10_000),
    block_hash=st.text(alphabet=HEX, min_size=16, max_size=128),
    fmt=st.sampled_from(["kvfs", "bin"]),
)


@given(block_keys)
@settings(max_examples=300)
def test_relpath_round_trip(key: BlockKey) -> None:
    assert parse_block_relpath(key.relpath()) == key


@given(block_keys)
@settings(max_examples=100)
def test_relpath_shape(key: BlockKey) -> None:
    parts = key.relpath().split("/")
    assert len(parts) == 4
    assert parts[1] == key.block_hash[:3]
    assert parts[2] == f"{key.block_hash[3:5]}_g{key.group}"
    assert parts[3] == f"{key.block_hash}.{key.fmt}"


@given(st.text(max_size=80))
@settings(max_examples=300)
def test_parser_never_raises_on_arbitrary_text(text: str) -> None:
    key = parse_block_relpath(text)
    assert key is None or key.relpath() == text


GOOD = "org_model_0123456789ab_r0/abc/de_g0/abcdef0123456789.kvfs"


@pytest.mark.parametrize(
    "relpath",
    [
        "org_model_0123456789ab_r0/abc/de_g0/abcdef0123456789.tmp",  # temp file
        "org_model_0123456789ab_r0/abc/de_g0/abcdef0123456789.kvfs_1234.tmp",
        "org_model_0123456789ab_r0/abd/de_g0/abcdef0123456789.kvfs",  # bucket 1 does not match the hash
        "org_model_0123456789ab_r0/abc/df_g0/abcdef0123456789.kvfs",  # bucket 2 does not match the hash
        "org_model_0123456789ab_r0/abc/de_gx/abcdef0123456789.kvfs",
        "org_model_0123456789ab_r0/abc/de_g0/ABCDEF0123456789.kvfs",  # upper-case hex
        "org_model_0123456789ab_r0/abc/de_g0/abcdef012345678.kvfs",  # 15 hex chars: too short
        "org_model_0123456789ab_r0/abc/de_g0/abcdef0123456789.bin.bak",
        "org_model_0123456789ab_r0/abc/de_g0/abcdef0123456789.txt",
        "org_model_0123456789ab_r0/config.json",
        "org_model_0123456789ab/config.json",
        "org_model_nodigest_r0/abc/de_g0/abcdef0123456789.kvfs",  # namespace without a digest
        "org_model_0123456789ab_r0/abc/de_g0/extra/abcdef0123456789.kvfs",
        "/org_model_0123456789ab_r0/abc/de_g0/abcdef0123456789.kvfs",
        "../org_model_0123456789ab_r0/abc/de_g0/abcdef0123456789.kvfs",
        ".kvfs/journal/host-1-abc.00000001.jnl",
        "",
    ],
)
def test_non_block_paths_are_rejected(relpath: str) -> None:
    assert parse_block_relpath(relpath) is None


def test_good_path_parses_with_rank_and_without() -> None:
    key = parse_block_relpath(GOOD)
    assert key == BlockKey("org_model_0123456789ab", 0, 0, "abcdef0123456789", "kvfs")
    no_rank = parse_block_relpath("org_model_0123456789ab/abc/de_g7/abcdef0123456789.bin")
    assert no_rank == BlockKey("org_model_0123456789ab", None, 7, "abcdef0123456789", "bin")


def test_namespace_name_matches_vllm_scheme() -> None:
    fields = {"model_name": "meta-llama/Llama-3.1-8B", "tp_size": 1, "dtype": "bfloat16"}
    expected_digest = fingerprint_sha256(fields).hex()[:12]
    name = namespace_name(fields)
    assert name == f"meta-llama_Llama-3.1-8B_{expected_digest}"
    assert canonical_json(fields) == json.dumps(fields, sort_keys=True, separators=(",", ":"))
    assert parse_namespace_dir(name) == (name, None)
    assert parse_namespace_dir(f"{name}_r3") == (name, 3)
    assert parse_namespace_dir("no-digest-here") is None
    assert model_of_namespace(name) == "meta-llama_Llama-3.1-8B"
    assert model_of_namespace("not-a-namespace") == "not-a-namespace"


def test_kvfs_namespace_never_equals_stock_namespace() -> None:
    fields = {"model_name": "m", "tp_size": 1}
    assert namespace_name(kvfs_fields(fields)) != namespace_name(fields)
    assert len(fingerprint_sha256(fields)) == 32


@given(st.text(alphabet="abcdef0123456789.", min_size=1, max_size=40))
@settings(max_examples=50)
def test_temp_names_are_unique_and_recognised(final: str) -> None:
    a, b = temp_name_for(final), temp_name_for(final)
    assert a != b
    assert a.startswith(final + "_") and is_temp_name(a)
    assert parse_block_relpath(f"org_model_0123456789ab/abc/de_g0/{a}") is None


def test_a_forked_child_draws_other_temp_names_than_its_parent() -> None:
    # Temp names come from a private generator: a child must not repeat its parent's next names (the same block
    # stored by both at once would then fail O_EXCL instead of one of them publishing).
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next names, then out without running the parent's teardown
        os.write(write, "\n".join(temp_name_for("b") for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as fh:
        child = set(fh.read().split())
    assert len(child) == 4 and not child & {temp_name_for("b") for _ in range(4)}


def test_config_written_atomically_once_and_read_back(tmp_path: Path) -> None:
    fields = kvfs_fields({"model_name": "org/m", "tp_size": 2})
    path = write_namespace_config(tmp_path, fields)
    assert path.parent.name == namespace_name(fields)
    assert read_namespace_config(tmp_path, path.parent.name) == fields
    assert os.stat(path).st_mode & 0o777 == 0o660  # exact, whatever the umask
    # A second call with the file present does not rewrite it.
    before = path.stat().st_mtime_ns
    write_namespace_config(tmp_path, fields)
    assert path.stat().st_mtime_ns == before
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temp left behind


def test_read_config_of_missing_or_corrupt_namespace(tmp_path: Path) -> None:
    assert read_namespace_config(tmp_path, "nope_0123456789ab") is None
    (tmp_path / "bad_0123456789ab").mkdir()
    (tmp_path / "bad_0123456789ab" / "config.json").write_text("{not json")
    assert read_namespace_config(tmp_path, "bad_0123456789ab") is None
    (tmp_path / "list_0123456789ab").mkdir()
    (tmp_path / "list_0123456789ab" / "config.json").write_text("[1, 2]")
    assert read_namespace_config(tmp_path, "list_0123456789ab") is None


def test_journal_dir(tmp_path: Path) -> None:
    assert journal_dir(tmp_path) == tmp_path / ".kvfs" / "journal"
