"""What a finished run tells a person: metrics.json and a model card."""
from __future__ import annotations

from typing import Any


def model_card(summary: dict[str, Any]) -> str:
    """A README.md for the run folder: what was trained, how, how well, and how to load it."""
    recipe = summary["recipe"]
    metrics = summary["eval"]
    lines = [
        f"# {recipe['strategy']['name']} on {recipe['model'].get('name') or recipe['model'].get('config', {}).get('model_type')}",
        "",
        f"Trained with adaptkit {summary['adaptkit_version']} on {summary['train_examples']} training rows, "
        f"evaluated on {summary['eval_examples']} rows ({summary['eval_source']}).",
        "",
        "| metric | value |",
        "|---|---:|",
        *[f"| eval {k} | {v:.4f} |" for k, v in metrics.items()],
        f"| trainable parameters | {summary['parameters']['trainable']:,} |",
        f"| total parameters | {summary['parameters']['total']:,} |",
        *([f"| exported epoch | {summary['exported_epoch']} of {len(summary['history'])} (best on "
           f"{summary['best'].get('metric')}) |"] if summary.get("exported_epoch") and summary.get("history") else []),
        f"| training time (s) | {summary['train_seconds']:.1f} |",
        f"| peak memory (MiB) | {summary['peak_memory_bytes'] / 2**20:.0f} |",
        "",
        "## Contract",
        "",
        *[f"- {check}" for check in summary["contract"]],
        "",
        "## Load it",
        "",
        "```python",
    ]
    loader = summary["export"].get("loader", "peft" if summary["export"]["kind"] == "adapter" else "transformers")
    if loader not in ("peft", "transformers"):
        lines += [
            "import adaptkit",
            f"predictor = adaptkit.load({str(summary['export']['path']).rsplit('/', 1)[0]!r})"
            f"  # the export loads with {loader}",
        ]
    elif summary["export"]["kind"] == "adapter":
        lines += [
            "from peft import PeftModel",
            f"from transformers import {summary['model_class']}",
            f"base = {summary['model_class']}.from_pretrained({summary['base_model']!r}, "
            f"num_labels={summary.get('num_labels')})" if summary.get("num_labels") else
            f"base = {summary['model_class']}.from_pretrained({summary['base_model']!r})",
            f"model = PeftModel.from_pretrained(base, {summary['export']['path']!r})",
        ]
    else:
        lines += [
            f"from transformers import {summary['model_class']}",
            f"model = {summary['model_class']}.from_pretrained({summary['export']['path']!r})",
        ]
    lines += ["```", "", "or `adaptkit predict <this folder> --input rows.csv`.", ""]
    return "\n".join(lines)
