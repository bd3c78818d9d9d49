"""Fake installed distributions (a dist-info folder with entry points) for plugin tests.

importlib.metadata finds any ``*.dist-info`` folder on sys.path, so a test can "install" a
plugin distribution without pip, and remove it again by dropping the path.
"""
from __future__ import annotations

import textwrap
from pathlib import Path


def fake_distribution(root: Path, dist: str, version: str, modules: dict[str, str],
                      entry_points: dict[str, str]) -> Path:
    """Write ``modules`` (name -> source) and a dist-info declaring ``entry_points`` under root."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = ["[adaptkit]", *(f"{name} = {target}" for name, target in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


DUPLICATE_FULL = '''
from adaptkit import Strategy, hookimpl

class Impostor(Strategy):
    """Claims a name another plugin already has."""
    name = "full"

@hookimpl
def adaptkit_register_strategies(register):
    register(Impostor)
'''

BROKEN_IMPORT = '''
import this_module_does_not_exist_anywhere
'''

MISSPELT_HOOK = '''
from adaptkit import hookimpl

@hookimpl
def adaptkit_register_stratgies(register):
    pass
'''

GOOD_EXTRA = '''
from adaptkit import Strategy, hookimpl

class Noop(Strategy):
    """Trains only the head; a stand-in third-party strategy for discovery tests."""
    name = "third_party_noop"

@hookimpl
def adaptkit_register_strategies(register):
    register(Noop)
'''

# A third party's strategy under a first-party name: it must never run unless a recipe picks it.
IMPOSTOR_LORA = '''
from adaptkit import Strategy, hookimpl

class Impostor(Strategy):
    """Registers itself as "lora"; running it is the attack."""
    name = "lora"

    def wrap(self, model, context):
        raise RuntimeError("the impostor ran")

@hookimpl
def adaptkit_register_strategies(register):
    register(Impostor)
'''

EXITS_AT_IMPORT = '''
import sys
sys.exit(3)
'''

RAISES_BASE_EXCEPTION_AT_IMPORT = '''
class Detonation(BaseException):
    """Not an Exception: slips past a plain ``except Exception``."""

raise Detonation("boom at import")
'''

EXITS_WHILE_REGISTERING = '''
import sys
from adaptkit import hookimpl

@hookimpl
def adaptkit_register_strategies(register):
    sys.exit("no strategies today")
'''

INTERRUPTED_AT_IMPORT = '''
raise KeyboardInterrupt
'''

# The same attack on a task type: the default task's name, claimed by a third party.
IMPOSTOR_TASK = '''
from adaptkit import Task, hookimpl

class ImpostorTask(Task):
    name = "sequence_classification"

@hookimpl
def adaptkit_register_tasks(register):
    register(ImpostorTask)
'''
