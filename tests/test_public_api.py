"""The public API a downstream library builds on: typed, complete, importable without torch."""
from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import adaptkit
import adaptkit.errors

ROOT = Path(adaptkit.__file__).resolve().parents[1]

DOWNSTREAM = '''
from __future__ import annotations

from pathlib import Path
from typing import Any

import adaptkit
from adaptkit import (AdaptkitError, CheckpointDamaged, ContractViolation, DataError, ModelSourceError, RecipeError,
                      Strategy, StrategyOptions, WrapContext)


class ScaleOptions(StrategyOptions):
    scale: float = 1.0


class ScaleOnly(Strategy):
    name = "scale_only"
    Options = ScaleOptions

    def wrap(self, model: Any, context: WrapContext) -> Any:
        return model

    def unwrap(self, model: Any) -> Any:
        return model


def train(recipe: Path | dict[str, Any]) -> float:
    try:
        result: adaptkit.RunResult = adaptkit.run(recipe, overwrite=True, progress=False)
    except (RecipeError, DataError, ModelSourceError) as exc:
        print(exc.exit_code, exc)
        return 0.0
    except CheckpointDamaged:
        raise
    except AdaptkitError:
        return float("nan")
    output: Path = result.output_dir
    predictor: adaptkit.Predictor = adaptkit.load(output)
    print(predictor.predict([{"text": "fine"}]))
    return float(result.eval["accuracy"])


def judge(path: str) -> list[str]:
    plan: adaptkit.Plan = adaptkit.plan(path, ["lora", "full"])
    for row in plan.strategies:
        assert isinstance(row, adaptkit.StrategyPlan)
    advice: adaptkit.AdviceReport = adaptkit.advise(path, probe_steps=0)
    report: adaptkit.CompareReport = adaptkit.compare(path, ["lora", "scratch"], seeds=[0, 1])
    checked: adaptkit.ConformanceReport = adaptkit.check_strategy(ScaleOnly, {"scale": 2.0})
    print(advice, report)
    try:
        adaptkit.check_strategy(ScaleOnly)
    except ContractViolation as exc:
        return [exc.rule]
    return checked.passed
'''

BROKEN = '''
from __future__ import annotations

import adaptkit


def broken() -> int:
    result = adaptkit.run("recipe.yaml")
    count: int = result.output_dir
    adaptkit.plna("recipe.yaml")
    return count
'''


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    """mypy on ``source`` as a downstream module: adaptkit is followed (silently: only the snippet's
    errors count), other libraries are skipped so the check takes a second, not torch's minutes."""
    (tmp_path / "mypy.ini").write_text(textwrap.dedent("""
        [mypy]
        follow_imports = skip
        ignore_missing_imports = True
        [mypy-adaptkit,adaptkit.*]
        follow_imports = silent
    """))
    (tmp_path / "downstream.py").write_text(source)
    env = dict(os.environ, MYPYPATH=str(ROOT))  # an editable install's import hook is invisible to mypy
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", str(tmp_path / "c"),
                           "--no-error-summary", "downstream.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_mypy_accepts_code_written_against_the_public_api(tmp_path):
    done = _mypy(tmp_path, DOWNSTREAM)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_reports_misuse_of_the_public_api(tmp_path):
    """With ``Any`` return types (or a module ``__getattr__`` visible to mypy) neither line is caught."""
    done = _mypy(tmp_path, BROKEN)
    assert done.returncode == 1, done.stdout + done.stderr
    source = BROKEN.splitlines()
    wrong_type = next(i for i, line in enumerate(source, 1) if "count: int" in line)
    misspelt = next(i for i, line in enumerate(source, 1) if "plna" in line)
    lines = done.stdout.splitlines()
    assert any(f'downstream.py:{wrong_type}: error: Incompatible types in assignment (expression has type "Path"'
               in line for line in lines), done.stdout
    assert any(f'downstream.py:{misspelt}: error: Module has no attribute "plna"' in line for line in lines), done.stdout


def test_import_adaptkit_does_not_import_torch():
    code = ("import sys, adaptkit; from adaptkit import RecipeError, Strategy, check_task, AdaptkitError; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules); "
            "print(','.join(heavy) or 'none')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_every_name_in_all_resolves_to_its_definition():
    from adaptkit.engine.planning import Plan
    from adaptkit.engine.runner import RunResult
    from adaptkit.judge.compare import CompareReport
    from adaptkit.plugin.conformance import ConformanceReport

    assert len(adaptkit.__all__) == len(set(adaptkit.__all__))
    missing = [name for name in adaptkit.__all__ if getattr(adaptkit, name, None) is None]
    assert missing == []
    assert (adaptkit.RunResult, adaptkit.Plan, adaptkit.CompareReport, adaptkit.ConformanceReport) == (
        RunResult, Plan, CompareReport, ConformanceReport)
    for name in ("RunResult", "Plan", "StrategyPlan", "AdviceReport", "CompareReport", "Predictor",
                 "ConformanceReport", "check_task", "register_family"):
        assert name in adaptkit.__all__ and name in dir(adaptkit)
    with pytest.raises(AttributeError, match="no attribute 'plna'"):
        adaptkit.plna  # noqa: B018


def test_public_functions_are_annotated():
    for name in ("run", "plan", "load", "advise", "compare", "check_strategy", "check_task", "register_family",
                 "list_strategies", "get_strategy", "list_plugins"):
        signature = inspect.signature(getattr(adaptkit, name))
        assert signature.return_annotation not in (inspect.Signature.empty, "Any"), name
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), name


def _exception_names() -> set[str]:
    return {name for name, value in vars(adaptkit.errors).items()
            if isinstance(value, type) and issubclass(value, BaseException)
            and value.__module__ == "adaptkit.errors"}


def test_every_error_is_exported_and_an_adaptkit_error():
    names = _exception_names()
    assert {"CheckpointDamaged", "DistributedRunError", "PreflightError", "TargetModuleError",
            "TaskContractViolation"} <= names
    assert names <= set(adaptkit.__all__)
    assert all(issubclass(getattr(adaptkit, name), adaptkit.AdaptkitError) for name in names)
    from adaptkit.engine.checkpoint import CheckpointDamaged
    from adaptkit.engine.distributed import DistributedRunError
    from adaptkit.plugin.targets import PreflightError, TargetModuleError

    assert (CheckpointDamaged, DistributedRunError, PreflightError, TargetModuleError) == (
        adaptkit.CheckpointDamaged, adaptkit.DistributedRunError, adaptkit.PreflightError, adaptkit.TargetModuleError)


def test_no_exception_class_is_defined_outside_errors_py():
    """A user catches what ``adaptkit`` exports; an error class defined in an engine module would not be."""
    known = _exception_names() | {"Exception", "BaseException", "ValueError", "RuntimeError"}
    offenders = []
    for path in sorted((ROOT / "adaptkit").rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):  # private: never escapes
                bases = {base.id if isinstance(base, ast.Name) else getattr(base, "attr", "") for base in node.bases}
                if bases & known:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert offenders == []
