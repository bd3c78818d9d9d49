"""Errors adaptkit raises on purpose: each carries a message fit to show a user as is."""
from __future__ import annotations


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
    ``parameter`` names the first offending parameter or module where there is one.
    """

    def __init__(self, strategy: str, rule: str, detail: str, parameter: str | None = None):
        self.strategy = strategy
        self.rule = rule
        self.parameter = parameter
        where = f" on {parameter!r}" if parameter else ""
        super().__init__(f"strategy {strategy!r} broke the contract rule '{rule}'{where}: {detail}")


class TrainingDiverged(AdaptkitError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class CheckpointWriteError(AdaptkitError):
    """A checkpoint could not be written (full disk, failing write); the previous one is intact."""


class RunInterrupted(AdaptkitError):
    """Ctrl-C (SIGINT) stopped a run after it wrote a final checkpoint; the CLI exits 130."""

    exit_code = 130
