"""Gather a chunk's KV from every layer into one contiguous staging buffer, and scatter it back.

Device-agnostic torch: the same code runs on CPU tensors (CI) and CUDA tensors.  The payload of a block file is
layer-major: for each layer of the group, the chunk's blocks back to back (`pages[l]` bytes each).  Layer-major
lets each layer be one `index_select(..., out=)` straight into its contiguous span (CPU), and on CUDA a single
Triton kernel copies all (layer, block) pages of a file in one launch into device staging, followed by one large
device-to-host copy into pinned memory.  Without Triton, CUDA uses one `index_select` per layer (L launches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

try:  # Triton ships with CUDA builds of torch; CPU builds may lack it.
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the torch build
    _HAS_TRITON = False


if _HAS_TRITON:

    @triton.jit
    def _pages_kernel(
        base_ptrs,  # int64[L]: address of block 0 of each layer tensor
        strides,  # int64[L]: bytes between consecutive blocks of each layer
        block_ids,  # int64[n]
        staging,  # int64* (8-byte words) contiguous staging, layer-major
        n_blocks,
        stage_blocks,  # blocks per layer in the staging payload (>= first + n_blocks)
        first,  # staging block index of block_ids[0]
        page_words,
        TO_STAGING: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        layer = pid // n_blocks
        j = pid % n_blocks
        base = tl.load(base_ptrs + layer)
        stride = tl.load(strides + layer)
        block = tl.load(block_ids + j)
        page_ptr = (base + block * stride).to(tl.pointer_type(tl.int64))
        stage_ptr = staging + (layer.to(tl.int64) * stage_blocks + first + j) * page_words
        for start in range(0, page_words, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < page_words
            if TO_STAGING:
                tl.store(stage_ptr + offs, tl.load(page_ptr + offs, mask=mask), mask=mask)
            else:
                tl.store(page_ptr + offs, tl.load(stage_ptr + offs, mask=mask), mask=mask)


@dataclass
class GroupCopier:
    """The layers of one KV cache group: `tensors[l]` is an int8 view `(num_blocks, >= pages[l])`."""

    tensors: Sequence[torch.Tensor]
    pages: Sequence[int]
    use_triton: bool = True

    def __post_init__(self) -> None:
        if len(self.tensors) != len(self.pages) or not self.tensors:
            raise ValueError("a group needs one page size per layer tensor, and at least one layer")
        self.device = self.tensors[0].device
        self.row_bytes = sum(self.pages)
        # Layer views trimmed to the unpadded page, so index_select copies exactly the payload bytes.
        self._views = [t[:, :p] for t, p in zip(self.tensors, self.pages, strict=True)]
        uniform = len(set(self.pages)) == 1 and self.pages[0] % 8 == 0
        aligned = all(
            t.data_ptr() % 8 == 0 and (t.stride(0) * t.element_size()) % 8 == 0 for t in self.tensors
        )
        self.triton = bool(
            _HAS_TRITON and self.use_triton and self.device.type == "cuda" and uniform and aligned
        )
        if self.triton:
            self._bases = torch.tensor(
                [t.data_ptr() for t in self.tensors], dtype=torch.int64, device=self.device
            )
            self._strides = torch.tensor(
                [t.stride(0) * t.element_size() for t in self.tensors], dtype=torch.int64, device=self.device
            )

    def warm_up(self, num_blocks: int) -> None:
        """Gather `num_blocks` copies of block 0 and scatter them back onto it (its bytes unchanged), so that the
        kernels of a whole chunk's store and load compile now, at engine start: on a fresh host Triton takes
        seconds, which the first request's stores and loads would otherwise wait for."""
        ids = torch.zeros(num_blocks, dtype=torch.int64, device=self.device)
        staging = torch.empty(self.payload_bytes(num_blocks), dtype=torch.uint8, device=self.device)
        self.gather(ids, staging)
        self.scatter(staging, ids, file_blocks=num_blocks)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def payload_bytes(self, num_blocks: int) -> int:
        return num_blocks * self.row_bytes

    def _ids(self, block_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        if isinstance(block_ids, torch.Tensor):
            return block_ids.to(device=self.device, dtype=torch.int64)
        return torch.as_tensor(list(block_ids), dtype=torch.int64).to(self.device)

    def layer_spans(self, num_blocks: int, first: int = 0, count: int | None = None) -> list[tuple[int, int]]:
        """(offset, length) in the payload of blocks [first, first+count) of every layer."""
        count = num_blocks - first if count is None else count
        spans, offset = [], 0
        for page in self.pages:
            spans.append((offset + first * page, count * page))
            offset += num_blocks * page
        return spans

    def gather(self, block_ids: Sequence[int] | torch.Tensor, out: torch.Tensor) -> None:
        """Copy the pages of `block_ids` of every layer into `out` (flat uint8/int8 on this device)."""
        ids = self._ids(block_ids)
        n = ids.numel()
        if self.triton:
            words = out.view(torch.int64)
            _pages_kernel[(len(self.tensors) * n,)](
                self._bases,
                self._strides,
                ids,
                words,
                n,
                n,
                0,
                self.pages[0] // 8,
                TO_STAGING=True,
                BLOCK=1024,
            )
            return
        offset = 0
        flat = out.view(torch.int8)
        for view, page in zip(self._views, self.pages, strict=True):
            dst = flat[offset : offset + n * page].view(n, page)
            torch.index_select(view, 0, ids, out=dst)
            offset += n * page

    def scatter(
        self,
        src: torch.Tensor,
        block_ids: Sequence[int] | torch.Tensor,
        *,
        file_blocks: int,
        first: int = 0,
    ) -> None:
        """Copy blocks [first, first+len(block_ids)) of a `file_blocks`-block payload in `src` into the pages
        of `block_ids`."""
        ids = self._ids(block_ids)
        n = ids.numel()
        flat = src.view(torch.int8)
        if self.triton:
            _pages_kernel[(len(self.tensors) * n,)](
                self._bases,
                self._strides,
                ids,
                flat.view(torch.int64),
                n,
                file_blocks,
                first,
                self.pages[0] // 8,
                TO_STAGING=False,
                BLOCK=1024,
            )
            return
        for view, page, (off, length) in zip(
            self._views, self.pages, self.layer_spans(file_blocks, first, n), strict=True
        ):
            view.index_copy_(0, ids, flat[off : off + length].view(n, page))
