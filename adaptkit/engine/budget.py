"""How long a run trains: optimizer steps from epochs, the small-data floor, or an exact count.

A budget in epochs starves small data: 100 rows at batch 16 for 3 epochs is 21 optimizer
steps, and at that many steps LoRA and full fine-tuning of a pretrained encoder still sit at
chance (README, "Training budgets"). So the recipe's epochs are a *minimum* of passes, and
``training.min_steps`` a floor of optimizer steps: when the epochs give fewer steps, epochs
are raised until they do not. ``training.max_steps`` overrides both with an exact count.
Everything that needs to know the length of a run (the loop, ``plan``, ``compare``'s trials,
the warning below) asks this module, so they cannot disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from adaptkit.recipe.schema import DEFAULT_MIN_STEPS

# Below this many optimizer steps a run is warned about: measured on 100 SST-2 rows, neither
# LoRA nor full fine-tuning left chance at 25 steps (README, "Training budgets").
TOO_FEW_STEPS = 50


@dataclass(frozen=True)
class StepBudget:
    """The resolved length of one run."""

    total_steps: int
    epochs: int
    updates_per_epoch: int
    raised_by_floor: bool  # epochs were raised to reach training.min_steps
    source: str  # "max_steps", "min_steps" or "epochs"

    def describe(self) -> str:
        why = {"max_steps": "training.max_steps",
               "min_steps": "raised to the small-data floor training.min_steps",
               "epochs": "training.epochs"}[self.source]
        return (f"{self.total_steps} optimizer steps ({self.epochs} epoch{'s' if self.epochs != 1 else ''} of "
                f"{self.updates_per_epoch}; {why})")


def updates_per_epoch(rows: int, batch_size: int, accumulation: int = 1) -> int:
    """Optimizer steps in one pass over ``rows`` (the last, partial batch counts)."""
    return max(1, math.ceil(math.ceil(rows / batch_size) / accumulation))


def step_budget(updates: int, epochs: int, min_steps: int = 0, max_steps: Optional[int] = None) -> StepBudget:
    """Total steps and epochs for ``updates`` optimizer steps per epoch."""
    updates = max(1, updates)
    if max_steps:
        return StepBudget(max_steps, math.ceil(max_steps / updates), updates, False, "max_steps")
    by_epochs = updates * epochs
    if by_epochs < min_steps:
        raised = math.ceil(min_steps / updates)
        return StepBudget(updates * raised, raised, updates, True, "min_steps")
    return StepBudget(by_epochs, epochs, updates, False, "epochs")


def budget_for(rows: int, training) -> StepBudget:
    """The budget a recipe's ``training`` section gives ``rows`` training rows (one process's view)."""
    updates = updates_per_epoch(rows, training.batch_size, training.gradient_accumulation_steps)
    return step_budget(updates, training.epochs, training.min_steps, training.max_steps)


def too_short(budget: StepBudget) -> Optional[str]:
    """A warning when a budget is too short to learn from, else None."""
    if budget.total_steps >= TOO_FEW_STEPS:
        return None
    return (f"this run trains only {budget.total_steps} optimizer steps: on small data that is usually too few to "
            f"learn anything (at 100 SST-2 rows LoRA and full fine-tuning stay at chance after 25 steps and "
            f"learn by 100). Raise training.epochs or training.min_steps (default floor "
            f"{DEFAULT_MIN_STEPS}), or set training.max_steps.")
