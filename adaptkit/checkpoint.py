"""Resumable checkpoints: written aside and renamed into place, so a kill never leaves a half one.

Where: ``<output.dir>.checkpoints/``, a sibling of the output folder. The output folder itself
only appears, complete, when the run ends (``outputs.staged_output``), so checkpoints need a
place of their own that exists during the run; a sibling keeps "never overwrite ``output.dir``
without --overwrite" true and is easy to find. The folder is removed when the run succeeds.

What: ``step-<N>/`` per checkpoint, made by accelerate's ``save_state`` (optimizer, scheduler,
grad scaler, python/numpy/torch/CUDA RNG states, accumulation step) into ``.tmp-step-<N>/``,
plus the model's *trainable* state (``trainable-0.safetensors``; the frozen base is rebuilt
from the recipe), ``trainer_state.json`` (data position, counters, loss curve, history, best
epoch, the recipe's training-relevant parts) and last a ``COMPLETE`` marker; then one
``os.replace`` gives it its real name. Only folders named ``step-<N>`` that hold ``COMPLETE``
are ever resumed from. ``best-epoch-<E>/`` holds the best epoch's trainable state when
``training.load_best_at_end`` asks for it.

Data order is a function of (seed, epoch): the sampler's generator is re-seeded at the start of
every epoch, so a checkpoint only needs the epoch and the batches consumed in it.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from adaptkit.errors import AdaptkitError
from adaptkit.outputs import check_checkpoint_dir, replace_folder

if TYPE_CHECKING:
    import torch

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable-{index}.safetensors"
STEP_PATTERN = re.compile(r"^step-(\d+)$")
BEST_PATTERN = re.compile(r"^best-epoch-(\d+)$")
FORMAT = 1
# Settings that change how a run is observed or stored, not what it computes.
NOT_HASHED = {"num_threads", "checkpoint_every_steps", "keep_checkpoints", "report_to", "eval_batch_size"}


def checkpoint_root(output_dir: Path) -> Path:
    """The checkpoint folder of a run: a sibling of ``output.dir`` named ``<name>.checkpoints``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".checkpoints")


# ---------------------------------------------------------------------------- recipe identity

def _file_identity(path: Path) -> Any:
    """Content hash of a data file (a folder: names and sizes), so edited data is noticed."""
    if path.is_dir():
        return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_identity(recipe: Any) -> dict[str, Any]:
    """The parts of a recipe that decide what training computes (not where outputs go)."""
    data = recipe.resolved_dict()
    identity = {key: data[key] for key in ("model", "task", "data", "strategy", "training") if key in data}
    identity["training"] = {k: v for k, v in identity["training"].items() if k not in NOT_HASHED}
    files = {}
    for key in ("train", "eval"):
        value = getattr(recipe.data, key)
        if value is not None:
            files[key] = _file_identity(recipe.resolve_path(value))
    identity["data_files"] = files
    identity["plugins"] = plugin_versions()
    return identity


def plugin_versions() -> dict[str, str]:
    """Every loaded plugin's distribution and version: a new plugin release can change what a
    strategy computes (axolotl #2568), so a checkpoint records them and resume compares."""
    from adaptkit.plugins import get_registry

    return {info.distribution: info.version for info in get_registry().plugins}


