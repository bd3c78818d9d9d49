"""One training loop for every strategy, run by accelerate.

accelerate owns devices, mixed precision, gradient accumulation and processes; this module
owns the order of things: batches grouped by length (less padding), loss read back from
the device only at log points (no per-step host sync), evaluation once per epoch, the best
epoch and early stopping, and checkpoints that resume bit for bit (``adaptkit.engine.checkpoint``).

accelerate, rich, bitsandbytes and transformers' helpers are imported where they are used: a run that
never reaches them (no progress bar, no 8-bit optimizer) does not pay for loading them.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, RandomSampler

from adaptkit.engine.budget import step_budget
from adaptkit.engine.checkpoint import (CheckpointConfig, Checkpointer, capture_rng, gathered_trainable_state,
                                        latest_checkpoint, load_trainable_state, restore_rng)
from adaptkit.engine.device import mixed_precision, runs_on_cpu
from adaptkit.engine.distributed import (accelerator_options, become_unsharded, check_global_batch, meta_skeleton,
                                         shard_on_cpus, sharded, world_size)
from adaptkit.engine.models import enable_gradient_checkpointing
from adaptkit.engine.outputs import record_checkpoint_logs
from adaptkit.engine.train_metrics import MetricSums
from adaptkit.errors import AdaptkitError, RunInterrupted, TrainingDiverged
from adaptkit.plugin.strategy import Strategy
from adaptkit.plugin.task import Task
from adaptkit.recipe.schema import TrainingSection

if TYPE_CHECKING:
    from adaptkit.recipe.schema import DistributedSection

LOG_EVERY = 10


@dataclass
class FitResult:
    """What a training run measured; ``history`` has one entry per epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    train_seconds: float = 0.0
    train_examples: int = 0
    final_metrics: dict[str, float] = field(default_factory=dict)
    best: dict[str, Any] = field(default_factory=dict)  # metric, epoch, value, metrics of the best epoch
    loaded_best: bool = False  # the model holds the best epoch's weights, not the last epoch's
    stopped_early: Optional[int] = None  # the epoch after which early stopping ended training
    resumed_from_step: Optional[int] = None


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this run: CUDA allocator peak on a GPU, process peak RSS on a CPU.

    psutil answers on every platform: Windows' own peak (``peak_wset``) directly; on Linux and
    macOS psutil has no peak figure, so the kernel's (``getrusage`` ``ru_maxrss``, KiB on Linux,
    bytes on macOS) is read, and psutil's current RSS where even that is missing. No ``/proc``.
    """
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import psutil

    info = psutil.Process().memory_info()
    if getattr(info, "peak_wset", None):
        return int(info.peak_wset)
    try:
        import resource
    except ImportError:  # pragma: no cover - a platform without getrusage: the current RSS, a lower bound
        return int(info.rss)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


_MLFLOW_URI_SET: list[str] = []  # the tracking URIs this process set itself (a later run may replace them)


def keep_mlflow_store_in(folder: Path) -> None:
    """Point MLflow's default store at ``folder`` (the run's logs, moved into its output at the end).

    Without ``MLFLOW_TRACKING_URI`` MLflow 3 creates ``mlflow.db`` (about 1 MB) and ``mlruns/`` in
    the working directory, wherever the user happens to run adaptkit. A URI the user set is kept;
    one an earlier run in this process set is replaced by this run's own.
    """
    current = os.environ.get("MLFLOW_TRACKING_URI")
    if current and current not in _MLFLOW_URI_SET:
        return
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    _MLFLOW_URI_SET.append(uri)


def make_accelerator(training: TrainingSection, log: Callable[[str], None] = print,
                     logging_dir: Optional[Path] = None, distributed: Optional["DistributedSection"] = None,
                     base_dir: Optional[Path] = None):
    """An ``Accelerator`` for the recipe, with GPU-only settings refused clearly on a CPU.

    ``logging_dir`` is where trackers (``training.report_to``) write while the run is going;
    the runner moves it into the output folder at the end. ``distributed`` (the recipe's section)
    chooses ddp / fsdp / deepspeed and the collective timeout when the run was launched with
    several processes; ``training.batch_size`` stays the global batch (``adaptkit.engine.distributed``).
    """
    from accelerate import Accelerator

    precision = mixed_precision(training)
    if training.mixed_precision == "fp16" and precision == "no":
        log("training.mixed_precision: fp16 needs a GPU; this run uses full precision (fp32) on the CPU. "
            "Set mixed_precision: bf16 (or auto) for reduced precision on a CPU.")
    if training.num_threads:
        torch.set_num_threads(training.num_threads)
    # accelerate keeps one process-wide state and refuses a second Accelerator with another
    # precision ("AcceleratorState has already been initialized"); each run here owns its own.
    # The process group (PartialState) is kept: it belongs to the launcher, not to a run.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    trackers = {}
    if training.report_to:
        from accelerate.utils import ProjectConfiguration

        if "mlflow" in training.report_to:
            keep_mlflow_store_in(Path(logging_dir or "."))

        trackers = {"log_with": list(training.report_to),
                    "project_config": ProjectConfiguration(project_dir=str(logging_dir or "."),
                                                           logging_dir=str(logging_dir or "."))}
    world = world_size()
    # Launched processes on a machine without GPUs train on the CPU over gloo (accelerate's MULTI_CPU).
    cpu = training.device == "cpu" or (world > 1 and runs_on_cpu(training))
    options = accelerator_options(distributed, world, base_dir, log)
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu,
                              gradient_accumulation_steps=training.gradient_accumulation_steps, **trackers, **options)
    shard_on_cpus(accelerator, options)  # FSDP over gloo: accelerate's own FSDP path, on CPUs
    check_global_batch(training, accelerator.num_processes)
    return accelerator


def train_loader(dataset, batch_size: int, collate, group_by_length: bool, seed: int) -> DataLoader:
    """Batches of similar length when asked (like Trainer's ``group_by_length``), seeded."""
    generator = torch.Generator().manual_seed(seed)
    if group_by_length and "length" in dataset.column_names:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(batch_size, lengths=list(dataset["length"]), generator=generator)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)


def eval_loader(dataset, batch_size: int, collate) -> DataLoader:
    """Evaluation batches in length order: the metric does not depend on order, padding does."""
    if "length" in dataset.column_names:
        dataset = dataset.sort("length")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _sorted_batches(dataset, training: TrainingSection, collate, device: torch.device) -> Iterator[dict]:
    """Every row once, sorted by length, on ``device`` (``Strategy.before_training``)."""
    for batch in eval_loader(dataset, training.eval_batch_size, collate):
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _mean_across(accelerator, value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over processes (a copy; itself with one process)."""
    return accelerator.reduce(value.clone(), "mean") if accelerator.num_processes > 1 else value


def _batch_rows(batch: dict) -> int:
    """Examples in a batch, whatever the task feeds (input_ids, pixel_values, ...)."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    return 0


def _pad_value(tensor: torch.Tensor) -> float:
    """Padding that metrics ignore: 0 for scores, -100 (the ignore index) for integer labels."""
    return 0.0 if tensor.is_floating_point() else -100


def _pad_cat(tensors: list[torch.Tensor], value: float) -> torch.Tensor:
    if tensors and tensors[0].ndim >= 2:
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, width - t.shape[1]), value=value)
                   if t.shape[1] < width else t for t in tensors]
    return torch.cat(tensors)


