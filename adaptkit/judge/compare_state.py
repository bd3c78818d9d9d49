"""A compare that survives, resumes and says its cost first (issue 28, item 6).

- **Where trials live.** Without ``--storage`` a compare keeps its Optuna study in its own
  folder (``trials/optuna.db``, SQLite), so a crash costs at most the trial that was running; with
  ``--storage`` the shared database does the same across machines. A study's name carries
  everything that changes what a trial means (``cell_tag``): arm, size, seed, the validation
  fraction, and a hash of the arm's strategy, options, search range and the recipe's training
  section; a rerun with another ``--validation-fraction`` gets a new study instead of old scores.
- **compare.json after every cell.** After each finished (arm, size, seed) the records so far
  are written (``"complete": false``) with the compare's ``identity``; a rerun of the same
  command reloads every finished cell whose search grid is the one it would try, with the eval
  predictions from ``trials/``, and trains only the rest. A folder is resumed, not refused, when
  it is a compare of the same identity (a second process started on it as well: both share the
  work through the storage); one of other settings is refused unless ``--overwrite``.
- **The plan before the first trial.** Arms x sizes x seeds x trials, optimizer steps per trial
  and an estimate from one timed optimizer step per arm (``adaptkit.judge.advise``'s
  ``time_one_step``, scaled to the epoch's padded tokens as ``advise`` does); ``--max-minutes`` trims the learning rates each
  arm tries, the grid's extremes first (the centre is kept), until the estimate fits, and says so.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import optuna

from adaptkit.errors import AdaptkitError
from adaptkit.engine.checkpoint import NOT_HASHED, identity_hash, recipe_identity
from adaptkit.engine.outputs import check_output_dir, foreign_entries, foreign_entries_error, manifest_kind, write_json
from adaptkit.judge.advise import time_one_step
from adaptkit.judge.tuning import middle_out, open_storage

LOCAL_STORAGE = "optuna.db"  # under the compare folder's trials/: the study when no --storage is given
# A forward pass over a row costs about a third of a training step's share for it (forward, backward
# of activations, backward of weights); validation and eval rows are costed at that.
FORWARD_SHARE = 1 / 3
TIMED_STEPS = 2  # steps timed per strategy for the estimate; the fastest counts


def trial_meaning(recipe: Any, arm: Any, searched: Any, validation_fraction: float) -> str:
    """A short hash of what decides a trial's score besides its rate, size and seed."""

    training = {k: v for k, v in recipe.training.model_dump(mode="json").items() if k not in NOT_HASHED | {"seed"}}
    options = arm.options.model_dump(mode="json") if hasattr(arm.options, "model_dump") else repr(arm.options)
    return identity_hash({"strategy": arm.strategy, "random_init": arm.random_init, "options": options,
                          "warmup_ratio": searched.warmup_ratio, "min_steps": searched.min_steps,
                          "validation_fraction": validation_fraction, "training": training})[:8]


def cell_tag(name: str, size: Optional[int], seed: int, validation_fraction: float, meaning: str) -> str:
    """``lora-n100-s42-v0.2-1a2b3c4d``: the study (after the prefix) and trials/ folder of one cell."""
    return f"{name}-n{size if size is not None else 'all'}-s{seed}-v{validation_fraction:g}-{meaning}"


def compare_identity(recipe: Any, strategies: list[str], sizes: list[Optional[int]], seeds: list[int], trials: int,
                     validation_fraction: float, scratch_strategy: Optional[str], learning_rates: dict[str, float],
                     baselines: Optional[list[str]]) -> str:
    """What the same command would compute: a rerun with this identity resumes the folder."""

    return identity_hash({"recipe": recipe_identity(recipe), "strategies": strategies, "sizes": sizes,
                          "seeds": seeds, "trials": trials, "validation_fraction": validation_fraction,
                          "scratch_strategy": scratch_strategy, "learning_rates": learning_rates,
                          "baselines": baselines})[:16]


def local_storage(folder: Path) -> str:
    return f"sqlite:///{(Path(folder) / 'trials' / LOCAL_STORAGE).resolve()}"


def _clear_local_studies(folder: Path) -> None:
    """Delete the studies of the folder's own storage (through the storage, which this process may
    hold open: deleting the file under an open connection leaves it read-only)."""


    if not (Path(folder) / "trials" / LOCAL_STORAGE).is_file():
        return
    storage = open_storage(local_storage(folder))
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        optuna.delete_study(study_name=summary.study_name, storage=storage)


