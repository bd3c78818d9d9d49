"""Resumable checkpoints: written aside and renamed into place, so a kill never leaves a half one.

Where: ``<output.dir>.checkpoints/``, a sibling of the output folder. The output folder itself
only appears, complete, when the run ends (``outputs.staged_output``), so checkpoints need a
place of their own that exists during the run; a sibling keeps "never overwrite ``output.dir``
without --overwrite" true and is easy to find. The folder is removed when the run succeeds.

What: ``step-<N>/`` per checkpoint, made by accelerate's ``save_state`` (optimizer, scheduler,
grad scaler, python/numpy/torch/CUDA RNG states, accumulation step) into ``.tmp-step-<N>/``,
plus the model's *trainable* state (``trainable-0.safetensors``; the frozen base is rebuilt
from the recipe), ``trainer_state.json`` (data position, counters, loss curve, history, best
epoch, the recipe's training-relevant parts), the task's own tensors when it keeps any
(``task-state.safetensors``, ``Task.training_state``: a preference task's reference log-probs), and
last a ``COMPLETE`` marker holding a manifest
(every file's size and sha256, the number of processes); then one ``os.replace`` gives it its
real name. Only folders named ``step-<N>`` that hold ``COMPLETE`` are ever resumed from, and
``--resume`` checks every file against the manifest first: a truncated, missing or altered file
(a disk error, a careless copy) makes it fall back, with a warning naming the file, to the
newest intact checkpoint, and moves the damaged one aside as ``damaged-step-<N>``.
``best-epoch-<E>/`` holds the best epoch's trainable state when ``training.load_best_at_end``
asks for it.

Data order is a function of (seed, epoch): the sampler's generator is re-seeded at the start of
every epoch, so a checkpoint only needs the epoch and the batches consumed in it.
"""
from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import random
import re
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from adaptkit.errors import AdaptkitError, CheckpointDamaged, CheckpointWriteError, exception_chain  # noqa: F401 (defined in errors, importable here too)
from adaptkit.engine.outputs import (CHECKPOINT_LEFTOVER, check_checkpoint_dir, record_checkpoint_logs,
                                     remove_checkpoint_dir, replace_folder, safe_join)
from adaptkit.engine.write_errors import DISK_FULL, failed_write_errno, free_bytes, safetensors_errno
from adaptkit.engine.stacking import run_folder

if TYPE_CHECKING:
    import torch

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
TRAINABLE_FILE = "trainable-{index}.safetensors"
TRAINABLE_PATTERN = re.compile(r"^trainable-\d+\.safetensors$")
TASK_STATE_FILE = "task-state.safetensors"  # Task.training_state, when the task keeps any
RNG_FILE = "random_states_{index}.pkl"  # accelerate's name, one per process
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
        if isinstance(value, Path):
            files[key] = _file_identity(recipe.resolve_path(value))
        elif value is not None:  # named datasets are identified by name/config/split/revision in the recipe
            files[key] = [_file_identity(recipe.resolve_path(source.path)) if source.path is not None else None
                          for source in recipe.data.sources(key)]
    identity["data_files"] = files
    base_run = run_folder(recipe.model.name)
    if base_run is not None:  # the same folder, retrained since, is another base: resuming would mix the two
        identity["base_run"] = hashlib.sha256((base_run / "metrics.json").read_bytes()).hexdigest()[:16]
    identity["plugins"] = plugin_versions()
    return identity


def plugin_versions() -> dict[str, str]:
    """Every loaded plugin's distribution and version: a new plugin release can change what a
    strategy computes (axolotl #2568), so a checkpoint records them and resume compares."""
    from adaptkit.plugin.registry import get_registry

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
        if path == "base_run":
            return ["the run model.name names was trained again (its metrics.json changed)" if old and new else
                    "model.name " + ("is a finished run now" if new else "was a finished run")]
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