@torch.no_grad()
def gather_outputs(model, loader, accelerator: Optional[Any], reduce: Callable[[Any, dict], dict],
                   forward: Optional[Callable[[Any, dict], tuple[Any, Any]]] = None
                   ) -> tuple[dict[str, torch.Tensor], float, bool]:
    """What ``reduce(outputs, batch)`` keeps of every batch, gathered across processes
    (``accelerator=None``: one process, no accelerate state, as ``adaptkit compare`` reads a run).

    ``reduce`` is a task's ``batch_outputs`` (by default logits and labels); it runs per batch,
    so a task can keep per-example sums instead of [rows, tokens, vocabulary] logits. ``forward``
    is a task's ``compute_loss`` (``(loss, outputs)`` of a batch); None: ``model(**batch)`` and its
    loss. Returns the concatenated tensors, the mean loss, and whether any batch carried labels.
    """
    model.eval()
    kept: dict[str, list[torch.Tensor]] = {}
    losses, count, labelled = 0.0, 0, False
    for batch in loader:
        if forward is None:
            outputs = model(**batch)
            loss = outputs.loss
        else:
            loss, outputs = forward(model, batch)
        labelled = labelled or "labels" in batch
        values = reduce(outputs, batch)
        rows = next(iter(values.values())).shape[0] if values else 0
        if loss is not None:  # per-row copies, so uneven last batches are de-duplicated too
            row_losses = loss.detach().float().expand(rows).contiguous()
            if accelerator is not None:
                row_losses = accelerator.gather_for_metrics(row_losses)
            losses += float(row_losses.double().sum())
            count += row_losses.numel()
        for key, value in values.items():
            if accelerator is not None:
                if value.ndim >= 2:  # sequence outputs differ in length between processes
                    value = accelerator.pad_across_processes(value, dim=1, pad_index=_pad_value(value))
                value = accelerator.gather_for_metrics(value)
            kept.setdefault(key, []).append(value.float().cpu() if value.is_floating_point() else value.cpu())
    model.train()
    gathered = {key: _pad_cat(parts, _pad_value(parts[0])) for key, parts in kept.items()}
    return gathered, (losses / count if count else math.nan), labelled


def evaluate(model, loader, accelerator, task) -> dict[str, float]:
    """The task's metrics on labelled data (from its per-batch ``batch_outputs``) and the mean loss."""
    gathered, loss, labelled = gather_outputs(model, loader, accelerator, task.batch_outputs, task.compute_loss)
    metrics = task.compute_metrics(**gathered) if labelled else {}
    metrics["loss"] = metrics.pop("loss", loss)  # a task that computes it from the gathered rows knows best
    return {k: float(v) for k, v in metrics.items()}


