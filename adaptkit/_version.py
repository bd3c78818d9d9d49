"""adaptkit's version, in the bottom layer so that every layer can name it (outputs, run summaries, the CLI)."""

__version__ = "0.1.0"
