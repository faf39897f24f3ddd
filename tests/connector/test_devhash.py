"""The GPU payload hasher computes exactly algorithm 2's piece digests: its Triton kernel runs here in Triton's
interpreter on CPU tensors (a subprocess: the interpreter is chosen when kernels are defined) and is compared
with the `xxhash` package, piece by piece and combined, for several piece sizes and random payloads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton", reason="Triton ships with torch's Linux builds; needed for the device hasher")

CHECK = textwrap.dedent(
    """
    import os, sys, torch, xxhash
    from connector.devhash import DeviceHasher, as_unsigned
    from kvfs.checksum import HASH_PIECE_BYTES, combine_piece_digests, payload_checksum
    assert os.environ.get("TRITON_INTERPRET") == "1"
    torch.manual_seed(0)
    for piece, pieces, tail in ((1024, 5, 0), (4096, 3, 999), (HASH_PIECE_BYTES, 2, 12345)):
        data = torch.randint(0, 256, (pieces * piece + tail,), dtype=torch.uint8)
        out = torch.full((pieces + 1,), -1, dtype=torch.int64)
        hasher = DeviceHasher(torch.device("cpu"), piece)
        assert hasher.digests(data, out) == pieces
        raw = data.numpy().tobytes()
        want = [xxhash.xxh3_64_intdigest(raw[i * piece : (i + 1) * piece]) for i in range(pieces)]
        got = as_unsigned(out[:pieces].tolist())
        assert got == want, (piece, got, want)
        assert out[pieces].item() == -1  # nothing written past the whole pieces
        if piece == HASH_PIECE_BYTES:  # whole pieces on the device + the tail on the host = the file checksum
            tail_digest = xxhash.xxh3_64_intdigest(raw[pieces * piece :])
            assert combine_piece_digests(got + [tail_digest]) == payload_checksum(raw)
    # one flipped bit changes exactly its piece's digest
    data = torch.randint(0, 256, (4 * 1024,), dtype=torch.uint8)
    out, flipped_out = torch.empty(4, dtype=torch.int64), torch.empty(4, dtype=torch.int64)
    hasher = DeviceHasher(torch.device("cpu"), 1024)
    hasher.digests(data, out)
    flipped = data.clone()
    flipped[2 * 1024 + 77] ^= 8
    hasher.digests(flipped, flipped_out)
    assert [a == b for a, b in zip(out.tolist(), flipped_out.tolist())] == [True, True, False, True]
    # the start-up self-test passes, and catches a kernel that computes something else
    from connector import devhash
    assert devhash.self_test(torch.device("cpu")) is None
    real = devhash.constants_table
    devhash.constants_table = lambda piece: [v ^ 1 if i == 0 else v for i, v in enumerate(real(piece))]
    problem = devhash.self_test(torch.device("cpu"))
    assert problem is not None and "differ" in problem, problem
    devhash.constants_table = real
    print("device hasher ok")
    """
)


def test_kernel_matches_xxhash_in_the_triton_interpreter() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device hasher ok" in proc.stdout


def test_piece_size_must_be_whole_kib() -> None:
    import torch

    from connector.devhash import DeviceHasher

    with pytest.raises(ValueError):
        DeviceHasher(torch.device("cpu"), 1000)