class _Progress:
    """What a person watching a run sees: every step on a terminal, one line per ``LOG_EVERY`` steps
    when piped, and a table of the epochs at the end.

    The terminal bar shows the loss smoothed over steps (an exponential moving average), the
    learning rate, the epoch, the last evaluation's metric and the time left. The loss is read
    without stalling the GPU: each step's value is copied to pinned host memory asynchronously and
    read once its copy has landed (on the CPU it is simply read). Piped output (a file, a CI log)
    gets the same figures every ``LOG_EVERY`` steps, from the synced window mean the loop already has.
    """

    SMOOTHING = 0.9  # weight of the previous average: roughly the last 10 steps

    def __init__(self, total: int, enabled: bool, epochs: int = 1, metric: str = ""):
        self.enabled, self.total, self.epochs, self.metric = enabled, total, epochs, metric
        self.bar = None
        self.smoothed: Optional[float] = None
        self.last_eval: Optional[float] = None
        self.lr: Optional[float] = None
        self.train_metrics: dict[str, float] = {}  # the task's (Task.training_metrics), as of the last log step
        self.epoch = 0
        self.started, self.start_step = time.perf_counter(), None
        self._pending: Optional[tuple[torch.Tensor, Any]] = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=total, info="")
            self.bar.start()

    def _smooth(self, value: float) -> None:
        if math.isfinite(value):
            self.smoothed = value if self.smoothed is None else self.SMOOTHING * self.smoothed + (1 - self.SMOOTHING) * value

    def _read(self, loss: torch.Tensor) -> None:
        """Fold this step's loss into the average without a host sync on an accelerator."""
        if loss.device.type == "cpu":
            self._smooth(float(loss.detach()))
            return
        if self._pending is not None and self._pending[1].query():
            self._smooth(float(self._pending[0]))
            self._pending = None
        if self._pending is None and loss.device.type == "cuda":
            host = torch.empty((), dtype=loss.dtype, pin_memory=True)
            host.copy_(loss.detach(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event)

    def info(self) -> str:
        parts = [f"loss {self.smoothed:.4f}" if self.smoothed is not None else "",
                 *(f"{name} {value:.4f}" for name, value in self.train_metrics.items()),
                 f"lr {self.lr:.2e}" if self.lr is not None else "",
                 f"epoch {self.epoch + 1}/{self.epochs}",
                 f"eval {self.metric} {self.last_eval:.4f}" if self.last_eval is not None else ""]
        return "  ".join(p for p in parts if p)

    def _left(self, step: int) -> str:
        if self.start_step is None or step <= self.start_step:
            return ""
        rate = (time.perf_counter() - self.started) / (step - self.start_step)
        seconds = int(rate * (self.total - step))
        return f"  {seconds // 60}:{seconds % 60:02d} left"

    def update(self, step: int, info: str = "") -> None:
        """Where the run is (at start, or resumed at ``step``)."""
        if self.start_step is None:
            self.start_step, self.started = step, time.perf_counter()
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info or self.info())

    def step(self, step: int, loss: Optional[torch.Tensor], lr: float, epoch: int,
             logged: Optional[float] = None) -> None:
        """One optimizer step: the bar moves; ``logged`` (the synced window mean every ``LOG_EVERY``
        steps) makes the piped line."""
        if not self.enabled:
            return
        self.lr, self.epoch = lr, epoch
        if self.bar is not None:
            if loss is not None:
                self._read(loss)
            self.bar.update(self.task, completed=step, info=self.info())
        elif logged is not None:
            self.smoothed = logged  # the mean over the last LOG_EVERY steps: already smooth
            print(f"step {step}/{self.total}  {self.info()}{self._left(step)}", file=sys.stderr, flush=True)

    def evaluated(self, metrics: dict[str, float]) -> None:
        if self.metric in metrics:
            self.last_eval = metrics[self.metric]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def summary(self, history: list[dict[str, Any]]) -> None:
        """A table of the epochs (train loss, a task's training metrics, every eval metric), printed once
        training ends: a row per epoch, or a row per figure where a row per epoch would not fit the width
        (a preference task's 14 figures cut every header to ``train_…``)."""
        if not self.enabled or not history:
            return
        from rich.console import Console
        from rich.table import Table

        console = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 160)
        keys = [k for k in history[-1] if k not in ("epoch", "step")]

        def cell(entry: dict[str, Any], key: str) -> str:
            return f"{entry[key]:.4f}" if isinstance(entry.get(key), float) else str(entry.get(key, ""))

        if sum(max(len(k), 9) + 3 for k in ["epoch", "step", *keys]) > console.width:
            table = Table("", *(f"epoch {e['epoch']} (step {e['step']})" for e in history), title="training summary")
            for key in keys:
                table.add_row(key, *(cell(entry, key) for entry in history))
        else:
            table = Table("epoch", "step", *keys, title="training summary")
            for entry in history:
                table.add_row(str(entry["epoch"]), str(entry["step"]), *(cell(entry, key) for key in keys))
        console.print(table)


