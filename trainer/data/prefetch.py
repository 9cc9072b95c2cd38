"""Row groups to blocks on the device, ahead of need: cache lookups, reads on a thread pool
behind a bounded queue, recycled or pinned host memory, and the copy to the device."""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import torch

from trainer.data.blocks import Block, BlockSpec, BufferPool, PartitionFiles, Unit
from trainer.data.cache import BlockCache
from trainer.data.plan import DatasetPlan
from trainer.storage.base import ObjectStore


class BlockReader:
    """Reads one split's row groups into blocks on `device`.

    `files_in_flight` threads read and decode (pyarrow and numpy release the GIL, so they
    overlap each other and the training step); at most `ahead` blocks wait, done or not,
    in front of the consumer, which bounds memory whatever the relative speeds."""

    def __init__(
        self,
        plan: DatasetPlan,
        store: ObjectStore,
        spec: BlockSpec,
        *,
        device: torch.device,
        files_in_flight: int,
        ahead: int,
        cache: BlockCache | None,
    ) -> None:
        self.spec, self.device, self.cache = spec, device, cache
        self.files_in_flight, self.ahead = files_in_flight, ahead
        self.files = PartitionFiles(plan, store, keep_open=max(16, 4 * files_in_flight))
        largest = max((rg.rows for p in plan.partitions for rg in p.row_groups), default=0)
        self.buffers = BufferPool(
            largest * (len(spec.features) + 1),
            pin=device.type == "cuda",
            keep=2 * ahead + files_in_flight,
        )
        self._threads: ThreadPoolExecutor | None = None
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def key(self, unit: Unit) -> tuple[object, ...]:
        """Cache key: the object, the row group, and everything that shapes the block."""
        s = self.spec
        return (self.files.uri(unit.part), unit.group, s.lo, s.hi, s.features, s.label, s.keep_ts)

    def stream(self, units: Sequence[Unit]) -> Generator[tuple[Unit, Block, bool], None, None]:
        """`(unit, block on the device, cache hit)` for each unit, in order."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self.files_in_flight, "loader-read")
        pending: deque[tuple[Unit, Future[Block] | Block]] = deque()
        todo = iter(units)
        try:
            while True:
                while len(pending) < self.ahead and (unit := next(todo, None)) is not None:
                    hit = self.cache.get(self.key(unit)) if self.cache is not None else None
                    if hit is None:
                        job: Future[Block] | Block = self._threads.submit(
                            self.files.read, unit, self.spec, self.buffers
                        )
                    else:
                        job = hit
                    pending.append((unit, job))
                if not pending:
                    return
                unit, job = pending.popleft()
                if isinstance(job, Block):
                    if self.buffers.pin and not job.data.is_cuda and not job.data.is_pinned():
                        # A host cache filled by a CPU pass (feature statistics): pin each
                        # block once, so every later epoch's copy to the GPU is asynchronous.
                        job = replace(job, data=job.data.pin_memory())
                        if self.cache is not None:
                            self.cache.put(self.key(unit), job)
                    yield unit, self._to_device(job), True
                    continue
                block = job.result()
                if self.cache is not None and block.nbytes <= self.cache.max_bytes:
                    # A cached block is shared from now on: never recycle its memory.
                    block = self.cache.put(self.key(unit), replace(block, buffer=None))
                yield unit, self._to_device(block), False
        finally:
            for _, job in pending:
                if isinstance(job, Future):
                    job.cancel()

    def release(self, block: Block) -> None:
        """The consumer is done with a block: its host memory may serve the next one."""
        self.buffers.give(block)

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
        self.files.close()

    def _to_device(self, block: Block) -> Block:
        if block.data.device == self.device:
            return block
        if self._copy_stream is None:
            return block.to(self.device)
        # The copy runs on a side stream, so it overlaps the kernels already queued; the
        # compute stream waits for it, and record_stream stops the caching allocator from
        # handing the memory to another stream while compute may still read it. The source
        # is pinned, so the copy is a true asynchronous DMA.
        compute = torch.cuda.current_stream(self.device)
        self._copy_stream.wait_stream(compute)
        with torch.cuda.stream(self._copy_stream):
            moved = block.to(self.device, non_blocking=True)
        compute.wait_stream(self._copy_stream)
        moved.data.record_stream(compute)
        return moved
