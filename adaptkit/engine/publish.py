"""Outputs people can share: the base model's Hub id in every export, and ``push`` to the Hub.

A run folder is only shareable when everything in it loads on another machine: the adapter
names its base by Hub id (never this machine's site-packages path), every exported folder holds
its tokenizer, and the card carries Hugging Face metadata. ``push`` uploads a finished run with
``huggingface_hub`` (``create_repo`` + ``upload_folder``); it refuses runs whose contract is not
complete and fails at once, without the client's retries, when the Hub cannot be reached.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from adaptkit.errors import AdaptkitError
from adaptkit.plugin import sources

# "owner/name": what the Hub accepts as a model id (huggingface_hub's validate_repo_id rules, roughly)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
# The contract rules every finished run records (adaptkit.engine.runner): a run missing one was not verified.
REQUIRED_RULES = ("frozen", "export", "signature")
ONE_OF_RULES = ("equivalence", "removal")  # mergeable strategies prove equivalence, the others removal
NOT_UPLOADED = {".adaptkit-manifest.json"}  # bookkeeping for --overwrite, meaningless on the Hub


def pipeline_tag(task: Optional[str]) -> Optional[str]:
    """The Hub pipeline tag the installed task ``task`` declares (``Task.pipeline_tag``), else None.

    Read from the task class, not a table keyed by task names: a third party's task gets its tag
    on the card by declaring it, and the core names no task.
    """
    from adaptkit.plugin.registry import get_registry

    task_cls = get_registry().tasks.get(task or "")
    return getattr(task_cls, "pipeline_tag", None) if task_cls is not None else None


def is_hub_id(text: Optional[str]) -> bool:
    """Whether ``text`` is shaped like a Hub model id (``owner/name``) and is not a local path."""
    return bool(text) and bool(_HUB_ID.match(str(text))) and not Path(str(text)).expanduser().exists()


def model_hub_id(name: Optional[str], source: Any) -> Optional[str]:
    """The Hub id of the model a run started from, or None when it came from nowhere on the Hub.

    A Hub id or Hub cache entry is its own id; a plugin's answer may carry ``hub_id`` (the packaged
    MiniLM does), or else the recipe named it by Hub id; a local folder has one only when its
    config.json names one in ``_name_or_path``. A model built from a config has none.
    """
    if source is None or source.origin in ("run", "run-kept"):  # a run as the base: no Hub model holds base + its change
        return None
    if source.origin in ("hub", "hub-cache"):
        return source.location
    if source.origin == "plugin":
        from adaptkit.plugin.registry import get_registry

        answer = get_registry().manager.hook.adaptkit_resolve_model(name=name)
        carried = getattr(answer, "hub_id", None)
        if isinstance(carried, str) and _HUB_ID.match(carried):
            return carried
        return name if name and _HUB_ID.match(name) else None
    try:
        named = json.loads((Path(source.location) / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return named if isinstance(named, str) and is_hub_id(named) else None


def finish_exports(folders: list[Path], tokenizer: Any, hub_id: Optional[str]) -> None:
    """Make each exported folder load on its own: its tokenizer beside the weights, and an adapter's
    ``base_model_name_or_path`` set to the Hub id (peft wrote the local path it was loaded from)."""
    for folder in folders:
        if not folder.is_dir():
            continue
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        config_path = folder / "adapter_config.json"
        if hub_id and config_path.is_file():
            config = json.loads(config_path.read_text())
            config["base_model_name_or_path"] = hub_id
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass
class PushPlan:
    """What ``push`` uploads (``files``, relative POSIX paths) and where; ``url`` once pushed."""

    run_dir: Path
    repo_id: str
    private: bool
    files: list[str]
    card: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    url: Optional[str] = None


def _metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise AdaptkitError(f"{run_dir} is not a finished adaptkit run: it has no metrics.json")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise AdaptkitError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from None


def check_contract(run_dir: Path) -> list[str]:
    """The run's contract lines, refused unless every rule was checked and passed.

    A run whose contract failed never gets a folder; one that lacks a rule here was written by an
    older adaptkit, or with ``output.verify_export: false``, or edited by hand, and is not shared.
    """
    metrics = _metrics(run_dir)
    lines = metrics.get("contract")
    if not isinstance(lines, list) or not lines:
        raise AdaptkitError(f"{run_dir}/metrics.json has no contract checks: this run was not verified, "
                            f"so it is not pushed. Run the recipe again with a current adaptkit")
    rules = {str(line).split(":", 1)[0].strip() for line in lines}
    missing = [rule for rule in REQUIRED_RULES if rule not in rules]
    if not any(rule in rules for rule in ONE_OF_RULES):
        missing.append(" or ".join(ONE_OF_RULES))
    if missing:
        hint = (" (the recipe set output.verify_export: false)" if "export" in missing else "")
        raise AdaptkitError(f"{run_dir}/metrics.json: the contract checks are incomplete, missing "
                            f"{', '.join(missing)}{hint}; a run is pushed only when every check passed. "
                            f"Run it again with every check on")
    return [str(line) for line in lines]


def links_leaving(run_dir: Path, names: list[str]) -> list[str]:
    """``name -> target`` for each of ``names`` whose real file lies outside ``run_dir``.

    A listed file (or a folder above it) may have become a symbolic link since the run wrote it:
    ``recipe.yaml -> ~/.ssh/id_ed25519``. Uploading reads through the link, so the target's content,
    which the run never wrote, would go to the Hub. A link that stays inside the folder is harmless.
    A manifest entry with ``..`` is caught the same way.
    """
    root = Path(os.path.realpath(run_dir))
    leaving = []
    for name in names:
        target = Path(os.path.realpath(run_dir / name))
        if target != root and root not in target.parents:
            leaving.append(f"{name} -> {target}")
    return leaving


def upload_files(run_dir: Path) -> list[str]:
    """Exactly the files the run wrote (its manifest), each present; predictions and other later
    additions stay on this machine. A listed file that is (or lies under) a link leading out of the
    folder is refused, naming each link and its target: nothing is uploaded, the dry run included."""
    from adaptkit.engine.outputs import manifest_files

    listed = manifest_files(run_dir)
    if not listed:
        raise AdaptkitError(f"{run_dir} has no adaptkit manifest (.adaptkit-manifest.json): not a run folder "
                            f"adaptkit wrote, or written before manifests existed; run the recipe again")
    leaving = links_leaving(run_dir, sorted(listed))
    if leaving:
        raise AdaptkitError(f"{run_dir}: {', '.join(leaving)}: "
                            f"{'a symbolic link leads' if len(leaving) == 1 else 'symbolic links lead'} out of "
                            f"the run folder, so its content is not the run's; nothing is uploaded. Replace "
                            f"{'it' if len(leaving) == 1 else 'them'} with the run's own file, or run the recipe again")
    absent = sorted(name for name in listed if not (run_dir / name).is_file())
    if absent:
        raise AdaptkitError(f"{run_dir} is incomplete: {', '.join(absent[:5])} listed in its manifest "
                            f"{'is' if len(absent) == 1 else 'are'} missing; run the recipe again")
    return sorted(name for name in listed if name not in NOT_UPLOADED)


def check_card(run_dir: Path) -> dict[str, Any]:
    """The card's metadata, checked the way the Hub reads it (offline: no API call).

    Refused: no card, unreadable YAML, a ``model-index`` huggingface_hub cannot parse or that holds
    a NaN or infinite score, a ``base_model`` that is not a Hub id (a local path would break
    loading elsewhere).
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    path = run_dir / "README.md"
    if not path.is_file():
        raise AdaptkitError(f"{run_dir} has no README.md model card")
    try:
        card = ModelCard(path.read_text(encoding="utf-8"), ignore_metadata_errors=False)
        data = card.data.to_dict()
        _, results = model_index_to_eval_results(data["model-index"]) if data.get("model-index") else (None, [])
    except Exception as exc:  # huggingface_hub raises ValueError/KeyError/yaml errors for broken metadata
        raise AdaptkitError(f"{path}: its Hugging Face metadata does not parse ({type(exc).__name__}: {exc})") from None
    if not data:
        raise AdaptkitError(f"{path} has no metadata block (--- ... --- at the top); the Hub would show no "
                            f"model details. Run the recipe again with a current adaptkit")
    for result in results:  # a NaN or infinite score would be published as a number the Hub cannot show
        value = result.metric_value
        if isinstance(value, float) and not math.isfinite(value):
            raise AdaptkitError(f"{path}: model-index metric {result.metric_type!r} on {result.dataset_name!r} is "
                                f"{value}; a card must report finite scores (evaluate the run again)")
    base = data.get("base_model")
    if base is not None and not (isinstance(base, str) and _HUB_ID.match(base)):
        raise AdaptkitError(f"{path}: base_model {base!r} is not a Hub id (owner/name); the model would not "
                            f"load elsewhere")
    return data


