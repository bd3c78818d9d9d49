"""What a plugin author sees: the hook specifications, the registry that finds plugins through
entry points, the ``Strategy``, ``Task`` and ``Baseline`` base classes, the architecture-preserving
contract, helpers that resolve target modules, block stacks, pooling and model sources, the
per-family tables and the conformance kit.

Listing plugins must stay fast, so the modules a plugin is registered and validated through
(hookspecs, registry, strategy, task, baseline, low_rank, families, targets, pooling, sources) do not
import torch at import time. contract, conformance and blocks do: they work on models, and
``adaptkit`` loads them only when one of their names is first used.
"""
