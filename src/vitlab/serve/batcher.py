"""Dynamic batching: requests that arrive together are run as one batch by one inference worker.

Each request puts one preprocessed image in a bounded queue and gets a future. The worker thread
takes the oldest, then whatever else arrives within `max_wait` seconds, up to `max_batch` images
that want the same outputs (attention maps or not), and runs them as one batch. A full queue is
refused at once (the server answers 503 with Retry-After) rather than held in memory; a request
whose client went away cancels its future, and the worker drops it before running the batch.

Every image is normalised and run exactly as it would be alone: nothing in the model mixes the
images of a batch (LayerNorm is per token, attention per image), and a test checks that each
request's logits equal the unbatched ones.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch


class QueueFull(Exception):
    """More requests are waiting than the queue holds."""


@dataclass
class Job:
    x: torch.Tensor  # (C, H, W), preprocessed
    explain: bool
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)


@dataclass
class BatchStats:
    batches: int = 0
    images: int = 0
    dropped: int = 0  # requests cancelled before their batch ran
    largest: int = 0
    seconds: float = 0.0  # spent running batches


RunBatch = Callable[[torch.Tensor, bool], list]  # (B, C, H, W), explain -> one result per image


class Batcher:
    """One worker thread running `run_batch` on batches of at most `max_batch` jobs."""

    def __init__(
        self, run_batch: RunBatch, max_batch: int = 16, max_wait: float = 0.005, max_queue: int = 64
    ) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait >= 0")
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self.stats = BatchStats()
        self._held: Job | None = None  # taken from the queue but wanting other outputs
        self._stopping = False  # `stop` was asked while a batch was being gathered
        self._thread = threading.Thread(target=self._work, name="vitlab-batcher", daemon=True)

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Let the worker finish the batch it runs, then end it (queued requests are dropped
        with the process)."""
        if not self._thread.is_alive():
            return
        self.jobs.put(None)  # the worker is alive, so a full queue makes room
        self._thread.join(timeout=30)

    def submit(self, x: torch.Tensor, explain: bool = False) -> Future:
        """Queue one image; a QueueFull when `max_queue` requests are already waiting."""
        job = Job(x, explain)
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    @property
    def waiting(self) -> int:
        return self.jobs.qsize()

    # ------------------------------------------------------------------ the worker
    def _next(self, timeout: float | None) -> Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        return self.jobs.get(timeout=timeout)

    def _gather(self, first: Job) -> list[Job]:
        """`first` and the jobs that arrive within max_wait with the same outputs wanted."""
        batch, deadline = [first], time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.perf_counter()
            try:
                job = self.jobs.get(timeout=max(left, 0)) if left > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # stop after this batch (never put back: the queue may be full)
                self._stopping = True
                break
            if job.explain != first.explain:
                self._held = job
                break
            batch.append(job)
        return batch

    def _work(self) -> None:
        while not self._stopping:
            first = self._next(timeout=None)
            if first is None:
                return
            gathered = self._gather(first)
            batch = [j for j in gathered if j.future.set_running_or_notify_cancel()]
            self.stats.dropped += len(gathered) - len(batch)
            if not batch:
                continue
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        t0 = time.perf_counter()
        try:
            results = self.run_batch(torch.stack([j.x for j in batch]), batch[0].explain)
        except Exception as e:  # one bad batch must not stop the worker
            for j in batch:
                j.future.set_exception(e)
            return
        self.stats.seconds += time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        for j, r in zip(batch, results):
            j.future.set_result((r, len(batch)))
