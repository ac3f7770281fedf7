"""A training order that a checkpoint can restore: ``(seed, epoch)`` decide it, a batch count resumes it.

:class:`EpochSampler` is a :class:`~torch.utils.data.DistributedSampler` whose permutation of epoch ``e``
depends only on ``(seed, e)`` (not on the global RNG), sharded over ``num_replicas`` ranks. Because it
*is* a ``DistributedSampler``, Lightning does not replace it under DDP and calls ``set_epoch`` with the
fit loop's epoch counter, which the checkpoint restores.

:class:`ResumableDataLoader` is a ``DataLoader`` with ``state_dict`` / ``load_state_dict``: Lightning's
fit loop stores that state in the checkpoint and gives it back when a run resumes in the middle of an
epoch, so the epoch continues with the batches that were not trained yet instead of starting over.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["EpochSampler", "ResumableDataLoader"]


class EpochSampler(DistributedSampler):
    """Shuffled indices of ``dataset`` for epoch ``set_epoch(e)``, a function of ``(seed, e)`` only.

    Args:
        dataset: the sized dataset to sample from.
        num_replicas: number of ranks the epoch is split over (1 in a single process).
        rank: this process's rank in ``[0, num_replicas)``.
        seed: seed of the order; epoch ``e`` uses a generator seeded with ``seed + e`` (as
            ``DistributedSampler`` does).

    Like ``DistributedSampler`` with ``drop_last=False``, the epoch is padded by repeating its first
    indices until every rank gets the same number of samples.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False
        )
        self._resume_epoch: int | None = None
        self._resume_skip = 0

    def resume(self, epoch: int, skip: int) -> None:
        """Let the next iteration over epoch ``epoch`` leave out its first ``skip`` indices (this rank's)."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self._resume_epoch, self._resume_skip = epoch, skip

    def pending_skip(self) -> int:
        """Indices the next iteration leaves out (non-zero only for the epoch given to :meth:`resume`)."""
        return self._resume_skip if self._resume_epoch == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume_epoch is not None:
            if self._resume_epoch == self.epoch:
                indices = indices[self._resume_skip :]
            self._resume_epoch, self._resume_skip = None, 0
        return iter(indices)


class ResumableDataLoader(DataLoader):
    """``DataLoader`` that saves and restores its position in an :class:`EpochSampler`'s epoch.

    ``state_dict()`` is ``{"epoch", "seed", "batches"}``: the sampler's epoch and seed and the batches
    this loader yielded in that epoch so far. Lightning's fit loop saves it in checkpoints (a loader with
    both methods counts as resumable) and, on resuming mid-epoch, calls ``load_state_dict`` before the
    epoch's iterator is created; the loader then skips the batches already yielded. Lightning reads a
    sized loader without prefetching, so at a graceful stop (the end of a batch) the count equals the
    batches trained.
    """

    def __init__(self, dataset: Dataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self._batches = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.sampler
        self._batches = (
            sampler.pending_skip() // (self.batch_size or 1) if isinstance(sampler, EpochSampler) else 0
        )
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "seed", "batches"}``; empty unless the sampler is an :class:`EpochSampler`."""
        sampler = self.sampler
        if not isinstance(sampler, EpochSampler):
            return {}
        return {"epoch": sampler.epoch, "seed": sampler.seed, "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Skip the batches ``state_dict`` says were yielded, in the next iteration over its epoch."""
        sampler = self.sampler
        if not state_dict or not isinstance(sampler, EpochSampler):
            return
        if state_dict["seed"] != sampler.seed:
            raise ValueError(
                f"the checkpoint's training order has seed {state_dict['seed']}, this loader's has "
                f"{sampler.seed}: restore the data module's state before creating the loader"
            )
        sampler.resume(int(state_dict["epoch"]), int(state_dict["batches"]) * (self.batch_size or 1))