def _saved(folder: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads((folder / "compare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # none yet, or cut short: nothing to reload (the storage still has the trials)
    return data if isinstance(data, dict) else None


def _own(entry: str, files: tuple[str, ...]) -> bool:
    """An entry a compare writes: its files, anything under trials/, adaptkit's temporary names."""
    first = entry.split("/", 1)[0].rstrip("/")
    return first in files or first.startswith(".adaptkit-")


def open_folder(folder: Path, overwrite: bool, identity: str, files: tuple[str, ...],
                log: Callable[[str], None]) -> dict[tuple, dict[str, Any]]:
    """Check the compare folder and return the finished cells to reload, keyed (arm, size, seed).

    Absent or empty: a fresh compare. A compare folder of the same ``identity`` (a rerun of the
    same command, or a second process on it): resumed, whatever a kill left in it (an empty
    trials/ folder, final files half written). Another compare's: refused unless ``overwrite``,
    which replaces compare's own files and refuses a folder holding the user's. Anything else
    goes through ``check_output_dir``.
    """

    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()) or manifest_kind(folder) != "compare":
        check_output_dir(folder, overwrite, what="--output", kind="compare")
        return {}
    saved = _saved(folder)
    if overwrite:
        foreign = [entry for entry in foreign_entries(folder, limit=50) if not _own(entry, files)]
        if foreign:
            raise foreign_entries_error(folder, foreign[:5], "--output")
        _clear_local_studies(folder)  # a fresh compare: its own study starts over too
        return {}
    if saved is not None and saved.get("identity") != identity:
        raise AdaptkitError(f"--output {folder} already holds a compare with other settings (another recipe, arms, "
                            f"sizes, seeds, trials, rates or validation fraction); pass --overwrite to replace it, "
                            f"or choose another folder. The same command run again resumes it")
    finished = {}
    for run in (saved or {}).get("runs", []):
        if isinstance(run, dict) and run.get("kind") != "baseline" and run.get("chosen_trial") is not None:
            finished[(run["strategy"], run["size"], run["seed"])] = run
    if saved is not None:
        state = "finished" if saved.get("complete") else "interrupted"
        log(f"compare: resuming the {state} compare in {folder}: {len(finished)} cell(s) done")
    return finished


def save_progress(folder: Path, identity: str, runs: list[dict[str, Any]], cells: int) -> None:
    """compare.json while the compare runs: the finished cells so far (merged with those another
    process sharing the folder wrote), so a rerun resumes from them."""

    merged = {}
    saved = _saved(folder)
    if saved is not None and saved.get("identity") == identity and not saved.get("complete"):
        merged = {(r["strategy"], r["size"], r["seed"]): r for r in saved.get("runs", []) if isinstance(r, dict)}
    merged.update({(r["strategy"], r["size"], r["seed"]): r for r in runs})
    write_json(folder / "compare.json", {
        "identity": identity, "complete": False,
        "note": f"partial: {len(merged)} of {cells} cells finished; run the same command again to resume",
        "runs": list(merged.values())})


# ---------------------------------------------------------------------------- the plan and its cost

@dataclass
class CellCost:
    """One (arm, size, seed) to train: a trial's optimizer steps and forward rows, and its time."""

    arm: str
    size: Optional[int]
    seed: int
    steps: int
    forward_rows: int
    trial_seconds: Optional[float]
    grid: list[float]


@dataclass
class Plan:
    """What compare is about to train and what it is expected to cost on this machine."""

    cells: list[CellCost]
    trials: int
    tried: int  # learning rates each arm tries after --max-minutes (== trials when nothing was trimmed)
    step_seconds: dict[str, Optional[float]]
    reused: int = 0
    lines: list[str] = field(default_factory=list)

    def seconds(self, tried: Optional[int] = None) -> Optional[float]:
        """The estimate with ``tried`` rates per cell, None when an arm could not be timed."""
        tried = self.tried if tried is None else tried
        if any(c.trial_seconds is None for c in self.cells):
            return None
        return sum(c.trial_seconds * min(tried, len(c.grid)) for c in self.cells)

    def to_dict(self) -> dict[str, Any]:
        total = self.seconds()
        return {"trials": self.trials, "tried": self.tried, "cells": len(self.cells), "reused_cells": self.reused,
                "seconds_per_step": self.step_seconds,
                "estimated_minutes": None if total is None else round(total / 60, 2), "said": self.lines}


def padded_tokens(lengths: list[int], batch_size: int, group_by_length: bool) -> int:
    """Tokens, padding included, of one pass over rows of these lengths in batches of ``batch_size``:
    sorted batches when the loop groups by length, the rows' own order otherwise."""
    order = sorted(lengths) if group_by_length else list(lengths)
    return sum(max(order[i:i + batch_size]) * len(order[i:i + batch_size]) for i in range(0, len(order), batch_size))


def time_steps(session: Any, base: Any, strategies: set[str], log: Callable[[str], None]
               ) -> dict[str, Optional[float]]:
    """Seconds per padded token of an optimizer step of each strategy on this machine, on a copy of
    ``base`` (``advise``'s measurement: a real step, its batch as the training loop forms it)."""

    out: dict[str, Optional[float]] = {}
    for name in sorted(strategies):
        try:
            # the faster of two: the first pays one-time costs, and on a shared machine one step's time
            # varied 8x (the same LoRA step on 2 busy cores: 0.9 to 7.0 s)
            timed = [time_one_step(session, base, name) for _ in range(TIMED_STEPS)]
            out[name] = min(wall / max(tokens, 1) for wall, _, tokens, _, _ in timed)
        except Exception as exc:  # an estimate must never stop the compare
            out[name] = None
            log(f"compare: cannot time one step of {name} ({type(exc).__name__}: {exc}); no time estimate")
    return out


def make_plan(cells: list[Any], trials: int, token_seconds: dict[str, Optional[float]], reused: int) -> Plan:
    """``cells``: (arm, size, seed, search range, steps a trial, padded tokens a step, forward tokens a
    trial) for every cell to train; ``token_seconds``: a training step's seconds per padded token."""
    costs, step_seconds = [], {}
    for arm, size, seed, searched, steps, step_tokens, forward_tokens in cells:
        per_token = token_seconds.get(arm.strategy)
        seconds = None if per_token is None else per_token * (steps * step_tokens + FORWARD_SHARE * forward_tokens)
        step_seconds[arm.strategy] = None if per_token is None else round(per_token * step_tokens, 4)
        costs.append(CellCost(arm=arm.name, size=size, seed=seed, steps=steps, forward_rows=forward_tokens,
                              trial_seconds=seconds, grid=searched.grid))
    return Plan(cells=costs, trials=trials, tried=trials, step_seconds=step_seconds, reused=reused)


def _minutes(seconds: Optional[float]) -> str:
    return "unknown" if seconds is None else f"~{seconds / 60:.1f} min"


def describe(plan: Plan, arms: list[str], sizes: list[Optional[int]], seeds: list[int],
             strategies: dict[str, str], extend: int) -> list[str]:
    """The plan in words, printed before the first trial."""
    todo = {(c.arm, c.size, c.seed) for c in plan.cells}
    lines = [f"compare plan: {len(arms)} arm(s) x {len(sizes)} size(s) x {len(seeds)} seed(s) x {plan.tried} "
             f"learning rate(s) = {len(todo) * plan.tried} trials to train"
             + (f" ({plan.reused} finished cell(s) reloaded)" if plan.reused else "")]
    for name in arms:
        mine = [c for c in plan.cells if c.arm == name]
        if not mine:
            continue
        step = plan.step_seconds.get(strategies[name])
        steps = ", ".join(sorted({f"{c.steps} at {c.size if c.size is not None else 'all'} rows" for c in mine}))
        each = ", ".join(sorted({_minutes(c.trial_seconds) for c in mine}))
        lines.append(f"  {name}: optimizer steps a trial: {steps}; one step "
                     f"{'not timed' if step is None else f'~{step:.2f} s (one timed, scaled to the padded tokens)'}; "
                     f"{each} a trial")
    lines.append(f"  estimated {_minutes(plan.seconds())} on this machine (at most: a pruned trial stops at a "
                 f"third of its steps; trials already in the study are not trained again"
                 + (f"; an arm whose best rate is an end of its grid tries up to {extend} more past it, not "
                    f"counted here)" if extend else ")"))
    return lines


def check_max_minutes(max_minutes: Optional[float]) -> None:
    """``--max-minutes`` is a positive, finite number of minutes (refused before any work)."""
    if max_minutes is None:
        return
    if isinstance(max_minutes, bool) or not isinstance(max_minutes, (int, float)) or not 0 < max_minutes < float("inf"):
        raise AdaptkitError(f"--max-minutes must be a positive number of minutes, got {max_minutes!r}")


def trim(plan: Plan, max_minutes: Optional[float]) -> list[str]:
    """Fit the plan into ``max_minutes`` by trying fewer rates per arm (the grid's extremes go first,
    the centre is kept); what was trimmed, in words. Refused when even one rate per arm does not fit."""
    if max_minutes is None:
        return []
    budget = max_minutes * 60
    total = plan.seconds()
    if total is None:
        return [f"--max-minutes {max_minutes:g}: no estimate (a step could not be timed), nothing trimmed"]
    if total <= budget:
        return [f"--max-minutes {max_minutes:g}: the plan fits ({_minutes(total)})"]
    fitting = [t for t in range(plan.trials - 1, 0, -1) if plan.seconds(t) <= budget]
    if not fitting:
        raise AdaptkitError(f"--max-minutes {max_minutes:g}: even one learning rate per arm is estimated at "
                            f"{_minutes(plan.seconds(1))} ({len(plan.cells)} cell(s) to train); give more minutes, "
                            f"or fewer arms, sizes or seeds. Nothing was trained")
    plan.tried = fitting[0]

    dropped = sorted({f"{c.arm} {', '.join(f'{r:.2g}' for r in middle_out(c.grid)[plan.tried:])}"
                      for c in plan.cells if len(c.grid) > plan.tried})
    return [f"--max-minutes {max_minutes:g}: {_minutes(total)} does not fit; trimmed to {plan.tried} of "
            f"{plan.trials} learning rates per arm ({_minutes(plan.seconds())}), the grid's extremes first: "
            + "; ".join(dropped)]
