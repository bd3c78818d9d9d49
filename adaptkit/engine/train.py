"""One training loop for every strategy, run by accelerate.

accelerate owns devices, mixed precision, gradient accumulation and processes; this module
owns the order of things: batches grouped by length (less padding), loss read back from
the device only at log points (no per-step host sync), evaluation once per epoch, the best
epoch and early stopping, and checkpoints that resume bit for bit (``adaptkit.engine.checkpoint``).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

import torch
from torch.utils.data import DataLoader, RandomSampler

from adaptkit.recipe.schema import TrainingSection

if TYPE_CHECKING:
    from adaptkit.engine.checkpoint import CheckpointConfig
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

    from adaptkit.engine.distributed import accelerator_options, check_global_batch, world_size

    precision = training.mixed_precision
    cpu_only = training.device == "cpu" or not torch.cuda.is_available()
    if cpu_only and precision == "fp16":
        log("training.mixed_precision: fp16 needs a GPU; this run uses full precision (fp32) on the CPU. "
            "Set mixed_precision: bf16 for reduced precision on a CPU.")
        precision = "no"
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

        trackers = {"log_with": list(training.report_to),
                    "project_config": ProjectConfiguration(project_dir=str(logging_dir or "."),
                                                           logging_dir=str(logging_dir or "."))}
    world = world_size()
    # Launched processes on a machine without GPUs train on the CPU over gloo (accelerate's MULTI_CPU).
    cpu = training.device == "cpu" or (world > 1 and not torch.cuda.is_available())
    options = accelerator_options(distributed, world, base_dir, log)
    accelerator = Accelerator(mixed_precision=precision, cpu=cpu,
                              gradient_accumulation_steps=training.gradient_accumulation_steps, **trackers, **options)
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
def gather_outputs(model, loader, accelerator: Optional[Any], reduce: Callable[[Any, dict], dict]
                   ) -> tuple[dict[str, torch.Tensor], float, bool]:
    """What ``reduce(outputs, batch)`` keeps of every batch, gathered across processes
    (``accelerator=None``: one process, no accelerate state, as ``adaptkit compare`` reads a run).

    ``reduce`` is a task's ``batch_outputs`` (by default logits and labels); it runs per batch,
    so a task can keep per-example sums instead of [rows, tokens, vocabulary] logits. Returns
    the concatenated tensors, the mean loss, and whether any batch carried labels.
    """
    model.eval()
    kept: dict[str, list[torch.Tensor]] = {}
    losses, count, labelled = 0.0, 0, False
    for batch in loader:
        outputs = model(**batch)
        labelled = labelled or "labels" in batch
        values = reduce(outputs, batch)
        rows = next(iter(values.values())).shape[0] if values else 0
        if outputs.loss is not None:  # per-row copies, so uneven last batches are de-duplicated too
            row_losses = outputs.loss.detach().float().expand(rows).contiguous()
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
    gathered, loss, labelled = gather_outputs(model, loader, accelerator, task.batch_outputs)
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
        """A table of the epochs (train loss, every eval metric), printed once training ends."""
        if not self.enabled or not history:
            return
        from rich.console import Console
        from rich.table import Table

        keys = [k for k in history[-1] if k not in ("epoch", "step")]
        table = Table("epoch", "step", *keys, title="training summary")
        for entry in history:
            table.add_row(str(entry["epoch"]), str(entry["step"]),
                          *(f"{entry[k]:.4f}" if isinstance(entry.get(k), float) else str(entry.get(k, "")) for k in keys))
        Console(file=sys.stderr, width=None if sys.stderr.isatty() else 160).print(table)


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
            from adaptkit.errors import AdaptkitError

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
        bad = bad + (~torch.isfinite(tensor.detach())).any().to(bad.device, torch.float32)
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
        import signal
        import threading

        if self.enabled and threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                number = getattr(signal, name)
                self._previous[number] = signal.signal(number, self._handle)

    def uninstall(self) -> None:
        import signal

        for number, previous in self._previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
        # Called from fit's ``finally``: a RunInterrupted on its way out says which signal stopped the run.
        from adaptkit.errors import RunInterrupted

        pending = sys.exc_info()[1]
        if self.signal_name == "SIGTERM" and isinstance(pending, RunInterrupted) and pending.exit_code != 143:
            pending.exit_code = 143
            pending.args = (f"terminated (SIGTERM) {pending.args[0]}" if pending.args else "terminated (SIGTERM)",)

    def _handle(self, signum, frame) -> None:
        import signal

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
    """
    from transformers import get_scheduler

    from adaptkit.engine.checkpoint import Checkpointer, capture_rng, load_trainable_state, restore_rng, trainable_state

    collate = task.collate(tokenizer)
    loader = train_loader(train_data, training.batch_size, collate, training.group_by_length, training.seed)
    generator = loader.sampler.generator  # re-seeded every epoch: data order is f(seed, epoch)
    # every batch is split across processes (split_batches): round the eval batch up so it splits
    evaluation = eval_loader(eval_data, -(-training.eval_batch_size // accelerator.num_processes)
                             * accelerator.num_processes, collate)
    groups = [g for g in strategy.parameter_groups(model, learning_rate, training.weight_decay) if g["params"]]
    optimizer = make_optimizer(training.optimizer, groups, learning_rate)
    if training.gradient_checkpointing:
        from adaptkit.engine.models import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    from adaptkit.engine.budget import step_budget

    budget = step_budget(math.ceil(len(loader) / training.gradient_accumulation_steps), training.epochs,
                         training.min_steps, training.max_steps)
    total_steps, epochs = budget.total_steps, budget.epochs
    # Epochs the small-data floor added are evaluated in groups: as many evaluations as the recipe's
    # epochs would give (25 passes over 100 rows need not score 872 eval rows 25 times).
    evaluate_every = eval_every or (math.ceil(epochs / training.epochs) if budget.raised_by_floor else 1)
    scheduler = get_scheduler(training.scheduler if training.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(training.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, loader, evaluation, scheduler = accelerator.prepare(
        model, optimizer, loader, evaluation, scheduler)

    result = FitResult()
    metric, greater = best_metric(training, task)
    best = _Best(metric, greater, training.early_stopping_patience)
    best_state: Optional[dict[str, torch.Tensor]] = None
    checkpointer = Checkpointer(checkpoints, accelerator) if checkpoints is not None else None
    window = torch.zeros((), device=accelerator.device)
    window_batches = 0
    epoch_loss, epoch_batches = torch.zeros((), device=accelerator.device), 0
    start_epoch, batches_done, finished = 0, 0, False
    pending_rng: Optional[dict[str, Any]] = None
    if checkpointer is not None and checkpoints.resume_from is not None:
        state = checkpointer.load(checkpoints.resume_from)
        pending_rng = capture_rng()  # load_state set them; re-applied where the save happened
        result.steps, result.train_seconds = state["step"], state["train_seconds"]
        result.train_examples, result.loss_curve, result.history = (
            state["train_examples"], state["loss_curve"], state["history"])
        result.resumed_from_step = state["step"]
        window.fill_(state["window"])
        window_batches = state["window_batches"]
        epoch_loss.fill_(state["epoch_loss"])
        epoch_batches = state["epoch_batches"]
        start_epoch, batches_done, finished = state["epoch"], state["batches_done"], state["finished"]
        best.load(state["best"])
        result.stopped_early = state.get("stopped_early")
        if finished and result.history:
            result.final_metrics = {k[len("eval_"):]: v for k, v in result.history[-1].items() if k.startswith("eval_")}
        if accelerator.is_main_process:
            print(f"resuming from {checkpoints.resume_from.name} (epoch {start_epoch + 1}, "
                  f"batch {batches_done}, step {result.steps})", file=sys.stderr, flush=True)

    def position(epoch: int, done: int, is_finished: bool = False) -> dict[str, Any]:
        return {"step": result.steps, "epoch": epoch, "batches_done": done, "finished": is_finished,
                "train_seconds": result.train_seconds, "train_examples": result.train_examples,
                "loss_curve": result.loss_curve, "history": result.history, "window": float(window),
                "window_batches": window_batches, "epoch_loss": float(epoch_loss), "epoch_batches": epoch_batches,
                "best": best.state(), "stopped_early": result.stopped_early}

    trainable = [p for p in model.parameters() if p.requires_grad]
    last_finite = {"step": result.steps}

    def diverged(where: str) -> Exception:
        from adaptkit.engine.checkpoint import latest_checkpoint
        from adaptkit.errors import TrainingDiverged

        good = latest_checkpoint(checkpoints.root) if checkpoints is not None else None
        kept = (f"the last good checkpoint, {good.name}, is kept in {good.parent}" if good is not None
                else "no checkpoint was written before it")
        return TrainingDiverged(
            f"training diverged: the loss became NaN or infinite at step {result.steps} {where} (it was finite "
            f"up to step {last_finite['step']}); {kept}. Nothing with NaN weights was saved. Lower "
            f"training.learning_rate, set training.max_grad_norm, or check the data, then run again")

    def save(state: dict[str, Any]) -> None:
        # never write NaN weights: the loss since the last log sync and the weights are checked first
        if not _finite_everywhere(accelerator, window, epoch_loss, *trainable):
            raise diverged("(found before writing a checkpoint)")
        last_finite["step"] = result.steps
        path = checkpointer.save(state)
        if on_checkpoint is not None and accelerator.is_main_process:
            on_checkpoint(str(path), result.steps)

    if accelerator.num_processes == 1:  # e.g. frozen_head's feature cache, filled before step 1
        warm_started = time.perf_counter()
        strategy.before_training(accelerator.unwrap_model(model), _sorted_batches(train_data, training, collate,
                                                                                 accelerator.device))
        result.train_seconds += time.perf_counter() - warm_started
    every = checkpoints.every_steps if checkpoints is not None else None
    if training.report_to:
        accelerator.init_trackers("train", config=_flat_config(tracker_config or {}))
    bar = _Progress(total_steps, progress and accelerator.is_main_process, epochs=epochs, metric=metric)
    bar.update(result.steps)
    model.train()
    stop = _StopOnSigint(enabled=checkpointer is not None)

    def interrupted() -> Exception:
        from adaptkit.errors import RunInterrupted

        return RunInterrupted(f"interrupted at step {result.steps} of {total_steps}: checkpoint "
                              f"step-{result.steps:08d} is saved in {checkpoints.root}; continue the run by "
                              f"giving the same command with --resume")

    stop.install()
    try:
        for epoch in range(start_epoch, epochs):
            if finished:
                break
            resumed = pending_rng is not None
            skip = batches_done if resumed else 0
            epoch_started = time.perf_counter()
            if not (resumed and (skip >= len(loader) or result.steps >= total_steps)):
                generator.manual_seed(training.seed + epoch)
                if not resumed:
                    epoch_loss.zero_()
                    epoch_batches = 0
                batches_done = skip
                for batch in (accelerator.skip_first_batches(loader, skip) if skip else loader):
                    if pending_rng is not None:  # the saved run was here, about to run this batch
                        restore_rng(pending_rng)
                        pending_rng = None
                    with accelerator.accumulate(model):
                        loss = model(**batch).loss
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and training.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), training.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                    window += loss.detach()
                    epoch_loss += loss.detach()
                    window_batches += 1
                    epoch_batches += 1
                    batches_done += 1
                    result.train_examples += _batch_rows(batch) * accelerator.num_processes  # split batches
                    if accelerator.sync_gradients:
                        result.steps += 1
                        if result.steps % LOG_EVERY == 0 or result.steps == total_steps:
                            # the one host sync per LOG_EVERY steps; the mean over processes, not rank 0's
                            # (a NaN or inf on any process makes the mean non-finite on all of them)
                            mean = float(_mean_across(accelerator, window)) / window_batches
                            if not math.isfinite(mean):
                                raise diverged(f"(loss {mean} over steps {last_finite['step'] + 1}-{result.steps})")
                            last_finite["step"] = result.steps
                            result.loss_curve.append({"step": result.steps, "loss": mean})
                            window.zero_()
                            window_batches = 0
                            bar.step(result.steps, loss, scheduler.get_last_lr()[0], epoch, logged=mean)
                            if training.report_to:
                                accelerator.log({"train/loss": mean, "train/learning_rate": scheduler.get_last_lr()[0]},
                                                step=result.steps)
                        else:
                            bar.step(result.steps, loss, scheduler.get_last_lr()[0], epoch)
                        if every and result.steps % every == 0:
                            result.train_seconds += time.perf_counter() - epoch_started
                            epoch_started = time.perf_counter()
                            save(position(epoch, batches_done))
                        if stop.should_stop(accelerator, result.steps % LOG_EVERY == 0):
                            if checkpointer.last_saved_step != result.steps:
                                result.train_seconds += time.perf_counter() - epoch_started
                                epoch_started = time.perf_counter()
                                save(position(epoch, batches_done))
                            raise interrupted()
                        if result.steps >= total_steps:
                            break
                result.train_seconds += time.perf_counter() - epoch_started  # evaluation is not train time
                grouped = (epoch + 1) % evaluate_every and epoch + 1 < epochs and result.steps < total_steps
                if checkpointer is not None and every is None and checkpointer.last_saved_step != result.steps \
                        and not grouped:  # epochs the floor added are checkpointed with their group, too
                    save(position(epoch, batches_done))
            if pending_rng is not None:  # resumed at an epoch's end: the saved run was about to evaluate
                restore_rng(pending_rng)
                pending_rng = None
            if (epoch + 1) % evaluate_every and epoch + 1 < epochs and result.steps < total_steps:
                batches_done = 0  # an epoch the floor added: evaluated with its neighbours, not alone
                continue
            metrics = evaluate(model, evaluation, accelerator, task)
            entry = {"epoch": epoch + 1, "step": result.steps,
                     "train_loss": float(_mean_across(accelerator, epoch_loss)) / max(epoch_batches, 1),
                     **{f"eval_{k}": v for k, v in metrics.items()}}
            result.history.append(entry)
            result.final_metrics = metrics
            bar.evaluated(metrics)
            if training.report_to:
                accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=result.steps)
            if best.update(epoch + 1, metrics) and training.load_best_at_end:
                best_state = trainable_state(accelerator.unwrap_model(model))
                if checkpointer is not None:
                    best.path = checkpointer.save_best(epoch + 1, best_state)
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, metrics)
            batches_done = 0
            if best.exhausted and result.steps < total_steps:
                result.stopped_early = epoch + 1
                break
            if result.steps >= total_steps:
                break
        if checkpointer is not None and not finished and checkpointer.last_saved_step != result.steps:
            # (when this step was just saved, before the last evaluation, resuming it redoes only that)
            save(position(len(result.history), 0, is_finished=True))
        if stop.requested:  # Ctrl-C during the last evaluation: the finished checkpoint is saved
            raise interrupted()
    finally:
        stop.uninstall()
        bar.close()
        if training.report_to:
            for tracker in accelerator.trackers:  # not end_training(): that also ends the process group
                tracker.finish()
        if checkpointer is not None:
            checkpointer.close()
    bar.summary(result.history)
    result.best = best.state()
    if training.load_best_at_end and best.epoch is not None and best.epoch != len(result.history):
        if best_state is None:
            best_state = checkpointer.load_best(best.path)
        load_trainable_state(accelerator.unwrap_model(model), best_state, Path(best.path or "best epoch"))
        result.final_metrics = dict(best.metrics)
        result.loaded_best = True
    return result
