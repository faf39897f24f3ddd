"""Payload checksums computed on the GPU, so the connector's I/O threads never pass over a payload with the CPU.

Block files carry checksum algorithm 2 (`kvfs.checksum`): xxh3-64 over the xxh3-64 digests of the payload's
1 MiB pieces.  The pieces are independent, so one Triton program hashes one whole piece of a payload that is
already in device memory (the staging buffer a store gathers into, or a load copies into before it scatters),
and only 8 bytes per piece come back to the host.  The kernel is XXH3's long-input path written out for one
fixed length (a multiple of its 1 KiB block): the 8 accumulator lanes are kept as even/odd halves, because a
stripe adds each lane's data word to its neighbour's accumulator; a block's 16 stripes are summed at once
(the per-stripe updates are plain additions), then scrambled; the last stripe and the merge follow the
reference.  A tail shorter than a piece is hashed on the host by the caller.  The same kernel runs in Triton's
interpreter (TRITON_INTERPRET=1) on CPU tensors, which is how CI checks it against the `xxhash` package.
"""

from __future__ import annotations

import struct

import torch

from kvfs.checksum import HASH_PIECE_BYTES

try:  # Triton ships with CUDA builds of torch; CPU builds may lack it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the torch build
    HAS_TRITON = False

# XXH3's default 192-byte secret and primes (from its specification).
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_PRIME32_1, _PRIME32_2, _PRIME32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
_PRIME64 = (
    0x9E3779B185EBCA87,
    0xC2B2AE3D27D4EB4F,
    0x165667B19E3779F9,
    0x85EBCA77C2B2AE63,
    0x27D4EB2F165667C5,
)
_AVALANCHE = 0x165667919E3779F9
_MASK64 = (1 << 64) - 1

# Offsets into the constants table the kernel reads (int64 words; uint64 values stored as their bit patterns).
_INIT, _KEYS_E, _KEYS_O, _SCR, _LAST, _MERGE, _START, _MULS = 0, 8, 72, 136, 144, 152, 160, 161
_TABLE_WORDS = 164


def _r64(offset: int) -> int:
    return int(struct.unpack_from("<Q", _SECRET, offset)[0])


def constants_table(piece_bytes: int) -> list[int]:
    """The kernel's constants for pieces of `piece_bytes` (unsigned 64-bit values, in table order)."""
    init = [
        _PRIME32_3,
        _PRIME64[0],
        _PRIME64[1],
        _PRIME64[2],
        _PRIME64[3],
        _PRIME32_2,
        _PRIME64[4],
        _PRIME32_1,
    ]
    table = [0] * _TABLE_WORDS
    table[_INIT : _INIT + 8] = init[0::2] + init[1::2]  # even lanes, then odd lanes
    for s in range(16):  # stripe s of a block uses secret bytes [8 s, 8 s + 64)
        for j in range(4):
            table[_KEYS_E + 4 * s + j] = _r64(8 * s + 16 * j)
            table[_KEYS_O + 4 * s + j] = _r64(8 * s + 16 * j + 8)
    scramble = [_r64(128 + 8 * i) for i in range(8)]
    table[_SCR : _SCR + 8] = scramble[0::2] + scramble[1::2]
    last = [_r64(192 - 64 - 7 + 8 * i) for i in range(8)]
    table[_LAST : _LAST + 8] = last[0::2] + last[1::2]
    table[_MERGE : _MERGE + 8] = [_r64(11 + 16 * j) for j in range(4)] + [
        _r64(11 + 16 * j + 8) for j in range(4)
    ]
    table[_START] = piece_bytes * _PRIME64[0] & _MASK64
    table[_MULS : _MULS + 3] = [_PRIME32_1, _AVALANCHE, 0xFFFFFFFF]
    return table