def gathered_trainable_state(accelerator: Any, model: "torch.nn.Module",
                             everywhere: bool = False) -> dict[str, "torch.Tensor"]:
    """``trainable_state`` of a model accelerate prepared, whole even when it is sharded.

    Under FSDP each process holds a shard of every weight (a DTensor, or a flat parameter), so
    the full tensors are gathered with ``accelerator.get_state_dict``, a collective: every
    process must call this. The main process gets the tensors; the others an empty dict, or
    (``everywhere``) the same tensors broadcast from the main process.
    """
    from adaptkit.engine.distributed import sharded

    if not sharded(accelerator):
        return trainable_state(accelerator.unwrap_model(model))
    names = trainable_state_names(accelerator.unwrap_model(model))
    full = accelerator.get_state_dict(model)
    state = ({name: full[name].detach().cpu().clone().contiguous() for name in names}
             if accelerator.is_main_process else {})
    if everywhere:
        import torch.distributed as dist

        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    return state


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
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP2 shard (DTensor)
        key = (local.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def save_tensors(state: dict[str, "torch.Tensor"], path: Path) -> None:
    """safetensors' ``save_file``, its I/O failures raised as the OSError (with errno) they are."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(state, str(path))
    except SafetensorError as exc:  # a full disk reaches us as "I/O error: ... (os error 28)"
        code = safetensors_errno(exc)
        error = OSError(code, f"cannot write {path.name}: {exc}") if code else OSError(f"cannot write {path.name}: {exc}")
        raise error from exc


def save_task_state(task: Any, folder: Path) -> None:
    """``task.training_state()`` as ``task-state.safetensors`` in ``folder`` (a checkpoint, or the
    run's output folder); nothing when there is no task or it keeps nothing."""
    state = task.training_state() if task is not None else {}
    if state:
        save_tensors(state, folder / TASK_STATE_FILE)


def _tree_size(folder: Optional[Path]) -> int:
    if folder is None or not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


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


def _seal(folder: Path) -> dict[str, dict[str, Any]]:
    """Flush a checkpoint's files to disk and record each one's size and sha256.

    The flush comes before the ``COMPLETE`` marker, so the marker never outruns the data; the
    record goes into the marker, so a file truncated or altered later (a disk error, a partial
    copy to another machine) is found before a resume trusts it.
    """
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
                os.fsync(handle.fileno())
            files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size,
                                                          "sha256": digest.hexdigest()}
    return files


def _write_marker(folder: Path, content: dict[str, Any]) -> None:
    with (folder / COMPLETE).open("w") as handle:
        handle.write(json.dumps(content, indent=1) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


# ---------------------------------------------------------------------------- verifying checkpoints

LEGACY_MARKER = re.compile(r"^(step|epoch) \d+\s*$")  # written before markers held a manifest


def read_manifest(checkpoint: Path) -> Optional[dict[str, Any]]:
    """The manifest in ``COMPLETE``; None for a marker from before manifests (nothing to check).

    Raises CheckpointDamaged when the marker is unreadable or not a manifest.
    """
    try:
        text = (checkpoint / COMPLETE).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointDamaged(f"its {COMPLETE} marker cannot be read ({exc})") from exc
    if LEGACY_MARKER.match(text):
        return None
    try:
        manifest = json.loads(text)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointDamaged(f"its {COMPLETE} marker is damaged (not the manifest it should hold)")
    return manifest


def verify_checkpoint(checkpoint: Path, deep: bool = True) -> list[str]:
    """What is wrong with a checkpoint: [] when every file its manifest lists is there with the
    recorded size and (``deep``) sha256, and the best-epoch snapshot it refers to is intact too.

    Each problem names the file: ``optimizer.bin is truncated (2048 of 9556 bytes)``.
    """
    try:
        manifest = read_manifest(checkpoint)
    except CheckpointDamaged as exc:
        return [str(exc)]
    problems: list[str] = []
    if manifest is None:  # an old marker: at least the state must be readable
        files: dict[str, Any] = {}
    else:
        files = manifest["files"]
        if checkpoint.name.startswith("step-") and (STATE_FILE not in files or not any(
                TRAINABLE_PATTERN.match(name) for name in files)):
            problems.append(f"its manifest lists no {STATE_FILE} or no trainable weights")
    for name, entry in sorted(files.items()):
        try:
            path = safe_join(checkpoint, *name.split("/"))
            size, digest = int(entry["size"]), str(entry["sha256"])
        except (AdaptkitError, KeyError, TypeError, ValueError):
            problems.append(f"its manifest has a bad entry {name!r}")
            continue
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        actual = path.stat().st_size
        if actual != size:
            problems.append(f"{name} is truncated ({actual} of {size} bytes)" if actual < size
                            else f"{name} has {actual} bytes, the manifest says {size}")
        elif deep and _file_identity(path) != digest:
            problems.append(f"{name} is damaged (its sha256 differs from the one recorded when it was written)")
    if checkpoint.name.startswith("step-") and not problems:
        try:
            state = read_state(checkpoint)
            best = (state.get("best") or {}).get("path")
        except (OSError, ValueError, AttributeError) as exc:
            return [f"{STATE_FILE} cannot be read ({exc})"]
        if best:
            try:
                snapshot = safe_join(checkpoint.parent, best)
            except AdaptkitError as exc:
                return [str(exc)]
            if not (snapshot / COMPLETE).is_file():
                problems.append(f"the best-epoch snapshot {best} it refers to is missing")
            else:
                problems += [f"{best}/{problem}" for problem in verify_checkpoint(snapshot, deep)]
    return problems


def _move_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint so it is never resumed or counted again, but kept to look at."""
    target = checkpoint.with_name(f"damaged-{checkpoint.name}")
    replace_folder(checkpoint, target)  # the same step damaged twice: the latest copy is kept
    return target


def newest_intact_checkpoint(root: Path, warn: Callable[[str], None],
                             move_aside: bool = True) -> Optional[Path]:
    """The newest complete checkpoint whose files all match its manifest.

    Every damaged one newer than it is reported through ``warn`` with the files at fault and
    (``move_aside``, the main process) renamed ``damaged-step-<N>``. Raises CheckpointDamaged,
    naming each, when complete checkpoints exist but none is intact.
    """
    candidates = complete_checkpoints(root)
    damaged: list[str] = []
    for checkpoint in reversed(candidates):
        problems = verify_checkpoint(checkpoint)
        if not problems:
            return checkpoint
        moved = ""
        if move_aside:
            try:
                moved = f"moved it aside to {_move_aside(checkpoint).name} and "
            except OSError:
                pass
        damaged.append(f"{checkpoint.name}: {'; '.join(problems)}")
        warn(f"warning: checkpoint {checkpoint.name} is damaged: {'; '.join(problems)}; "
             f"{moved}falling back to the previous checkpoint")
    if candidates:
        raise CheckpointDamaged(f"--resume: every checkpoint in {root} is damaged ({' | '.join(damaged)}); "
                                f"run with --overwrite to start over")
    return None


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
    that is already built and wrapped, so resuming never applies a strategy twice. ``task``'s
    ``training_state`` is saved beside them and handed back to its ``load_training_state``.
    """

    def __init__(self, config: CheckpointConfig, accelerator: Any, task: Any = None):
        self.config = config
        self.root = Path(config.root)
        self.accelerator = accelerator
        self.task = task
        self.last_saved_step: Optional[int] = None
        self._handles = [accelerator.register_save_state_pre_hook(self._save_models),
                         accelerator.register_load_state_pre_hook(self._load_models)]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()

    # accelerate hooks ---------------------------------------------------------------
    def _save_models(self, models: list, weights: list, output_dir: str) -> None:
        for index, model in enumerate(models):  # every process: gathering a sharded model is a collective
            state = gathered_trainable_state(self.accelerator, model)
            if self.accelerator.is_main_process:
                save_tensors(state, Path(output_dir) / TRAINABLE_FILE.format(index=index))
        weights.clear()  # accelerate would otherwise write the whole (mostly frozen) model

    def _load_models(self, models: list, input_dir: str) -> None:
        from adaptkit.engine.distributed import sharded

        if sharded(self.accelerator):
            # accelerate's load_fsdp_model restores the sharded model itself from the full (or
            # sharded) state dict its save_fsdp_model wrote; copying full tensors into shards here
            # would not fit. The trainable file is still written: it is what --resume verifies,
            # and what a run with another backend or process count could read.
            return
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
                save_task_state(self.task, tmp)
                state = {"format": FORMAT, **trainer_state, "recipe": self.config.identity,
                         "recipe_hash": identity_hash(self.config.identity)}
                (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
                _write_marker(tmp, {"format": FORMAT, "step": step, "processes": accelerator.num_processes,
                                    "files": _seal(tmp)})
        except Exception as exc:  # a full disk or a failing write: the previous one stays as it was
            failed = self._write_failed(tmp, f"step-{step:08d}", exc, self._checkpoint_bytes)
            if failed is None:
                raise
            raise failed from exc
        except BaseException:  # a second Ctrl-C mid-write: no half folder either
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if accelerator.is_main_process:
            replace_folder(tmp, final)  # a resumed run re-saving the step it resumed from: the newer wins
            self.prune(keep_best=trainer_state.get("best", {}).get("path"))
            record_checkpoint_logs(self.root)  # the trackers' files so far are this run's: replaceable later
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
                _write_marker(tmp, {"format": FORMAT, "epoch": epoch, "files": _seal(tmp)})
            except Exception as exc:
                failed = self._write_failed(tmp, name, exc, lambda: _tensor_bytes(state.values()) + (64 << 10))
                if failed is None:
                    raise
                raise failed from exc
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            replace_folder(tmp, self.root / name)
        return name

    def _checkpoint_bytes(self) -> int:
        """About how many bytes one checkpoint takes: the last complete one's size, or what the
        trainable tensors, the optimizer's state and the small files come to."""
        import torch

        estimate = 64 << 10  # scheduler, RNG states, trainer state, marker
        for model in getattr(self.accelerator, "_models", []):
            model = self.accelerator.unwrap_model(model)
            tensors = {**dict(model.named_parameters(remove_duplicate=False)),
                       **dict(model.named_buffers(remove_duplicate=False))}
            estimate += _tensor_bytes(tensors[name] for name in trainable_state_names(model))
        for optimizer in getattr(self.accelerator, "_optimizers", []):
            for values in getattr(optimizer, "optimizer", optimizer).state.values():
                estimate += _tensor_bytes(v for v in values.values() if isinstance(v, torch.Tensor))
        return max(estimate, _tree_size(latest_checkpoint(self.root)))

    def _write_failed(self, tmp: Path, name: str, exc: BaseException,
                      needed: Callable[[], int]) -> Optional[Exception]:
        """The error to report for a failed checkpoint write, after removing the partial folder;
        None when ``exc`` is no write failure (a bug: re-raised as it is).

        A full disk is told apart structurally: errno ENOSPC/EDQUOT, or (torch's writer drops
        the errno) less room left on the file system than the checkpoint still needed. The
        message says how much a checkpoint needs and how much is free once the partial write
        is gone, so the user knows what to clear.
        """
        code = failed_write_errno(exc)
        written = _tree_size(tmp)
        free_at_failure = free_bytes(self.root)
        _release_files(exc)
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            size = needed()
        except Exception:  # an estimate must never hide the real error
            size = written
        full = code in DISK_FULL or (
            free_at_failure is not None and free_at_failure < max(size - written, 1))
        if code is None and not full:
            return None
        previous = latest_checkpoint(self.root)
        kept = (f"the previous checkpoint {previous.name} is intact"
                if previous is not None else "no earlier checkpoint exists")
        if not full:
            return CheckpointWriteError(f"cannot write checkpoint {name} in {self.root}: "
                                        f"{getattr(exc, 'strerror', None) or exc}; {kept}; fix the cause and "
                                        f"{'continue with --resume' if previous is not None else 'run again'}")
        free = free_bytes(self.root) or 0
        reason = os.strerror(code) if code in DISK_FULL else os.strerror(errno.ENOSPC)
        others = [c for c in complete_checkpoints(self.root)]
        fewer = (f", or lower training.keep_checkpoints (the {len(others)} kept now take "
                 f"{_mib(sum(_tree_size(c) for c in others))})" if len(others) > 1 else "")
        return CheckpointWriteError(
            f"cannot write checkpoint {name} in {self.root}: {reason} (the disk is full). A checkpoint of "
            f"this run needs about {_mib(size)}; {_mib(free)} is free there now (the partial write was "
            f"removed). {kept[0].upper() + kept[1:]}. Free at least {_mib(max(size - free, 0) + (1 << 20))}"
            f"{fewer} and {'continue with --resume' if previous is not None else 'run again'}")

    def load_best(self, name: str) -> dict[str, "torch.Tensor"]:
        path = safe_join(self.root, name)  # the name is read from trainer_state.json
        if not (path / COMPLETE).is_file():
            raise AdaptkitError(f"the best epoch's weights {path} are missing or incomplete")
        problems = verify_checkpoint(path)
        if problems:
            raise CheckpointDamaged(f"the best epoch's weights in {path} are damaged: {'; '.join(problems)}")
        return load_tensors(path / TRAINABLE_FILE.format(index=0))

    def prune(self, keep_best: Optional[str] = None) -> None:
        """Keep the newest ``keep`` complete checkpoints and the best snapshots they refer to."""
        complete = complete_checkpoints(self.root)
        kept = complete[-self.config.keep:] if self.config.keep else complete
        for old in complete[: len(complete) - len(kept)]:
            shutil.rmtree(old, ignore_errors=True)
        referenced = {keep_best}
        for checkpoint in kept:
            try:
                referenced.add((read_state(checkpoint).get("best") or {}).get("path"))
            except (OSError, ValueError, AttributeError):
                continue  # a damaged state refers to nothing; it is reported when resumed from
        for child in self.root.iterdir():
            if BEST_PATTERN.match(child.name) and child.name not in referenced:
                shutil.rmtree(child, ignore_errors=True)
            elif CHECKPOINT_LEFTOVER.match(child.name):  # cut off by a kill: never resumed from
                shutil.rmtree(child, ignore_errors=True)

    # reading -------------------------------------------------------------------------
    def load(self, checkpoint: Path) -> dict[str, Any]:
        """Restore model (trainable state), optimizer, scheduler, RNG; return the trainer state.

        Any failure to read a file back is a CheckpointDamaged naming it, never a traceback;
        and the RNG states are restored here too and checked, because accelerate only logs
        (at info level) an RNG file it cannot load and goes on with other random numbers: a run
        that would not continue bit for bit must not continue silently.
        """
        check_same_recipe(checkpoint, self.config.identity)
        advice = (f"move {checkpoint.name} aside (or delete it) to resume from the checkpoint before it, "
                  f"or start over with --overwrite")
        try:
            self.accelerator.load_state(str(checkpoint))
        except AdaptkitError:
            raise
        except Exception as exc:
            unreadable = _unreadable_files(checkpoint)
            named = f" ({', '.join(unreadable)} cannot be read back)" if unreadable else ""
            raise CheckpointDamaged(f"cannot load checkpoint {checkpoint}{named}: {type(exc).__name__}: "
                                    f"{str(exc)[:300]}; {advice}") from exc
        self._restore_rng(checkpoint, advice)
        if self.task is not None:
            self.task.load_training_state(self._task_state(checkpoint, advice))
        return read_state(checkpoint)

    @staticmethod
    def _task_state(checkpoint: Path, advice: str) -> dict[str, "torch.Tensor"]:
        """The task's tensors saved with ``checkpoint`` (empty when it kept none)."""
        path = checkpoint / TASK_STATE_FILE
        if not path.is_file():
            return {}
        try:
            return load_tensors(path)
        except Exception as exc:
            raise CheckpointDamaged(f"cannot read the task's state {path} ({type(exc).__name__}: {exc}); "
                                    f"{advice}") from exc

    def _restore_rng(self, checkpoint: Path, advice: str) -> None:
        from accelerate.utils import load

        index = self.accelerator.process_index
        path = checkpoint / RNG_FILE.format(index=index)
        try:
            manifest = read_manifest(checkpoint)
        except CheckpointDamaged:
            manifest = None
        saved_by = int(manifest.get("processes", 1)) if manifest else 1
        if not path.is_file():
            if index < saved_by:
                raise CheckpointDamaged(f"cannot restore the random number generator states: {path} is "
                                        f"missing; {advice}")
            return  # more processes than the run that saved it: this one starts from the seed
        try:
            states = load(path)
            restore_rng({"python": states["random_state"], "numpy": states["numpy_random_seed"],
                         "torch": states["torch_manual_seed"],
                         **({"cuda": states["torch_cuda_manual_seed"]} if "torch_cuda_manual_seed" in states else {})})
        except Exception as exc:
            raise CheckpointDamaged(f"cannot restore the random number generator states from {path} "
                                    f"({type(exc).__name__}: {exc}): the run would not continue as it began; "
                                    f"{advice}") from exc


def _unreadable_files(checkpoint: Path) -> list[str]:
    """Which of a checkpoint's files fail to load on their own: names the culprit when loading
    the whole failed and no manifest says which file changed."""
    from accelerate.utils import load
    from safetensors import safe_open

    found = []
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt") as handle:
                    for key in handle.keys():
                        handle.get_tensor(key)
            elif path.suffix in (".bin", ".pkl"):
                load(path, map_location="cpu")
            elif path.name == STATE_FILE:
                json.loads(path.read_text())
        except Exception:
            found.append(path.name)
    return found


def _release_files(exc: BaseException) -> None:
    """Let go of the files a failed writer still holds open (torch's zip writer lives on in the
    traceback's frames): a removed file's space comes back only when its last handle closes, so
    without this the partial write would keep the disk full and the free space reported short."""
    for current in exception_chain(exc):
        traceback.clear_frames(current.__traceback__)
    gc.collect()


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def plan_checkpoints(recipe: Any, output_dir: Path, overwrite: bool, resume: bool,
                     is_main_process: Optional[bool] = None) -> CheckpointConfig:
    """Decide where checkpoints go and what to resume, before anything is trained.

    A fresh run refuses a checkpoint folder left by an interrupted run (``--resume`` continues
    it, ``--overwrite`` discards it): nothing is thrown away without being asked. ``--resume``
    with nothing complete to resume from is an error too, not a silent fresh start; a damaged
    newest checkpoint is reported and passed over for the newest intact one. Every process
    checks the same files, so all of them choose the same checkpoint; only the main one
    (``is_main_process``, by default rank 0 of ``RANK``) warns, moves aside and deletes.
    """
    root = checkpoint_root(output_dir)
    check_checkpoint_dir(root)  # --overwrite and a finished run delete it: nothing of the user's in it
    identity = recipe_identity(recipe)
    training = recipe.training
    config = CheckpointConfig(root=root, every_steps=training.checkpoint_every_steps,
                              keep=training.keep_checkpoints, identity=identity)
    if is_main_process is None:
        is_main_process = int(os.environ.get("RANK", "0") or 0) == 0
    if resume:
        latest = newest_intact_checkpoint(
            root, warn=(lambda text: print(text, file=sys.stderr, flush=True)) if is_main_process else (lambda _: None),
            move_aside=is_main_process)
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
            remove_checkpoint_dir(root)  # what check_checkpoint_dir found to be adaptkit's, nothing else
    return config
