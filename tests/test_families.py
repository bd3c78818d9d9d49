"""Every per-family table lives in ``adaptkit/plugin/families.py``, one per concern (issue 23 item 4):
strategies read it through ``adaptkit.families``, and no other module keeps a table of its own."""
from __future__ import annotations

import ast
from pathlib import Path

import adaptkit

REPO = Path(__file__).resolve().parents[1]
KNOWN = {"bert", "roberta", "gpt2", "llama", "mistral", "qwen2", "vit", "distilbert", "electra"}


def _family_tables(path: Path) -> list[int]:
    """Lines of dict literals keyed by two or more model families."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Dict)
            and len({k.value for k in node.keys if isinstance(k, ast.Constant)} & KNOWN) >= 2]


def test_no_module_but_families_keeps_a_per_family_table():
    own = REPO / "adaptkit" / "plugin" / "families.py"
    offenders = [f"{path.relative_to(REPO)}:{line}" for root in ("adaptkit", "plugins")
                 for path in sorted((REPO / root).rglob("*.py")) if path != own and "example-plugin" not in path.parts
                 for line in _family_tables(path)]
    assert offenders == [], "per-family tables belong in adaptkit/plugin/families.py"
    assert _family_tables(own)  # the scan can find one


def test_strategies_read_the_one_table():
    import adaptkit_adapters
    import adaptkit_frozen_head
    import adaptkit_lora
    import adaptkit_partial_freeze

    families = adaptkit.families
    assert adaptkit_lora.DEFAULT_TARGETS is families.PROJECTIONS is adaptkit.LowRankStrategy.default_targets
    assert adaptkit_adapters.DEFAULT_SITES is families.BLOCK_OUTPUTS
    assert adaptkit_frozen_head.LEARNING_RATES is families.PROBE_LEARNING_RATES
    assert adaptkit_frozen_head.DEFAULT_LEARNING_RATE == families.PROBE_LEARNING_RATE
    assert adaptkit_partial_freeze.DEFAULT_FRACTIONS is families.FREEZE_FRACTIONS
    assert adaptkit_partial_freeze.DEFAULT_FRACTION == families.FREEZE_FRACTION