if HAS_TRITON:

    @triton.jit
    def _fold64(a, b, lo32):
        """Low xor high half of the 128-bit product a * b (uint64), from 32-bit halves."""
        a_lo = a & lo32
        a_hi = a >> 32
        b_lo = b & lo32
        b_hi = b >> 32
        ll = a_lo * b_lo
        hl = a_hi * b_lo
        lh = a_lo * b_hi
        hh = a_hi * b_hi
        cross = (ll >> 32) + (hl & lo32) + lh
        upper = (hl >> 32) + (cross >> 32) + hh
        lower = (cross << 32) | (ll & lo32)
        return lower ^ upper

    @triton.jit
    def _xxh3_pieces_kernel(data, table, out, PIECE_WORDS: tl.constexpr, STAGES: tl.constexpr):
        pid = tl.program_id(0)
        base = data + pid.to(tl.int64) * PIECE_WORDS
        s = tl.arange(0, 16)[:, None]
        j4 = tl.arange(0, 4)
        j = j4[None, :]
        u64 = tl.uint64
        key_e = tl.load(table + 8 + 4 * s + j).to(u64, bitcast=True)
        key_o = tl.load(table + 72 + 4 * s + j).to(u64, bitcast=True)
        acc_e = tl.load(table + j4).to(u64, bitcast=True)
        acc_o = tl.load(table + 4 + j4).to(u64, bitcast=True)
        scr_e = tl.load(table + 136 + j4).to(u64, bitcast=True)
        scr_o = tl.load(table + 140 + j4).to(u64, bitcast=True)
        prime32_1 = tl.load(table + 161).to(u64, bitcast=True)
        avalanche = tl.load(table + 162).to(u64, bitcast=True)
        lo32 = tl.load(table + 163).to(u64, bitcast=True)
        offs = 8 * s + 2 * j  # word of the even lane of each (stripe, lane pair) in a 128-word block
        for blk in tl.range(PIECE_WORDS // 128 - 1, num_stages=STAGES):
            d_e = tl.load(base + blk * 128 + offs).to(u64, bitcast=True)
            d_o = tl.load(base + blk * 128 + offs + 1).to(u64, bitcast=True)
            x_e = d_e ^ key_e
            x_o = d_o ^ key_o
            acc_e += tl.sum((x_e & lo32) * (x_e >> 32) + d_o, axis=0)
            acc_o += tl.sum((x_o & lo32) * (x_o >> 32) + d_e, axis=0)
            acc_e = (acc_e ^ (acc_e >> 47) ^ scr_e) * prime32_1
            acc_o = (acc_o ^ (acc_o >> 47) ^ scr_o) * prime32_1
        # The last block: its first 15 stripes, then the input's last stripe with the "last" secret.
        last = base + (PIECE_WORDS - 128)
        d_e = tl.load(last + offs).to(u64, bitcast=True)
        d_o = tl.load(last + offs + 1).to(u64, bitcast=True)
        x_e = d_e ^ key_e
        x_o = d_o ^ key_o
        live = s < 15
        acc_e += tl.sum(tl.where(live, (x_e & lo32) * (x_e >> 32) + d_o, 0), axis=0)
        acc_o += tl.sum(tl.where(live, (x_o & lo32) * (x_o >> 32) + d_e, 0), axis=0)
        tail = base + (PIECE_WORDS - 8) + 2 * j4
        t_e = tl.load(tail).to(u64, bitcast=True)
        t_o = tl.load(tail + 1).to(u64, bitcast=True)
        y_e = t_e ^ tl.load(table + 144 + j4).to(u64, bitcast=True)
        y_o = t_o ^ tl.load(table + 148 + j4).to(u64, bitcast=True)
        acc_e += (y_e & lo32) * (y_e >> 32) + t_o
        acc_o += (y_o & lo32) * (y_o >> 32) + t_e
        merge_e = tl.load(table + 152 + j4).to(u64, bitcast=True)
        merge_o = tl.load(table + 156 + j4).to(u64, bitcast=True)
        h = tl.load(table + 160).to(u64, bitcast=True) + tl.sum(
            _fold64(acc_e ^ merge_e, acc_o ^ merge_o, lo32), axis=0
        )
        h = h ^ (h >> 37)
        h = h * avalanche
        h = h ^ (h >> 32)
        tl.store(out + pid, h.to(tl.int64, bitcast=True))


class DeviceHasher:
    """Piece digests of payloads in one device's memory (one per I/O thread: it owns its tables)."""

    def __init__(self, device: torch.device, piece_bytes: int = HASH_PIECE_BYTES, stages: int = 3) -> None:
        if not HAS_TRITON:
            raise RuntimeError("device hashing needs Triton")
        if piece_bytes % 1024 or piece_bytes < 1024:
            raise ValueError("piece size must be a multiple of 1 KiB")
        self.device = device
        self.piece_bytes = piece_bytes
        self.stages = (
            stages  # software pipelining of the block loop: the next blocks load while one is hashed
        )
        signed = [v - (1 << 64) if v >= 1 << 63 else v for v in constants_table(piece_bytes)]
        self._table = torch.tensor(signed, dtype=torch.int64, device=device)

    def full_pieces(self, nbytes: int) -> int:
        return nbytes // self.piece_bytes

    def digests(self, payload: torch.Tensor, out: torch.Tensor) -> int:
        """Launch (on the current stream) the digests of every whole piece of the uint8 `payload` into the int64
        tensor `out` (its first n entries, n returned); the caller hashes the tail after n pieces itself."""
        n = self.full_pieces(payload.numel())
        if n:
            words = payload[: n * self.piece_bytes].view(torch.int64)
            _xxh3_pieces_kernel[(n,)](
                words, self._table, out, PIECE_WORDS=self.piece_bytes // 8, STAGES=self.stages, num_warps=1
            )
        return n


def self_test(device: torch.device) -> str | None:
    """Hash two random pieces on `device` and compare with the `xxhash` package: None when they agree, else why
    not (a Triton build or GPU where the kernel miscompiles or fails must not be trusted with checksums)."""
    import xxhash

    try:
        hasher = DeviceHasher(device)
        data = torch.randint(0, 256, (2 * hasher.piece_bytes,), dtype=torch.uint8, device=device)
        out = torch.empty(2, dtype=torch.int64, device=device)
        hasher.digests(data, out)
        got = as_unsigned(out.tolist())
    except Exception as exc:  # noqa: BLE001 - any failure means: hash on the CPU instead
        return f"{type(exc).__name__}: {exc}"
    raw = data.cpu().numpy().tobytes()
    want = [
        xxhash.xxh3_64_intdigest(raw[i * hasher.piece_bytes : (i + 1) * hasher.piece_bytes]) for i in range(2)
    ]
    return None if got == want else f"device digests {got} differ from xxhash's {want}"


def as_unsigned(values: list[int]) -> list[int]:
    """int64 digests read back from a tensor, as the unsigned values `kvfs.checksum` uses."""
    return [v & _MASK64 for v in values]
