"""Errors adaptkit raises on purpose: each carries a message fit to show a user as is.

Every exception a user or a plugin author may catch is defined here, in one module, so that
``except adaptkit.SomeError`` never needs an import from the engine (which pulls in torch).
All of them subclass ``AdaptkitError``; the CLI prints its message and exits with ``exit_code``.
"""
from __future__ import annotations

from typing import Iterator, Optional


class AdaptkitError(Exception):
    """Base of every error adaptkit reports to a user; the CLI prints it and exits 2."""

    exit_code = 2


class RecipeError(AdaptkitError):
    """A recipe is invalid: the message names the file, the line and the key path."""


class PluginError(AdaptkitError):
    """A plugin is missing, broken, or failed inside a hook."""


class ModelSourceError(AdaptkitError):
    """A model cannot be found or loaded (offline hub id, missing folder, refused format)."""


class DataError(AdaptkitError):
    """A data file is missing, unreadable, or lacks what the task needs."""


class ContractViolation(AdaptkitError):
    """A strategy broke the architecture-preserving contract.

    ``rule`` is one of ``signature``, ``frozen``, ``equivalence``, ``removal``, ``export``;
    ``parameter`` names the first offending parameter or module where there is one. From the
    conformance kit, ``failures`` holds every failed check's violation (this one's ``rule`` and
    ``parameter`` are the first's); elsewhere it is just this one.
    """

    def __init__(self, strategy: str, rule: str, detail: str, parameter: str | None = None):
        self.strategy = strategy
        self.rule = rule
        self.parameter = parameter
        self.failures: list[ContractViolation] = [self]
        where = f" on {parameter!r}" if parameter else ""
        super().__init__(f"strategy {strategy!r} broke the contract rule '{rule}'{where}: {detail}")


class TrainingDiverged(AdaptkitError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class CheckpointWriteError(AdaptkitError):
    """A checkpoint could not be written (full disk, failing write); the previous one is intact."""


class RunInterrupted(AdaptkitError):
    """Ctrl-C (SIGINT) stopped a run after it wrote a final checkpoint; the CLI exits 130."""

    exit_code = 130


class CheckpointDamaged(AdaptkitError):
    """A checkpoint's files do not match its manifest, or cannot be read back."""


class DistributedRunError(AdaptkitError):
    """A multi-process run failed: one process died or raised, and the launcher stopped the rest."""

    def __init__(self, message: str, exit_code: int = 1, rank: Optional[int] = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.rank = rank


class PreflightError(AdaptkitError):
    """A recipe cannot run as written, found before any training: an unsupported combination of
    strategy, quantization, distributed setting, model type and task, or options that do not apply."""


class TargetModuleError(PreflightError):
    """A ``target_modules`` (or ``feedforward_modules``) entry matches no module of the model."""


class TaskContractViolation(AdaptkitError):
    """A task broke what the engine relies on (``adaptkit.testing.check_task`` found it).

    ``rule`` is one of ``head``, ``batch``, ``metrics``, ``predict``, ``state``; the message names
    the task, the family of the tiny model it ran on, and what was expected against what came back.
    ``failures`` holds every failed check's violation (this one's ``rule`` and ``family`` are the first's).
    """

    def __init__(self, task: str, rule: str, detail: str, family: str | None = None):
        self.task = task
        self.rule = rule
        self.family = family
        self.failures: list[TaskContractViolation] = [self]
        on = f" on the tiny {family} model" if family else ""
        super().__init__(f"task {task!r} broke the rule '{rule}'{on}: {detail}")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it (``__cause__``, else ``__context__``), and so on; each once, so a
    chain that loops back stops. Where an error's meaning is in what it wraps (torch re-raising a
    file's OSError, peft's refusal wrapping a meta-device error), the readers walk it here."""
    seen: set[int] = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
