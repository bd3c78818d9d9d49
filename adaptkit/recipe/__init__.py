"""The recipe: its pydantic schema, YAML loading with file:line errors, and the JSON Schema."""
from adaptkit.recipe.schema import Recipe, json_schema, load_recipe

__all__ = ["Recipe", "json_schema", "load_recipe"]
