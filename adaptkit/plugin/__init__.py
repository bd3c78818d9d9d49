"""What a plugin author sees: the hook specifications, the registry that finds plugins through
entry points, the ``Strategy`` and ``Task`` base classes, the architecture-preserving contract,
helpers that resolve target modules and block stacks, and the conformance kit.

Nothing here imports torch at import time: listing plugins must stay fast.
"""
