"""The recipe: its pydantic schema (``schema``), YAML loading with file:line errors (``loading``),
and data files checked row by row without importing ``datasets`` (``datafiles``)."""
from adaptkit.recipe.loading import load_recipe
from adaptkit.recipe.schema import Recipe, json_schema

__all__ = ["Recipe", "json_schema", "load_recipe"]
