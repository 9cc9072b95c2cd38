"""The cache of decoded blocks for later epochs: it keeps the first blocks that fit its budget
and never evicts, on the training device, sized from the memory that device has free."""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from pathlib import Path

import torch

from trainer.data.blocks import Block, resolve_device

DEVICE_SHARE = 0.75
"""Of the memory a GPU has free once the model is on it, the share the cache may take..."""
DEVICE_RESERVE = 1 << 30
"""... less this much, left for activations, the optimizer state and the allocator."""
HOST_SHARE = 0.5
"""Of the host memory available, the share the caches of all local ranks may take."""


class BlockCache:
    """Decoded blocks keyed by (object, row group, window, columns), at most `max_bytes`.

    Every epoch but the first visits the row groups in a new random order, so a block's next
    use is equally likely anywhere in the next epoch: whatever is evicted, least recently
    used or otherwise, is as likely to be needed soon as what is kept, and an LRU cache over
    a reshuffled epoch mostly evicts blocks just before they come up (a cache holding half
    the split served under a fifth of the next epoch). So the cache keeps the first blocks
    that fit and then refuses the rest: each later epoch is served from it in exactly the
    share of the split that fits, and a block that will never be kept costs no insert, no
    copy and no eviction.

    With `device="cuda"` the blocks stay in GPU memory, so what fits is read, decoded and
    copied once, then served from the device for every later epoch."""

    def __init__(self, max_bytes: int, device: torch.device | str = "cpu") -> None:
        if max_bytes < 0:
            raise ValueError(f"cache budget must be at least 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.device = resolve_device(device)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.refused = 0
        """Blocks offered once the budget was spent, and not kept."""
        self.offered_bytes = 0
        """Bytes of the distinct blocks offered, kept or not: what the whole split takes."""
        self._blocks: dict[Hashable, Block] = {}
        self._refused: set[Hashable] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._blocks

    def get(self, key: Hashable) -> Block | None:
        with self._lock:
            block = self._blocks.get(key)
            if block is None:
                self.misses += 1
            else:
                self.hits += 1
            return block

    def put(self, key: Hashable, block: Block) -> Block:
        """Keep a block (moved to the cache's device) if it fits in what is left of the
        budget, or in place of the block kept under the same key; returns the block as
        stored, or the one given when it is not kept."""
        size = block.nbytes
        with self._lock:
            old = self._blocks.get(key)
            if old is None and key not in self._refused:
                self.offered_bytes += size
            room = self.max_bytes - self.bytes + (old.nbytes if old is not None else 0)
            if size > room:
                self.refused += 1
                self._refused.add(key)
                return block
            # Reserve the room now, so that concurrent puts never overshoot the budget.
            self.bytes += size - (old.nbytes if old is not None else 0)
            self._blocks.pop(key, None)
        # Blocks reaching the GPU come from pinned memory, so this copy can be asynchronous.
        stored = block.to(self.device, non_blocking=self.device.type == "cuda")
        if stored.lease is not None:
            stored.lease.hold()  # pooled memory stays out of reuse while cached
        with self._lock:
            self._blocks[key] = stored
        if old is not None and old.lease is not None:
            old.lease.let_go()
        return stored

    def clear(self) -> None:
        with self._lock:
            gone = list(self._blocks.values())
            self._blocks.clear()
            self._refused.clear()
            self.bytes = self.offered_bytes = 0
        for block in gone:
            if block.lease is not None:
                block.lease.let_go()


def cache_budget(device: torch.device, requested_gb: float | None, local_ranks: int = 1) -> int:
    """The cache's budget in bytes: `requested_gb` when given; otherwise on a GPU
    `DEVICE_SHARE` of its free memory less `DEVICE_RESERVE` (call it once the model is
    there), and on the CPU `HOST_SHARE` of the host's available memory, split between the
    `local_ranks` processes that share the host."""
    if requested_gb is not None:
        return int(requested_gb * 1e9)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return max(int(free * DEVICE_SHARE) - DEVICE_RESERVE, 0)
    return int(host_available_bytes() * HOST_SHARE) // max(local_ranks, 1)


def host_available_bytes() -> int:
    """Memory the host can give without swapping: `MemAvailable` on Linux, else the free
    physical pages."""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
