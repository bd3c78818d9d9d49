"""The command line: ``adaptkit`` parses, calls the library, prints (``main``); ``editor`` adds
the schema for editors and shell completion."""
from adaptkit.cli.main import main

__all__ = ["main"]
