"""Bit-exact GPU -> block file -> GPU round trips through the connector's data path, on a real GPU.

Imports torch, kvfs core and the connector's vLLM-free modules only (GPU machines for this check need no vLLM).
Cases: Llama-3.1-8B-like KV (32 layers, 8 KV heads, head dim 128, bf16, 16-token GPU blocks, 256-token files),
a Llama-3.1-70B TP4 rank (80 layers, 2 KV heads per rank), loads starting and ending inside a chunk, two KV
groups with different page sizes, stores ordered after the compute stream, and the failure injections (file
deleted, truncated, bit-flipped, foreign) which must end as reported misses with the KV cache untouched.  Each
case runs with the Triton copy kernel and with the per-layer torch fallback.

    python -m tools.datapath.gpu_check [--root /dev/shm/kvfs-gpu-check]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import torch

from connector import devhash
from connector.copier import GroupCopier
from connector.iopool import FileOp, IoPool, JobDone
from connector.naming import file_identity_key
from kvfs.blockfile import (
    HEADER_SIZE,
    BlockIdentity,
    MissReason,
    check_block_file,
    encode_header,
    read_header,
    store_block,
)
from kvfs.checksum import CHECKSUM_ALGO_ID, PIECES_ALGO_ID, checksum64

BLOCK_TOKENS = 16
BPC = 16  # 256-token files
FP = b"\x42" * 32


def make_kv(
    layers: int, heads: int, head_dim: int, num_blocks: int, device: torch.device, seed: int
) -> list[torch.Tensor]:
    """vLLM's per-layer cache, one block's page contiguous: (blocks, tokens, K/V, heads, dim) bf16."""
    g = torch.Generator(device=device).manual_seed(seed)
    return [
        torch.randn(
            num_blocks, BLOCK_TOKENS, 2, heads, head_dim, generator=g, device=device, dtype=torch.float32
        ).to(torch.bfloat16)
        for _ in range(layers)
    ]


def canonical(kv: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    views = [t.view(t.shape[0], -1).view(torch.int8) for t in kv]
    return views, [v.shape[1] for v in views]


def file_op(
    root: str, copier: GroupCopier, key: bytes, ids: list[int], *, load: bool, job: int, first: int = 0
) -> FileOp:
    path = os.path.join(
        root, "gpucheck_0123456789ab", key.hex()[:3], key.hex()[3:5] + "_g0", key.hex() + ".kvfs"
    )
    rng = (0, BPC) if load else (0, len(ids))
    return FileOp(
        job_id=job,
        is_load=load,
        path=path,
        ident=BlockIdentity(FP, file_identity_key(key, *rng)),
        copier=copier,
        block_ids=ids,
        first=first,
        file_blocks=BPC if load else len(ids),
    )


def run_job(pool: IoPool, job: int, ops: list[FileOp], load: bool):  # type: ignore[no-untyped-def]
    pool.submit(job, ops, is_load=load)
    assert pool.wait([job], timeout=120), f"job {job} did not finish"
    (done,) = [d for d in pool.take_finished() if d.job_id == job]
    return done


def equal_pages(a: list[torch.Tensor], a_ids: list[int], b: list[torch.Tensor], b_ids: list[int]) -> bool:
    ia = torch.tensor(a_ids, device=a[0].device)
    ib = torch.tensor(b_ids, device=b[0].device)
    return all(
        torch.equal(x.index_select(0, ia).view(torch.int16), y.index_select(0, ib).view(torch.int16))
        for x, y in zip(a, b, strict=True)
    )


class Checker:
    def __init__(self, root: str, device: torch.device) -> None:
        self.root = root
        self.device = device
        self.failures: list[str] = []
        self.passed = 0
        self.job = 0

    def check(self, name: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {name}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failures.append(name)

    def next_job(self) -> int:
        self.job += 1
        return self.job

    def transfer(
        self, pool: IoPool, copier: GroupCopier, keys: list[bytes], ids: list[list[int]], *, load: bool
    ):  # type: ignore[no-untyped-def]
        """One job: file `keys[i]` stored from (or loaded into) blocks `ids[i]`, whole chunks; its completion."""
        job = self.next_job()
        ops = [file_op(self.root, copier, k, i, load=load, job=job) for k, i in zip(keys, ids, strict=True)]
        return run_job(pool, job, ops, load=load)

    def load_bad_file(
        self,
        pool: IoPool,
        copier: GroupCopier,
        kv: list[torch.Tensor],
        key: bytes,
        target: list[int],
    ) -> tuple[JobDone, bool]:
        """Load `key`'s (damaged) file into blocks `target`: the job's result, and whether those blocks of `kv`
        are bit for bit what they were before (a bad file must never reach the KV cache)."""
        before = [t[target].clone() for t in kv]
        job = self.next_job()
        done = run_job(pool, job, [file_op(self.root, copier, key, target, load=True, job=job)], load=True)
        untouched = all(
            torch.equal(t[target].view(torch.int16), b.view(torch.int16))
            for t, b in zip(kv, before, strict=True)
        )
        return done, untouched

    def model_case(self, label: str, layers: int, heads: int, *, triton: bool, num_blocks: int = 96) -> None:
        dev = self.device
        src_kv, dst_kv = (
            make_kv(layers, heads, 128, num_blocks, dev, 1),
            make_kv(layers, heads, 128, num_blocks, dev, 2),
        )
        src_v, pages = canonical(src_kv)
        dst_v, _ = canonical(dst_kv)
        src_c = GroupCopier(src_v, pages, use_triton=triton)
        dst_c = GroupCopier(dst_v, pages, use_triton=triton)
        assert src_c.triton == (triton and dev.type == "cuda")
        file_bytes = src_c.payload_bytes(BPC)
        pool = IoPool(threads=4, max_file_bytes=file_bytes, device=dev, store_budget_s=60)
        try:
            tag = f"{label} ({'triton' if src_c.triton else 'torch'}, {file_bytes >> 20} MiB files)"
            keys = [os.urandom(32) + b"\0\0\0\0" for _ in range(3)]
            perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(3)).tolist()
            src_ids = [perm[i * BPC : (i + 1) * BPC] for i in range(3)]
            # Store after the compute stream: overwrite the source pages on the current stream just before.
            torch.cuda.synchronize(dev) if dev.type == "cuda" else None
            big = torch.randn(4096, 4096, device=dev)
            for _ in range(4):
                big = (
                    big @ big / 4096
                )  # keep the compute stream busy so an unordered copy would read stale KV
            for t in src_kv:
                t[src_ids[0]] = 1.5
            ops = [
                file_op(self.root, src_c, k, ids, load=False, job=0)
                for k, ids in zip(keys, src_ids, strict=True)
            ]
            job = self.next_job()
            for o in ops:
                o.job_id = job
            if dev.type == "cuda":
                ev = torch.cuda.Event()
                ev.record(torch.cuda.current_stream(dev))
                for o in ops:
                    o.event = ev
            done = run_job(pool, job, ops, load=False)
            self.check(f"{tag}: store 3 files", done.success and done.nbytes == 3 * file_bytes)
            dst_ids = [perm[48 + i * BPC : 48 + (i + 1) * BPC] for i in range(3)]
            done = self.transfer(pool, dst_c, keys, dst_ids, load=True)
            self.check(f"{tag}: load 3 files", done.success)
            self.check(
                f"{tag}: bit-exact, incl. pages written on the compute stream just before the store",
                all(equal_pages(src_kv, s, dst_kv, d) for s, d in zip(src_ids, dst_ids, strict=True))
                and bool((dst_kv[0][dst_ids[0]] == 1.5).all()),
            )
            # The checksums the GPU computed are the format's: the CPU verifier accepts every stored file.
            paths = [
                file_op(self.root, src_c, k, ids, load=False, job=0).path
                for k, ids in zip(keys, src_ids, strict=True)
            ]
            headers = [read_header(p) for p in paths]
            self.check(
                f"{tag}: stored files pass the CPU check (checksum algorithm {PIECES_ALGO_ID})",
                all(check_block_file(p) is None for p in paths)
                and all(not isinstance(h, MissReason) and h.checksum_algo == PIECES_ALGO_ID for h in headers),
            )
            # A file with the older whole-payload checksum (algorithm 1) still loads bit-exact.
            with open(paths[0], "rb") as fh:
                raw = fh.read()
            old_header = encode_header(
                BlockIdentity(FP, file_identity_key(keys[0], 0, BPC)),
                file_bytes,
                checksum64(raw[HEADER_SIZE:]),
                algo=CHECKSUM_ALGO_ID,
            )
            with open(paths[0], "wb") as fh:
                fh.write(old_header + raw[HEADER_SIZE:])
            job = self.next_job()
            old_ids = perm[30:46]
            done = run_job(
                pool, job, [file_op(self.root, dst_c, keys[0], old_ids, load=True, job=job)], load=True
            )
            self.check(
                f"{tag}: a file with the whole-payload checksum (algorithm 1) loads bit-exact",
                done.success and equal_pages(src_kv, src_ids[0], dst_kv, old_ids),
            )
            # Partial chunks: a load entering chunk 1 at block 5, and one ending chunk 2 after 7 blocks.
            job = self.next_job()
            a_ids, b_ids = perm[80:91], perm[69:76]
            ops = [
                file_op(self.root, dst_c, keys[1], a_ids, load=True, job=job, first=5),
                file_op(self.root, dst_c, keys[2], b_ids, load=True, job=job, first=0),
            ]
            done = run_job(pool, job, ops, load=True)
            self.check(
                f"{tag}: partial chunks (blocks 5-15 of one file, 0-6 of another)",
                done.success
                and equal_pages(src_kv, src_ids[1][5:], dst_kv, a_ids)
                and equal_pages(src_kv, src_ids[2][:7], dst_kv, b_ids),
            )
            # Failure injections between lookup and load.
            for how in ("deleted", "truncated", "bitflip", "foreign"):
                path = ops[0].path
                if not os.path.exists(path):
                    job = self.next_job()
                    run_job(
                        pool,
                        job,
                        [file_op(self.root, src_c, keys[1], src_ids[1], load=False, job=job)],
                        load=False,
                    )
                inject(path, how, file_bytes)
                target = perm[30:46]
                done, untouched = self.load_bad_file(pool, dst_c, dst_kv, keys[1], target)
                self.check(
                    f"{tag}: {how} file -> reported miss of its 16 blocks, KV untouched",
                    (not done.success) and sorted(done.failed_block_ids) == sorted(target) and untouched,
                )
                if os.path.exists(path):
                    os.unlink(path)
        finally:
            pool.shutdown()

    def two_groups(self, *, triton: bool) -> None:
        dev = self.device
        g0s, g1s = make_kv(16, 8, 128, 40, dev, 5), make_kv(16, 4, 128, 40, dev, 6)
        g0d, g1d = make_kv(16, 8, 128, 40, dev, 7), make_kv(16, 4, 128, 40, dev, 8)
        c = [GroupCopier(*canonical(x), use_triton=triton) for x in (g0s, g1s, g0d, g1d)]
        pool = IoPool(threads=2, max_file_bytes=c[0].payload_bytes(BPC), device=dev)
        try:
            k0, k1 = os.urandom(32) + b"\0\0\0\0", os.urandom(32) + b"\0\0\0\1"
            job = self.next_job()
            ok = run_job(
                pool,
                job,
                [
                    file_op(self.root, c[0], k0, list(range(16)), load=False, job=job),
                    file_op(self.root, c[1], k1, list(range(16, 32)), load=False, job=job),
                ],
                load=False,
            ).success
            job = self.next_job()
            ok &= run_job(
                pool,
                job,
                [
                    file_op(self.root, c[2], k0, list(range(20, 36)), load=True, job=job),
                    file_op(self.root, c[3], k1, list(range(4, 20)), load=True, job=job),
                ],
                load=True,
            ).success
            ok &= equal_pages(g0s, list(range(16)), g0d, list(range(20, 36))) and equal_pages(
                g1s, list(range(16, 32)), g1d, list(range(4, 20))
            )
            self.check(f"two KV groups, 64 KiB and 32 KiB pages ({'triton' if c[0].triton else 'torch'})", ok)
        finally:
            pool.shutdown()

    def graphs_case(self, *, triton: bool) -> None:
        """Repeated stores and loads of the same shapes through one I/O thread, so its two slots capture CUDA
        graphs and replay them: every round bit-exact with new block ids and new files, a partial load, and a
        bit flip after capture still caught before anything reaches the KV cache."""
        dev = self.device
        blocks = 8 * BPC
        src_kv, dst_kv = make_kv(32, 8, 128, blocks, dev, 11), make_kv(32, 8, 128, blocks, dev, 12)
        src_c, dst_c = (GroupCopier(*canonical(x), use_triton=triton) for x in (src_kv, dst_kv))
        phase = "CUDA graphs" if dev.type == "cuda" else "two-slot pipeline"
        tag = f"{phase} ({'triton' if src_c.triton else 'torch'})"
        pool = IoPool(threads=1, max_file_bytes=src_c.payload_bytes(BPC), device=dev, store_budget_s=60)
        try:
            ok = True
            for rnd in range(6):
                keys = [os.urandom(32) + b"\0\0\0\0" for _ in range(2)]
                perm = torch.randperm(blocks, generator=torch.Generator().manual_seed(20 + rnd)).tolist()
                src_ids, dst_ids = (
                    [perm[:BPC], perm[BPC : 2 * BPC]],
                    [perm[2 * BPC : 3 * BPC], perm[3 * BPC : 4 * BPC]],
                )
                ok &= self.transfer(pool, src_c, keys, src_ids, load=False).success
                ok &= self.transfer(pool, dst_c, keys, dst_ids, load=True).success
                ok &= all(equal_pages(src_kv, s, dst_kv, d) for s, d in zip(src_ids, dst_ids, strict=True))
                # A partial load: blocks 4..11 of the first file.
                job = self.next_job()
                part = perm[4 * BPC : 4 * BPC + 8]
                partial = file_op(self.root, dst_c, keys[0], part, load=True, job=job, first=4)
                ok &= run_job(pool, job, [partial], load=True).success
                ok &= equal_pages(src_kv, src_ids[0][4:12], dst_kv, part)
            captured = pool.captured_graphs()
            # On CPU there is nothing to capture: the same rounds check the two-slot pipeline alone.
            self.check(
                f"{tag}: 6 rounds of stores, loads and partial loads bit-exact; {captured} graphs captured",
                ok and (captured > 0 or dev.type != "cuda"),
            )
            path = file_op(self.root, dst_c, keys[1], [], load=True, job=0).path
            inject(path, "bitflip", src_c.payload_bytes(BPC))
            target = perm[5 * BPC : 6 * BPC]
            done, untouched = self.load_bad_file(pool, dst_c, dst_kv, keys[1], target)
            self.check(
                f"{tag}: bit flip after capture -> reported miss of its 16 blocks, KV untouched",
                not done.success and sorted(done.failed_block_ids) == sorted(target) and untouched,
            )
        finally:
            pool.shutdown()

    def warm_up_case(self, *, triton: bool) -> None:
        """`IoPool.warm_up_loads`: every slot's load graphs captured before the first load, the KV cache's bytes
        unchanged by it, and the first loads after it replay (no new load graph) and are bit-exact."""
        dev = self.device
        blocks = 8 * BPC
        src_kv, dst_kv = make_kv(32, 8, 128, blocks, dev, 21), make_kv(32, 8, 128, blocks, dev, 22)
        src_c, dst_c = (GroupCopier(*canonical(x), use_triton=triton) for x in (src_kv, dst_kv))
        tag = f"load warm-up ({'triton' if dst_c.triton else 'torch'})"
        before = [t.clone() for t in dst_kv]
        pool = IoPool(threads=2, max_file_bytes=src_c.payload_bytes(BPC), device=dev, store_budget_s=60)
        try:
            warmed = pool.warm_up_loads([dst_c], BPC)
            per_slot = 2 if pool.device_checksums else 1  # copy+hash and scatter, or copy+scatter
            expected = pool.threads * 2 * per_slot if dev.type == "cuda" else 0
            unchanged = all(
                torch.equal(a.view(torch.int16), b.view(torch.int16))
                for a, b in zip(before, dst_kv, strict=True)
            )
            self.check(
                f"{tag}: {warmed} load graphs captured (expected {expected}), KV cache unchanged",
                warmed == expected and unchanged,
            )
            keys = [os.urandom(32) + b"\0\0\0\0" for _ in range(4)]
            src_ids = [list(range(i * BPC, (i + 1) * BPC)) for i in range(4)]
            dst_ids = [list(range((7 - i) * BPC, (8 - i) * BPC)) for i in range(4)]
            ok = self.transfer(pool, src_c, keys, src_ids, load=False).success
            after_stores = pool.captured_graphs()
            ok &= self.transfer(pool, dst_c, keys, dst_ids, load=True).success
            ok &= all(equal_pages(src_kv, s, dst_kv, d) for s, d in zip(src_ids, dst_ids, strict=True))
            self.check(
                f"{tag}: first loads after it bit-exact and captured no new load graph",
                ok and pool.captured_graphs() == after_stores,
            )
        finally:
            pool.shutdown()


def inject(path: str, how: str, file_bytes: int) -> None:
    if how == "deleted":
        os.unlink(path)
    elif how == "truncated":
        os.truncate(path, HEADER_SIZE + file_bytes // 2)
    elif how == "bitflip":
        with open(path, "r+b") as fh:
            fh.seek(HEADER_SIZE + file_bytes // 3)
            b = fh.read(1)
            fh.seek(HEADER_SIZE + file_bytes // 3)
            fh.write(bytes([b[0] ^ 4]))
    elif how == "foreign":
        os.unlink(path)
        store_block(path, bytes(file_bytes), BlockIdentity(b"\x13" * 32, b"other-model-key"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=None, help="scratch directory (default: a new one under /dev/shm or /tmp)"
    )
    parser.add_argument("--cpu", action="store_true", help="run on CPU tensors (no GPU needed)")
    parser.add_argument(
        "--device",
        default="cuda",
        help="GPU to run on, e.g. cuda:1 (a TP rank's GPU: the I/O threads must not fall back to GPU 0)",
    )
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)  # as a vLLM worker does for its rank (the I/O threads must set theirs)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    root = args.root or tempfile.mkdtemp(prefix="kvfs-gpu-check-", dir=base)
    print(
        f"kvfs gpu_check: device checksums {'on' if device.type == 'cuda' and devhash.HAS_TRITON else 'off'}; device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), torch {torch.__version__}, root {root}"
    )
    checker = Checker(root, device)
    started = time.monotonic()
    try:
        for triton in (True, False):
            checker.model_case("Llama-3.1-8B", 32, 8, triton=triton)
            checker.model_case("Llama-3.1-70B TP4 rank", 80, 2, triton=triton)
            checker.two_groups(triton=triton)
            checker.graphs_case(triton=triton)
            checker.warm_up_case(triton=triton)
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{checker.passed} passed, {len(checker.failures)} failed in {time.monotonic() - started:.1f} s")
    for name in checker.failures:
        print(f"FAILED: {name}")
    return 1 if checker.failures else 0


if __name__ == "__main__":
    sys.exit(main())
