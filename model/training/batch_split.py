"""One global batch, whatever the machine: how it splits over processes and accumulation.

A recipe's batch size is the number of samples behind one optimizer step (SeeSR's is 32:
16 x accumulation 2 on one GPU, 2 x 2 on each of eight). The config states that number
(``training.batch_size``) and the largest micro-batch one process runs at once
(``training.micro_batch_size``, the memory knob); the trainer derives the rest:

    per process  = batch_size / processes
    micro-batch  = min(micro_batch_size, per process)
    accumulation = per process / micro-batch

and refuses, before any work, a batch that does not divide. Step ``s`` then reads global
samples ``s * batch_size`` to ``(s + 1) * batch_size - 1`` however it is split
(:class:`megasr.model.training.data.SampleNumbers`).
"""

from __future__ import annotations

from dataclasses import dataclass

from megasr.errors import InvalidParameterError


@dataclass(frozen=True)
class BatchSplit:
    """A global batch split over ``processes`` and ``accumulation`` micro-batches."""

    batch_size: int
    processes: int
    micro_batch: int
    accumulation: int

    @property
    def per_process(self) -> int:
        return self.micro_batch * self.accumulation

    def __str__(self) -> str:
        return (
            f"batch {self.batch_size} = {self.processes} processes x {self.micro_batch} "
            f"samples x {self.accumulation} accumulation steps"
        )


def split_batch(batch_size: int, processes: int, micro_batch_size: int) -> BatchSplit:
    """The split of ``batch_size`` samples per step, or a one-line error naming the fix."""
    if min(batch_size, processes, micro_batch_size) < 1:
        raise InvalidParameterError("batch size, processes and micro-batch size must be >= 1")
    if batch_size % processes:
        raise InvalidParameterError(
            f"training.batch_size {batch_size} does not divide over {processes} processes; "
            f"choose a multiple of {processes} or another number of processes"
        )
    per_process = batch_size // processes
    micro = min(micro_batch_size, per_process)
    if per_process % micro:
        raise InvalidParameterError(
            f"training.batch_size {batch_size} on {processes} processes is {per_process} "
            f"samples each, which micro-batches of {micro} (training.micro_batch_size) do "
            f"not divide; choose a micro-batch size that divides {per_process}"
        )
    return BatchSplit(batch_size, processes, micro, per_process // micro)