def identity_hash(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    if path == "plugins":  # a checkpoint from before plugin versions were recorded has none
        old, new = old or {}, new or {}
    if path.startswith("plugins."):
        if old is None or new is None:
            return [f"plugin distribution {path.split('.', 1)[1]} "
                    f"{'was not loaded' if old is None else f'{old} was loaded'} when the checkpoint was made, "
                    f"{'is not loaded' if new is None else f'{new} is loaded'} now"] if old != new else []
        return [f"plugin distribution {path.split('.', 1)[1]}: version {old} in the checkpoint, {new} now"] \
            if old != new else []
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            found += _differences(old.get(key), new.get(key), f"{path}.{key}" if path else str(key))
        return found
    if old != new:
        if path.startswith("data_files."):
            return [f"the contents of data.{path.split('.', 1)[1]} changed"]
        return [f"{path}: {old!r} in the checkpoint, {new!r} now"]
    return []


def check_same_recipe(checkpoint: Path, identity: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint made by a different recipe, naming what differs."""
    state = read_state(checkpoint)
    if state.get("recipe_hash") == identity_hash(identity):
        return
    differences = _differences(state.get("recipe", {}), json.loads(json.dumps(identity, default=str)))
    raise AdaptkitError(
        f"cannot resume from {checkpoint}: it was made by a different recipe, strategy options or plugin "
        f"version ({'; '.join(differences) or 'recipe hash differs'}). Restore them, or start over with --overwrite")


# ---------------------------------------------------------------------------- finding checkpoints

def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first: ``step-<N>`` folders holding the ``COMPLETE`` marker.

    Temporary folders (``.tmp-*``) and folders without the marker were cut off mid-write and
    are never returned.
    """
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_PATTERN.match(child.name)
        if match and child.is_dir() and (child / COMPLETE).is_file() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: Path) -> Optional[Path]:
    """The newest complete checkpoint under ``root``, or None."""
    found = complete_checkpoints(root)
    return found[-1] if found else None


# ---------------------------------------------------------------------------- trainable state

def trainable_state(model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """What training changes: parameters with ``requires_grad`` and floating-point buffers.

    The frozen rest is rebuilt from the recipe on resume, so a LoRA checkpoint stays small.
    Tied (shared) tensors are stored once.
    """
    tensors = {**dict(model.named_parameters(remove_duplicate=False)),
               **dict(model.named_buffers(remove_duplicate=False))}
    return {name: tensors[name].detach().cpu().clone().contiguous() for name in trainable_state_names(model)}


def load_trainable_state(model: "torch.nn.Module", state: dict[str, "torch.Tensor"], source: Path) -> None:
    """Copy ``state`` into ``model`` in place, refusing a checkpoint of other trainable tensors."""
    import torch

    expected = set(trainable_state_names(model))
    missing = sorted(expected - set(state))
    unknown = sorted(set(state) - set(dict(model.named_parameters(remove_duplicate=False)))
                     - set(dict(model.named_buffers(remove_duplicate=False))))
    if missing or unknown:
        raise AdaptkitError(f"{source} does not match this model's trainable tensors "
                            f"(missing {missing[:3]}, unexpected {unknown[:3]})")
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    with torch.no_grad():
        for name, value in state.items():
            tensors[name].copy_(value.to(tensors[name].device, tensors[name].dtype))


def trainable_state_names(model: "torch.nn.Module") -> list[str]:
    """Names ``trainable_state`` would save, without copying anything."""
    import torch

    names, seen = [], set()
    persistent = set(model.state_dict())
    named = [(n, p) for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad]
    named += [(n, b) for n, b in model.named_buffers(remove_duplicate=False)
              if n in persistent and type(b) is torch.Tensor and b.is_floating_point()]
    for name, tensor in named:
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def save_tensors(state: dict[str, "torch.Tensor"], path: Path) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(state, str(path))
    except SafetensorError as exc:  # a full disk reaches us as "IoError(Os { code: 28 ... })"
        raise OSError(f"cannot write {path.name}: {exc}") from exc


def _is_write_error(exc: BaseException) -> bool:
    """A failed write: OSError (ENOSPC, EIO...), or torch.save / safetensors reporting one as RuntimeError."""
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("write", "writing", "ioerror", "no space"))


def load_tensors(path: Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------- RNG

def capture_rng() -> dict[str, Any]:
    """Every RNG stream training draws from (python, numpy, torch CPU and CUDA)."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(folder: Path) -> None:
    """Flush a checkpoint's files to disk before it is renamed: the marker must not outrun the data."""
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())


# ---------------------------------------------------------------------------- the checkpointer

@dataclass
class CheckpointConfig:
    """How ``fit`` checkpoints: where, how often, how many to keep, and where to resume from."""

    root: Path
    every_steps: Optional[int] = None  # None: at the end of every epoch; 0: only at the end of the run
    keep: int = 2
    resume_from: Optional[Path] = None
    identity: dict[str, Any] = field(default_factory=dict)


class Checkpointer:
    """Writes and reads checkpoints through accelerate's ``save_state`` / ``load_state``.

    accelerate saves the optimizer, scheduler, scaler and RNG states; pre-hooks replace its
    full model state dict with the trainable state only, and load that back into the model
    that is already built and wrapped, so resuming never applies a strategy twice.
    """

    def __init__(self, config: CheckpointConfig, accelerator: Any):
        self.config = config
        self.root = Path(config.root)
        self.accelerator = accelerator
        self.last_saved_step: Optional[int] = None
        self._handles = [accelerator.register_save_state_pre_hook(self._save_models),
                         accelerator.register_load_state_pre_hook(self._load_models)]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    # accelerate hooks ---------------------------------------------------------------
    def _save_models(self, models: list, weights: list, output_dir: str) -> None:
        if self.accelerator.is_main_process:
            for index, model in enumerate(models):
                save_tensors(trainable_state(self.accelerator.unwrap_model(model)),
                             Path(output_dir) / TRAINABLE_FILE.format(index=index))
        weights.clear()  # accelerate would otherwise write the whole (mostly frozen) model

    def _load_models(self, models: list, input_dir: str) -> None:
        for index, model in enumerate(models):
            path = Path(input_dir) / TRAINABLE_FILE.format(index=index)
            load_trainable_state(self.accelerator.unwrap_model(model), load_tensors(path), path)
        models.clear()

    # writing -------------------------------------------------------------------------
    def save(self, trainer_state: dict[str, Any]) -> Path:
        """Write ``step-<N>`` atomically (all processes call this) and prune old ones."""
        step = int(trainer_state["step"])
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        accelerator = self.accelerator
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                state = {"format": FORMAT, **trainer_state, "recipe": self.config.identity,
                         "recipe_hash": identity_hash(self.config.identity)}
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
                _fsync_tree(tmp)
                (tmp / COMPLETE).write_text(f"step {step}\n")
        except (OSError, RuntimeError) as exc:  # a full disk or a failing write: the previous one stays as it was
            if not _is_write_error(exc):
                raise
            raise self._write_failed(tmp, f"step-{step:08d}", exc) from exc
        if accelerator.is_main_process:
            replace_folder(tmp, final)  # a resumed run re-saving the step it resumed from: the newer wins
            self.prune(keep_best=trainer_state.get("best", {}).get("path"))
        accelerator.wait_for_everyone()
        self.last_saved_step = step
        return final

    def save_best(self, epoch: int, state: dict[str, "torch.Tensor"]) -> str:
        """Store the best epoch's trainable state as ``best-epoch-<E>/``; returns its name."""
        name = f"best-epoch-{epoch:04d}"
        if self.accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".tmp-{name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                save_tensors(state, tmp / TRAINABLE_FILE.format(index=0))
                _fsync_tree(tmp)
                (tmp / COMPLETE).write_text(f"epoch {epoch}\n")
            except (OSError, RuntimeError) as exc:
                if not _is_write_error(exc):
                    raise
                raise self._write_failed(tmp, name, exc) from exc
            replace_folder(tmp, self.root / name)
        return name

    def _write_failed(self, tmp: Path, name: str, exc: OSError) -> Exception:
        from adaptkit.errors import CheckpointWriteError

        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(self.root)
        kept = (f"the previous checkpoint {previous.name} is intact; free space and continue with --resume"
                if previous is not None else "no earlier checkpoint exists")
        return CheckpointWriteError(f"cannot write checkpoint {name} in {self.root}: "
                                    f"{getattr(exc, 'strerror', None) or exc}; {kept}")

    def load_best(self, name: str) -> dict[str, "torch.Tensor"]:
        from adaptkit.outputs import safe_join

        path = safe_join(self.root, name)  # the name is read from trainer_state.json
        if not (path / COMPLETE).is_file():
            raise AdaptkitError(f"the best epoch's weights {path} are missing or incomplete")
        return load_tensors(path / TRAINABLE_FILE.format(index=0))

    def prune(self, keep_best: Optional[str] = None) -> None:
        """Keep the newest ``keep`` complete checkpoints and the best snapshots they refer to."""
        complete = complete_checkpoints(self.root)
        kept = complete[-self.config.keep:] if self.config.keep else complete
        for old in complete[: len(complete) - len(kept)]:
            shutil.rmtree(old, ignore_errors=True)
        referenced = {keep_best} | {read_state(c).get("best", {}).get("path") for c in kept}
        for child in self.root.iterdir():
            if BEST_PATTERN.match(child.name) and child.name not in referenced:
                shutil.rmtree(child, ignore_errors=True)
            elif child.name.startswith((".tmp-", ".old-")):  # cut off by a kill: never resumed from
                shutil.rmtree(child, ignore_errors=True)

    # reading -------------------------------------------------------------------------
    def load(self, checkpoint: Path) -> dict[str, Any]:
        """Restore model (trainable state), optimizer, scheduler, RNG; return the trainer state."""
        check_same_recipe(checkpoint, self.config.identity)
        self.accelerator.load_state(str(checkpoint))
        return read_state(checkpoint)


def plan_checkpoints(recipe: Any, output_dir: Path, overwrite: bool, resume: bool,
                     is_main_process: bool = True) -> CheckpointConfig:
    """Decide where checkpoints go and what to resume, before anything is trained.

    A fresh run refuses a checkpoint folder left by an interrupted run (``--resume`` continues
    it, ``--overwrite`` discards it): nothing is thrown away without being asked. ``--resume``
    with nothing complete to resume from is an error too, not a silent fresh start.
    """
    root = checkpoint_root(output_dir)
    check_checkpoint_dir(root)  # --overwrite and a finished run delete it: nothing of the user's in it
    identity = recipe_identity(recipe)
    training = recipe.training
    config = CheckpointConfig(root=root, every_steps=training.checkpoint_every_steps,
                              keep=training.keep_checkpoints, identity=identity)
    if resume:
        latest = latest_checkpoint(root)
        if latest is None:
            raise AdaptkitError(f"--resume: no complete checkpoint in {root} to resume from; "
                                f"run without --resume to start training")
        check_same_recipe(latest, identity)
        config.resume_from = latest
        return config
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            found = latest_checkpoint(root)
            raise AdaptkitError(f"{root} holds checkpoints of an earlier run"
                                f"{f' (latest: {found.name})' if found else ''}; pass --resume to continue it, "
                                f"or --overwrite to discard it and start over")
        if is_main_process:
            shutil.rmtree(root, ignore_errors=True)
    return config