class _Best:
    """Tracks the best epoch on ``metric`` and counts evaluations without improvement."""

    def __init__(self, metric: str, greater: bool, patience: Optional[int]):
        self.metric, self.greater, self.patience = metric, greater, patience
        self.epoch: Optional[int] = None
        self.value: Optional[float] = None
        self.metrics: dict[str, float] = {}
        self.path: Optional[str] = None
        self.since = 0

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record an evaluation; True when it is the best so far."""
        if self.metric not in metrics:
            raise AdaptkitError(f"training.metric_for_best: {self.metric!r} is not an eval metric of this task "
                                f"(metrics: {', '.join(sorted(metrics))})")
        value = metrics[self.metric]
        better = self.value is None or (value > self.value if self.greater else value < self.value)
        if better:
            self.epoch, self.value, self.metrics, self.since = epoch, value, dict(metrics), 0
        else:
            self.since += 1
        return better

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.since >= self.patience

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "greater_is_better": self.greater, "epoch": self.epoch, "value": self.value,
                "metrics": self.metrics, "path": self.path, "since": self.since}

    def load(self, state: dict[str, Any]) -> None:
        self.epoch, self.value, self.metrics = state["epoch"], state["value"], state["metrics"]
        self.path, self.since = state["path"], state["since"]


def best_metric(training: TrainingSection, task) -> tuple[str, bool]:
    """The metric that picks the best epoch and its direction (recipe first, then the task)."""
    metric = training.metric_for_best or task.primary_metric
    metric = metric[len("eval_"):] if metric.startswith("eval_") else metric
    if training.greater_is_better is not None:
        return metric, training.greater_is_better
    if metric == task.primary_metric:
        return metric, bool(task.greater_is_better)
    return metric, not ("loss" in metric or "perplexity" in metric or "error" in metric)


def _flat_config(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalar settings only: what every tracker (tensorboard's hparams too) accepts."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_config(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
    return flat


def _finite_everywhere(accelerator, *tensors: torch.Tensor) -> bool:
    """Whether every tensor is finite on every process: one host sync (one reduce when distributed)."""
    bad = torch.zeros((), device=accelerator.device)
    for tensor in tensors:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP2 shard: checked here
        bad = bad + (~torch.isfinite(local.detach())).any().to(bad.device, torch.float32)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return float(bad) == 0


class _StopOnSigint:
    """Ctrl-C (SIGINT) or SIGTERM during training asks the loop to stop at the next optimizer
    step and checkpoint there.

    SIGTERM is what schedulers (Slurm, Kubernetes, systemd) send before killing a job, so it is
    handled like Ctrl-C: the same final checkpoint and message, then ``RunInterrupted`` with exit
    code 143 (128 + SIGTERM, the code a shell reports for a process SIGTERM ended) instead of 130.
    The flag is read at step boundaries only (and, with several processes, agreed on at the log
    syncs), so the checkpoint is taken at a point a resume continues exactly. A second signal
    stops at once: the handler that was there before (the CLI's, which raises) is called, or
    KeyboardInterrupt is raised.
    """

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.requested = False
        self.signal_name: Optional[str] = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if self.enabled and threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
        # Called from fit's ``finally``: a RunInterrupted on its way out says which signal stopped the run.
        pending = sys.exc_info()[1]
        if self.signal_name == "SIGTERM" and isinstance(pending, RunInterrupted) and pending.exit_code != 143:
            pending.exit_code = 143
            pending.args = (f"terminated (SIGTERM) {pending.args[0]}" if pending.args else "terminated (SIGTERM)",)

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            previous = self._previous.get(signum)
            if callable(previous) and previous is not self._handle:
                previous(signum, frame)
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = name
        what, again = ("interrupt", "press Ctrl-C") if name == "SIGINT" else ("terminated (SIGTERM)", "send SIGTERM")
        print(f"{what}: stopping after this step and writing a checkpoint ({again} again to stop at once)",
              file=sys.stderr, flush=True)

    def should_stop(self, accelerator, at_sync: bool) -> bool:
        if accelerator.num_processes == 1:
            return self.requested
        if not at_sync:
            return False
        flag = torch.tensor(float(self.requested), device=accelerator.device)
        return float(accelerator.reduce(flag, reduction="sum")) > 0


def make_optimizer(name: str, groups: list[dict[str, Any]], learning_rate: float) -> torch.optim.Optimizer:
    """``training.optimizer``: torch's AdamW (fused: one kernel over all tensors), or bitsandbytes'
    8-bit AdamW (both moments block-quantized to 8 bits; tensors under 4096 values keep 32-bit
    moments) and its paged form (state pages out to host memory under GPU memory pressure; on a
    CPU bitsandbytes runs it unpaged)."""
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
        return cls(groups, lr=learning_rate)
    return torch.optim.AdamW(groups, lr=learning_rate, fused=True if name == "adamw_torch_fused" else None)


class _TrainingLoop:
    """The state ``fit`` carries from step to step, and its steps as methods a reader can name.

    The loop is one object so that everything a checkpoint saves (``_position``) is in one place:
    the step count, the loss summed since the last log sync (``window``), the epoch's loss, the
    batches done in the current epoch, the best epoch and the result so far. A resume (``resume``)
    fills exactly these back. The order of work that touches random numbers (loader, optimizer,
    scheduler, ``accelerator.prepare``, the data order seeded per epoch, RNG states restored where
    they were saved) is the one an uninterrupted run follows, so a resumed run is bit for bit the same.
    """

    def __init__(self, model, strategy, task, train_data, eval_data, tokenizer, training: TrainingSection,
                 accelerator, learning_rate: float, checkpoints: Optional["CheckpointConfig"],
                 on_checkpoint: Optional[Callable[[str, int], None]], eval_every: Optional[int]):
        from transformers import get_scheduler

        self.strategy, self.task, self.train_data, self.training = strategy, task, train_data, training
        # the strategy's per-step hook, when it has one (AdaLoRA): the default no-op costs the hot loop nothing
        self.after_step = strategy.after_step if type(strategy).after_step is not Strategy.after_step else None
        # the task's training-time metrics, when it reports any: summed on the device, read at log steps
        self.task_metrics = task.training_metrics if type(task).training_metrics is not Task.training_metrics else None
        self.metric_sums = MetricSums(accelerator.device)
        self.accelerator, self.checkpoints, self.on_checkpoint = accelerator, checkpoints, on_checkpoint
        self.collate = task.collate(tokenizer)
        loader = train_loader(train_data, training.batch_size, self.collate, training.group_by_length, training.seed)
        self.generator = loader.sampler.generator  # re-seeded every epoch: data order is f(seed, epoch)
        # every batch is split across processes (split_batches): round the eval batch up so it splits
        evaluation = eval_loader(eval_data, -(-training.eval_batch_size // accelerator.num_processes)
                                 * accelerator.num_processes, self.collate)
        groups = [g for g in strategy.parameter_groups(model, learning_rate, training.weight_decay) if g["params"]]
        optimizer = make_optimizer(training.optimizer, groups, learning_rate)
        if training.gradient_checkpointing:
            enable_gradient_checkpointing(model)

        budget = step_budget(math.ceil(len(loader) / training.gradient_accumulation_steps), training.epochs,
                             training.min_steps, training.max_steps)
        self.total_steps, self.epochs = budget.total_steps, budget.epochs
        # Epochs the small-data floor added are evaluated in groups: as many evaluations as the recipe's
        # epochs would give (25 passes over 100 rows need not score 872 eval rows 25 times).
        self.evaluate_every = eval_every or (math.ceil(self.epochs / training.epochs) if budget.raised_by_floor else 1)
        scheduler = get_scheduler(training.scheduler if training.scheduler != "constant" else "constant_with_warmup",
                                  optimizer, num_warmup_steps=int(training.warmup_ratio * self.total_steps),
                                  num_training_steps=self.total_steps)

        # sharding changes the modules in place: a weightless copy is kept to gather the trained weights into
        self.skeleton = meta_skeleton(model) if sharded(accelerator) else None
        self.model, self.optimizer, self.loader, self.evaluation, self.scheduler = accelerator.prepare(
            model, optimizer, loader, evaluation, scheduler)
        # training.compile: only the training forward goes through torch.compile (same parameters);
        # evaluation, checkpoints, unwrap and the contract keep the eager module they always had.
        self.forward_model = torch.compile(self.model, dynamic=True) if training.compile else self.model

        self.result = FitResult()
        self.metric, greater = best_metric(training, task)
        self.best = _Best(self.metric, greater, training.early_stopping_patience)
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self.checkpointer = Checkpointer(checkpoints, accelerator, task) if checkpoints is not None else None
        self.every = checkpoints.every_steps if checkpoints is not None else None
        self.window = torch.zeros((), device=accelerator.device)  # loss summed since the last log sync
        self.window_batches = 0
        self.epoch_loss, self.epoch_batches = torch.zeros((), device=accelerator.device), 0
        self.start_epoch, self.batches_done, self.finished = 0, 0, False
        self.pending_rng: Optional[dict[str, Any]] = None  # a resume's RNG states, applied where they were saved
        self.trainable: list[torch.Tensor] = []
        self.last_finite_step = 0
        self.clock = time.perf_counter()  # start of the training time not yet added to train_seconds
        self.bar: Optional[_Progress] = None
        self.stop: Optional[_StopOnSigint] = None

    # -- resume ------------------------------------------------------------------------------

    def resume(self, path: Path) -> None:
        """Put back what a checkpoint saved: the model's trainable state, optimizer, scheduler and
        RNG states (``Checkpointer.load``), the result so far and the position in the data.

        The RNG states are captured now and re-applied only where the saved run was (about to run
        the next batch, or about to evaluate at an epoch's end): the loader's own draws in between
        must not shift them.
        """

        result = self.result
        state = self.checkpointer.load(path)
        self.pending_rng = capture_rng()  # load_state set them; re-applied where the save happened
        result.steps, result.train_seconds = state["step"], state["train_seconds"]
        result.train_examples, result.loss_curve, result.history = (
            state["train_examples"], state["loss_curve"], state["history"])
        result.resumed_from_step = state["step"]
        self.window.fill_(state["window"])
        self.window_batches = state["window_batches"]
        self.epoch_loss.fill_(state["epoch_loss"])
        self.epoch_batches = state["epoch_batches"]
        self.start_epoch, self.batches_done, self.finished = state["epoch"], state["batches_done"], state["finished"]
        self.best.load(state["best"])
        self.metric_sums.load(state.get("task_metrics"))
        result.stopped_early = state.get("stopped_early")
        if self.finished and result.history:
            result.final_metrics = {k[len("eval_"):]: v for k, v in result.history[-1].items() if k.startswith("eval_")}
        if self.accelerator.is_main_process:
            print(f"resuming from {path.name} (epoch {self.start_epoch + 1}, "
                  f"batch {self.batches_done}, step {result.steps})", file=sys.stderr, flush=True)

    def _restore_pending_rng(self) -> None:
        """Apply a resume's RNG states, once, at the point of the loop where they were saved."""
        if self.pending_rng is not None:
            restore_rng(self.pending_rng)
            self.pending_rng = None

    # -- before the first step ---------------------------------------------------------------

    def start(self, progress: bool, tracker_config: Optional[dict[str, Any]]) -> None:
        """Everything between setup and the first step: the strategy's warm-up pass (its time is
        train time), trackers, the progress display and the signal handlers (installed last, just
        before ``fit``'s ``try``, whose ``finally`` removes them)."""
        accelerator, training = self.accelerator, self.training
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.last_finite_step = self.result.steps
        if accelerator.num_processes == 1:  # e.g. frozen_head's feature cache, filled before step 1
            warm_started = time.perf_counter()
            self.strategy.before_training(accelerator.unwrap_model(self.model), _sorted_batches(
                self.train_data, training, self.collate, accelerator.device))
            self.result.train_seconds += time.perf_counter() - warm_started
        if training.report_to:
            accelerator.init_trackers("train", config=_flat_config(tracker_config or {}))
            logs = Path(accelerator.logging_dir or ".")
            if accelerator.is_main_process and logs.name == "logs" and logs.parent.name.endswith(".checkpoints"):
                record_checkpoint_logs(logs.parent)  # the files the trackers just made are this run's
        self.bar = _Progress(self.total_steps, progress and accelerator.is_main_process, epochs=self.epochs,
                             metric=self.metric)
        self.bar.update(self.result.steps)
        self.model.train()
        self.stop = _StopOnSigint(enabled=self.checkpointer is not None)
        self.stop.install()

    def epochs_to_run(self) -> range:
        """The epochs left: from the resumed one on, none when the checkpoint was the finished run's."""
        return range(0) if self.finished else range(self.start_epoch, self.epochs)

    # -- one epoch of optimizer steps --------------------------------------------------------

    def train_epoch(self, epoch: int) -> None:
        """The epoch's optimizer steps (from the saved batch on when resumed), then its checkpoint.

        An epoch resumed at its end (every batch done, or the step budget reached) trains nothing:
        the saved run was about to evaluate, so its RNG states are put back here and ``fit``
        continues with the evaluation.
        """
        resumed = self.pending_rng is not None
        skip = self.batches_done if resumed else 0
        self.clock = time.perf_counter()
        if resumed and (skip >= len(self.loader) or self.result.steps >= self.total_steps):
            self._restore_pending_rng()
            return
        self.generator.manual_seed(self.training.seed + epoch)
        if not resumed:
            self.epoch_loss.zero_()
            self.epoch_batches = 0
            self.metric_sums.reset_epoch()
        self.batches_done = skip
        for batch in (self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader):
            self._restore_pending_rng()  # a resumed run: the saved run was here, about to run this batch
            loss = self._step(batch)
            if self.accelerator.sync_gradients:  # an optimizer step, not only an accumulated batch
                self.result.steps += 1
                self._log(loss, epoch)
                self._checkpoint_if_due(epoch)
                self._stop_if_asked(epoch)
                if self.result.steps >= self.total_steps:
                    break
        self.result.train_seconds += time.perf_counter() - self.clock  # evaluation is not train time
        if self.checkpointer is not None and self.every is None and self.checkpointer.last_saved_step != \
                self.result.steps and not self.grouped(epoch):  # epochs the floor added are checkpointed with their group, too
            self._save(self._position(epoch, self.batches_done))
        self._restore_pending_rng()  # (already done at the first batch when this epoch trained)

    def _step(self, batch: dict) -> torch.Tensor:
        """Forward and backward on one batch; accelerate decides whether the optimizer steps now or
        the gradient accumulates. The loss is summed on the device: no host sync here."""
        accelerator = self.accelerator
        with accelerator.accumulate(self.model):
            loss, outputs = self.task.compute_loss(self.forward_model, batch)  # Task's default: model(**batch).loss
            if self.task_metrics is not None:  # kept on the device: no host sync
                self.metric_sums.add(self.task_metrics(outputs, batch))
            accelerator.backward(loss)
            if accelerator.sync_gradients and self.training.max_grad_norm:
                accelerator.clip_grad_norm_(self.model.parameters(), self.training.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            if self.after_step is not None and accelerator.sync_gradients:  # reads this step's gradients
                self.after_step(accelerator.unwrap_model(self.model), self.result.steps)
            self.optimizer.zero_grad(set_to_none=True)
        self.window += loss.detach()
        self.epoch_loss += loss.detach()
        self.window_batches += 1
        self.epoch_batches += 1
        self.batches_done += 1
        self.result.train_examples += _batch_rows(batch) * accelerator.num_processes  # split batches
        return loss

    # -- log ---------------------------------------------------------------------------------

    def _log(self, loss: torch.Tensor, epoch: int) -> None:
        """Move the progress display every step; every ``LOG_EVERY`` steps (and at the last) read the
        window's mean loss back from the device, refuse a non-finite one, and record and report it."""
        result, lr = self.result, self.scheduler.get_last_lr()[0]
        if not (result.steps % LOG_EVERY == 0 or result.steps == self.total_steps):
            self.bar.step(result.steps, loss, lr, epoch)
            return
        # the one host sync per LOG_EVERY steps; the mean over processes, not rank 0's
        # (a NaN or inf on any process makes the mean non-finite on all of them)
        mean = float(_mean_across(self.accelerator, self.window)) / self.window_batches
        if not math.isfinite(mean):
            raise self._diverged(f"(loss {mean} over steps {self.last_finite_step + 1}-{result.steps})")
        self.last_finite_step = result.steps
        extra = self.metric_sums.read_window(self.accelerator) if self.task_metrics is not None else {}
        result.loss_curve.append({"step": result.steps, "loss": mean, **extra})
        self.window.zero_()
        self.window_batches = 0
        self.bar.train_metrics = extra
        self.bar.step(result.steps, loss, lr, epoch, logged=mean)
        if self.training.report_to:
            self.accelerator.log({"train/loss": mean, "train/learning_rate": lr,
                                  **{f"train/{name}": value for name, value in extra.items()}}, step=result.steps)

    def _diverged(self, where: str) -> Exception:
        """The error for a NaN or infinite loss, naming the last good checkpoint that is kept."""

        good = latest_checkpoint(self.checkpoints.root) if self.checkpoints is not None else None
        kept = (f"the last good checkpoint, {good.name}, is kept in {good.parent}" if good is not None
                else "no checkpoint was written before it")
        advice = "Lower training.learning_rate, set training.max_grad_norm, or check the data, then run again"
        half = any(p.dtype == torch.float16 for p in getattr(self, "trainable", []))
        if half and self.accelerator.device.type == "cpu":
            # the learning rate is not the cause: float16 updates overflow on a CPU whatever it is
            advice = ("The likely cause is the dtype, not the learning rate: the trained weights are float16 on a "
                      "CPU (model.dtype: fp16), which diverges whatever the rate; use model.dtype: bf16 or fp32")
        return TrainingDiverged(
            f"training diverged: the loss became NaN or infinite at step {self.result.steps} {where} (it was finite "
            f"up to step {self.last_finite_step}); {kept}. Nothing with NaN weights was saved. {advice}")

    # -- checkpoint --------------------------------------------------------------------------

    def _position(self, epoch: int, done: int, is_finished: bool = False) -> dict[str, Any]:
        """What a checkpoint saves besides the tensors: where the loop is and what it measured so far."""
        result = self.result
        return {"step": result.steps, "epoch": epoch, "batches_done": done, "finished": is_finished,
                "train_seconds": result.train_seconds, "train_examples": result.train_examples,
                "loss_curve": result.loss_curve, "history": result.history, "window": float(self.window),
                "window_batches": self.window_batches, "epoch_loss": float(self.epoch_loss),
                "epoch_batches": self.epoch_batches, "best": self.best.state(), "stopped_early": result.stopped_early,
                **({"task_metrics": self.metric_sums.state()} if self.task_metrics is not None else {})}

    def _save(self, state: dict[str, Any]) -> None:
        """Write a checkpoint, never one with NaN weights: the loss since the last log sync and the
        weights are checked first."""
        if not _finite_everywhere(self.accelerator, self.window, self.epoch_loss, *self.trainable):
            raise self._diverged("(found before writing a checkpoint)")
        self.last_finite_step = self.result.steps
        path = self.checkpointer.save(state)
        if self.on_checkpoint is not None and self.accelerator.is_main_process:
            self.on_checkpoint(str(path), self.result.steps)

    def _save_mid_epoch(self, epoch: int) -> None:
        """A checkpoint between two steps; the training time so far is banked first, so it is saved."""
        self.result.train_seconds += time.perf_counter() - self.clock
        self.clock = time.perf_counter()
        self._save(self._position(epoch, self.batches_done))

    def _checkpoint_if_due(self, epoch: int) -> None:
        """Every ``every_steps`` optimizer steps (``training.checkpoint_every_steps``)."""
        if self.every and self.result.steps % self.every == 0:
            self._save_mid_epoch(epoch)

    def _stop_if_asked(self, epoch: int) -> None:
        """Ctrl-C or SIGTERM arrived: checkpoint this step (unless just done) and stop with advice."""
        if self.stop.should_stop(self.accelerator, self.result.steps % LOG_EVERY == 0):
            if self.checkpointer.last_saved_step != self.result.steps:
                self._save_mid_epoch(epoch)
            raise self._interrupted()

    def _interrupted(self) -> Exception:
        """The error for a stop on Ctrl-C or SIGTERM: where the checkpoint is and how to continue."""
        return RunInterrupted(f"interrupted at step {self.result.steps} of {self.total_steps}: checkpoint "
                              f"step-{self.result.steps:08d} is saved in {self.checkpoints.root}; continue the run by "
                              f"giving the same command with --resume")

    # -- evaluate ----------------------------------------------------------------------------

    def grouped(self, epoch: int) -> bool:
        """An epoch the small-data floor added, evaluated (and checkpointed) with its neighbours, not alone."""
        return bool((epoch + 1) % self.evaluate_every and epoch + 1 < self.epochs
                    and self.result.steps < self.total_steps)

    def evaluate_epoch(self, epoch: int) -> dict[str, float]:
        """The eval pass after ``epoch``: its history entry, the display and trackers, and the best
        epoch (whose trainable weights are kept, and checkpointed, when ``load_best_at_end`` wants them)."""

        accelerator, result = self.accelerator, self.result
        metrics = evaluate(self.model, self.evaluation, accelerator, self.task)
        entry = {"epoch": epoch + 1, "step": result.steps,
                 "train_loss": float(_mean_across(accelerator, self.epoch_loss)) / max(self.epoch_batches, 1),
                 **({f"train_{k}": v for k, v in self.metric_sums.read_epoch(accelerator).items()}
                    if self.task_metrics is not None else {}),
                 **{f"eval_{k}": v for k, v in metrics.items()}}
        result.history.append(entry)
        result.final_metrics = metrics
        self.bar.evaluated(metrics)
        if self.training.report_to:
            accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=result.steps)
        if self.best.update(epoch + 1, metrics) and self.training.load_best_at_end:
            self.best_state = gathered_trainable_state(accelerator, self.model, everywhere=True)  # a collective
            if self.checkpointer is not None:
                self.best.path = self.checkpointer.save_best(epoch + 1, self.best_state)
        return metrics

    def stops_after(self, epoch: int) -> bool:
        """Whether training ends after this evaluated epoch: early stopping (recorded in the result)
        or the step budget spent."""
        if self.best.exhausted and self.result.steps < self.total_steps:
            self.result.stopped_early = epoch + 1
            return True
        return self.result.steps >= self.total_steps

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> None:
        """The finished run's checkpoint (a resume of it trains nothing), then a stop asked for during
        the last evaluation is reported, now that that checkpoint is saved."""
        if self.checkpointer is not None and not self.finished \
                and self.checkpointer.last_saved_step != self.result.steps:
            # (when this step was just saved, before the last evaluation, resuming it redoes only that)
            self._save(self._position(len(self.result.history), 0, is_finished=True))
        if self.stop.requested:  # Ctrl-C during the last evaluation: the finished checkpoint is saved
            raise self._interrupted()

    def close(self) -> None:
        """Always, from ``fit``'s ``finally``: signal handlers back (this names a SIGTERM on a
        ``RunInterrupted`` on its way out), the display stopped, trackers and checkpoint writer closed."""
        self.stop.uninstall()
        self.bar.close()
        if self.training.report_to:
            for tracker in self.accelerator.trackers:  # not end_training(): that also ends the process group
                tracker.finish()
        if self.checkpointer is not None:
            self.checkpointer.close()

    def outcome(self) -> FitResult:
        """The epoch table, the best epoch, and its weights put back when ``load_best_at_end`` asks."""

        result, best = self.result, self.best
        self.bar.summary(result.history)
        result.best = best.state()
        if self.training.load_best_at_end and best.epoch is not None and best.epoch != len(result.history):
            if self.best_state is None:
                self.best_state = self.checkpointer.load_best(best.path)
            load_trainable_state(self.accelerator.unwrap_model(self.model), self.best_state,
                                 Path(best.path or "best epoch"))
            result.final_metrics = dict(best.metrics)
            result.loaded_best = True
        return result


def fit(model, strategy, task, train_data, eval_data, tokenizer, training: TrainingSection,
        accelerator, learning_rate: float, progress: bool = True,
        on_epoch_end: Optional[Callable[[int, dict[str, float]], None]] = None,
        checkpoints: Optional["CheckpointConfig"] = None,
        on_checkpoint: Optional[Callable[[str, int], None]] = None,
        tracker_config: Optional[dict[str, Any]] = None, eval_every: Optional[int] = None) -> FitResult:
    """Train ``model`` (already wrapped by ``strategy``) and evaluate after every epoch.

    With ``checkpoints``, resumable checkpoints are written every ``every_steps`` optimizer
    steps (default: each epoch's end) and at the end, and ``resume_from`` continues one: the
    model is not rebuilt here, only its trainable state loaded, and RNG states are restored at
    the exact point of the loop where they were saved, so a resumed run computes bit for bit
    what an uninterrupted one does. The best epoch on ``training.metric_for_best`` is tracked;
    ``early_stopping_patience`` stops, ``load_best_at_end`` puts its weights back at the end.
    ``eval_every`` evaluates every that many epochs (default: every epoch, or in groups when the
    small-data floor raised the epochs) and always after the last.

    This is the outline of the loop; each step is a method of ``_TrainingLoop``.
    """
    loop = _TrainingLoop(model, strategy, task, train_data, eval_data, tokenizer, training, accelerator,
                         learning_rate, checkpoints, on_checkpoint, eval_every)
    if loop.checkpointer is not None and checkpoints.resume_from is not None:
        loop.resume(checkpoints.resume_from)
    loop.start(progress, tracker_config)
    try:
        for epoch in loop.epochs_to_run():
            loop.train_epoch(epoch)
            if loop.grouped(epoch):  # an epoch the floor added: evaluated with its neighbours, not alone
                continue
            metrics = loop.evaluate_epoch(epoch)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, metrics)
            if loop.stops_after(epoch):
                break
        loop.finish()
    finally:
        loop.close()
    if loop.skeleton is not None:  # sharded: the caller's model becomes a plain one with the full weights
        become_unsharded(accelerator, model, loop.skeleton)
        loop.model = model
    return loop.outcome()
