"""Snapshots of torch's global random generators: every evaluation of a case draws the same dropout masks, and
the caller's generators are given back untouched."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class RngSnapshot:
    """The CPU generator's state, and the CUDA generators' when asked for (``cuda=True``: when CUDA is
    available; ``None``: only when CUDA is already initialized, so taking a snapshot never starts CUDA)."""

    def __init__(self, cuda: bool | None = None) -> None:
        if cuda is None:
            cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda = bool(cuda) and torch.cuda.is_available()
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = torch.cuda.get_rng_state_all() if self.cuda else None

    def restore(self) -> None:
        """Set the generators back to the snapshot (as often as needed)."""
        torch.set_rng_state(self.cpu_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)


@contextmanager
def preserved_rng(cuda: bool | None = None) -> Iterator[RngSnapshot]:
    """Snapshot the generators, yield the snapshot (``snapshot.restore()`` rewinds inside the block), and
    restore it on the way out, whatever happened inside."""
    snapshot = RngSnapshot(cuda)
    try:
        yield snapshot
    finally:
        snapshot.restore()


__all__ = ["RngSnapshot", "preserved_rng"]
