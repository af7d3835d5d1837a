"""The next training batch, drawn on a background thread while the model trains on this one.

A program's ``draw`` reads clips from its sampler into host tensors (numpy work: memmap copies,
no torch RNG). The thread runs it ahead of the loop, pins the tensors when the device is a GPU
(so the copy to the device runs asynchronously), and hands the batches over in the order drawn.

Each batch travels with the sampler's state right after it was drawn: a checkpoint records the
position of the batches trained on, not of the ones waiting in the queue, so a resumed run draws
exactly the clips an uninterrupted one would. The thread draws no more than ``count`` batches, the
run's remaining ones, so the sampler never moves past the end of a run that finishes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

Batch = dict[str, Tensor]


class Prefetcher:
    """Up to ``depth`` batches drawn ahead by one thread; :meth:`next` returns them on ``device``."""

    def __init__(
        self,
        draw: Callable[[], Batch],
        sampler_state: Callable[[], dict[str, Any]],
        *,
        count: int,
        device: torch.device,
        depth: int = 2,
    ) -> None:
        self._draw, self._sampler_state = draw, sampler_state
        self._count, self._device = count, device
        self._pin = device.type == "cuda"
        self._queue: queue.Queue[tuple[Batch, dict[str, Any]] | BaseException] = queue.Queue(maxsize=depth)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="wm-video-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: tuple[Batch, dict[str, Any]] | BaseException) -> bool:
        while not self._closing.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            for _ in range(self._count):
                if self._closing.is_set():
                    return
                batch = self._draw()
                if self._pin:
                    batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
                if not self._put((batch, self._sampler_state())):
                    return
        except BaseException as error:  # raised again in the training loop, by next()
            self._put(error)

    def next(self) -> tuple[Batch, dict[str, Any]]:
        """The next batch on the device, and the sampler state after it (what a checkpoint saves)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, state = item
        return {name: t.to(self._device, non_blocking=True) for name, t in batch.items()}, state

    def close(self) -> None:
        """Stop drawing and wait for the thread (batches still queued are dropped)."""
        self._closing.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