def plan_push(run_dir: Path, repo_id: str, private: bool = False) -> PushPlan:
    """Everything ``push`` checks before it touches the network: repo id, contract, files, card."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AdaptkitError(f"run folder {run_dir} does not exist")
    if not _HUB_ID.match(repo_id or ""):
        raise AdaptkitError(f"repo id {repo_id!r} is not of the form owner/name (letters, digits, '-', '_', '.')")
    check_contract(run_dir)
    files = upload_files(run_dir)
    card = check_card(run_dir)
    notes = [] if card.get("base_model") else [
        "the card names no base_model (the run started from a local folder or a config): users must "
        "know the base model to load an adapter"]
    return PushPlan(run_dir, repo_id, private, files, card, notes)


def push(run_dir: Path, repo_id: str, private: bool = False, dry_run: bool = False,
         token: Optional[str] = None) -> PushPlan:
    """Upload the finished run in ``run_dir`` to the Hub model repo ``repo_id`` (created if absent).

    ``dry_run`` checks everything and returns the plan (files, card metadata) without network or
    token. Otherwise the Hub must answer a plain TCP connect within seconds: offline, this fails at
    once instead of inside huggingface_hub's retry loop. The token comes from ``token`` or the
    usual places (``HF_TOKEN``, ``hf auth login``).
    """
    plan = plan_push(run_dir, repo_id, private)
    if dry_run:
        return plan
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    problem = sources.hub_unreachable()  # asked of the one owner of "can the Hub be reached"
    if problem:
        raise AdaptkitError(f"cannot push to the Hub: {problem}. Nothing was uploaded; connect, or check "
                            f"what would go with --dry-run")
    token = token or get_token()
    if not token:
        raise AdaptkitError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(plan.run_dir), repo_id=repo_id, repo_type="model",
                                   allow_patterns=[glob.escape(name) for name in plan.files],
                                   commit_message=f"adaptkit run {plan.run_dir.name}")
    except HfHubHTTPError as exc:
        raise AdaptkitError(f"the Hub refused the push to {repo_id}: {exc}") from None
    except OSError as exc:  # connection dropped mid-way
        raise AdaptkitError(f"the push to {repo_id} failed: {exc}") from None
    plan.url = str(getattr(commit, "repo_url", None) or f"{sources.hub_endpoint()}/{repo_id}")
    return plan
