"""The bounded cache of decoded blocks (byte budget, least recently used out), on the host or
on the training device, so later epochs neither download nor decode again."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

import torch

from trainer.data.blocks import Block, resolve_device


class BlockCache:
    """Decoded blocks keyed by (object, row group, window, columns), at most `max_bytes` in all.

    With `device="cuda"` the blocks stay in GPU memory, so a split that fits is read,
    decoded and copied once, then served from the device for every later epoch. A block
    larger than the whole budget is never kept."""

    def __init__(self, max_bytes: int, device: torch.device | str = "cpu") -> None:
        if max_bytes < 0:
            raise ValueError(f"cache budget must be at least 0 bytes, got {max_bytes}")
        self.max_bytes = max_bytes
        self.device = resolve_device(device)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._blocks: OrderedDict[Hashable, Block] = OrderedDict()
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
                return None
            self._blocks.move_to_end(key)
            self.hits += 1
            return block

    def put(self, key: Hashable, block: Block) -> Block:
        """Keep a block (moved to the cache's device), evicting the least recently used ones
        to make room; returns the block as stored, or the one given when it is not kept."""
        size = block.nbytes
        if size > self.max_bytes:
            return block
        # Blocks reaching the GPU come from pinned memory, so this copy can be asynchronous.
        stored = block.to(self.device, non_blocking=self.device.type == "cuda")
        if stored.lease is not None:
            stored.lease.hold()  # pooled memory stays out of reuse while cached
        with self._lock:
            gone = []
            old = self._blocks.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
                gone.append(old)
            while self._blocks and self.bytes + size > self.max_bytes:
                _, oldest = self._blocks.popitem(last=False)
                self.bytes -= oldest.nbytes
                self.evictions += 1
                gone.append(oldest)
            self._blocks[key] = stored
            self.bytes += size
        for block_out in gone:
            if block_out.lease is not None:
                block_out.lease.let_go()
        return stored

    def clear(self) -> None:
        with self._lock:
            gone = list(self._blocks.values())
            self._blocks.clear()
            self.bytes = 0
        for block in gone:
            if block.lease is not None:
                block.lease.let_go()
