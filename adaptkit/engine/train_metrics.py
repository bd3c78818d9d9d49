"""A task's training-time metrics (``Task.training_metrics``), summed on the device between log steps.

The loop already reads its loss back to the host only every ``LOG_EVERY`` optimizer steps; a
task's extra scalars (a preference task's reward accuracy and margin) follow the same rule: each
batch's values are added, in place, to sums that stay on the device, with a count of the batches
where a value was finite, and the means are read in one transfer at a log step (summed across
processes first, so every process logs the same figures). Two windows are kept: the log
interval's and the epoch's (the history's ``train_<name>``). A checkpoint saves both (``state``),
so a resumed run logs what an uninterrupted one does.
"""
from __future__ import annotations

from typing import Any, Optional

import torch


class MetricSums:
    """Per-name sums and finite counts of a task's batch scalars, for the log window and the epoch."""

    def __init__(self, device: torch.device):
        self.device = device
        self.names: list[str] = []
        self._sums: Optional[torch.Tensor] = None  # [2 windows (log, epoch), 2 (sum, count), names]
        self._nan: Optional[torch.Tensor] = None  # made once, in _grow

    def add(self, values: dict[str, torch.Tensor]) -> None:
        """Fold one batch's scalars in on the device (no host sync). A NaN value, or a name this
        batch does not return, is not counted for it."""
        if not values:
            return
        if self._sums is None or any(name not in self.names for name in values):
            self._grow(values)
        batch = torch.stack([values[name].detach().float().reshape(()).to(self.device) if name in values
                             else self._nan for name in self.names])
        finite = torch.isfinite(batch)
        self._sums += torch.stack([torch.where(finite, batch, torch.zeros_like(batch)), finite.float()])

    def _grow(self, values: dict[str, torch.Tensor]) -> None:
        """Start the sums, or widen them for a metric not seen before (earlier batches count it as undefined)."""
        names = self.names + [name for name in values if name not in self.names]
        grown = torch.zeros((2, 2, len(names)), device=self.device)
        # a fill on the device, once: torch.tensor(nan, device=...) in add would copy from the host every step
        self._nan = torch.full((), float("nan"), device=self.device)
        if self._sums is not None:
            grown[..., :len(self.names)] = self._sums
        self.names, self._sums = names, grown

    def _read(self, window: int, accelerator: Any) -> dict[str, float]:
        if self._sums is None:
            return {}
        sums = self._sums[window]
        if accelerator is not None and accelerator.num_processes > 1:
            sums = accelerator.reduce(sums.clone(), "sum")
        totals, counts = sums.tolist()  # the one host transfer
        return {name: total / count for name, total, count in zip(self.names, totals, counts) if count}

    def read_window(self, accelerator: Any) -> dict[str, float]:
        """Each metric's mean over the log interval's batches (all processes), then the interval restarts."""
        means = self._read(0, accelerator)
        if self._sums is not None:
            self._sums[0].zero_()
        return means

    def read_epoch(self, accelerator: Any) -> dict[str, float]:
        """Each metric's mean over the epoch's batches so far (all processes)."""
        return self._read(1, accelerator)

    def reset_epoch(self) -> None:
        if self._sums is not None:
            self._sums[1].zero_()

    def state(self) -> dict[str, Any]:
        """The sums as numbers, for a checkpoint's trainer state (empty when the task logs nothing)."""
        if self._sums is None:
            return {}
        return {"names": list(self.names), "sums": self._sums.tolist()}

    def load(self, state: Optional[dict[str, Any]]) -> None:
        if not state:
            return
        self.names = list(state["names"])
        self._sums = torch.tensor(state["sums"], dtype=torch.float32, device=self.device)

