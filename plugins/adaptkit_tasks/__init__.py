"""First-party task types, registered through the ``adaptkit`` entry point like any plugin."""
from __future__ import annotations

from adaptkit import hookimpl
from adaptkit_tasks.sequence_classification import SequenceClassification


@hookimpl
def adaptkit_register_tasks(register):
    register(SequenceClassification)
