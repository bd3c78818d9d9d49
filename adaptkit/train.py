"""One training loop for every strategy, run by accelerate.

accelerate owns devices, mixed precision, gradient accumulation and processes; this module
owns the order of things: batches grouped by length (less padding), loss read back from
the device only at log points (no per-step host sync), evaluation once per epoch.
"""
from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, RandomSampler

from adaptkit.recipe import TrainingSection

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


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this run: CUDA allocator peak on a GPU, process peak RSS on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def make_accelerator(training: TrainingSection, log: Callable[[str], None] = print):
    """An ``Accelerator`` for the recipe, with GPU-only settings refused clearly on a CPU."""
    from accelerate import Accelerator

    precision = training.mixed_precision
    cpu_only = training.device == "cpu" or not torch.cuda.is_available()
    if cpu_only and precision == "fp16":
        log("training.mixed_precision: fp16 needs a GPU; this run uses full precision (fp32) on the CPU. "
            "Set mixed_precision: bf16 for reduced precision on a CPU.")
        precision = "no"
    if training.num_threads:
        torch.set_num_threads(training.num_threads)
    return Accelerator(mixed_precision=precision, cpu=training.device == "cpu",
                       gradient_accumulation_steps=training.gradient_accumulation_steps)


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


def _pad_cat(tensors: list[torch.Tensor], value: float) -> torch.Tensor:
    if tensors and tensors[0].ndim >= 2:
        width = max(t.shape[1] for t in tensors)
        tensors = [torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, width - t.shape[1]), value=value)
                   if t.shape[1] < width else t for t in tensors]
    return torch.cat(tensors)


@torch.no_grad()
def predict(model, loader, accelerator) -> tuple[torch.Tensor, Optional[torch.Tensor], float]:
    """Logits and labels for every example (gathered across processes) and the mean loss."""
    model.eval()
    all_logits, all_labels, losses, count = [], [], 0.0, 0
    for batch in loader:
        outputs = model(**batch)
        logits = outputs.logits
        labels = batch.get("labels")
        if outputs.loss is not None:
            losses += float(outputs.loss) * logits.shape[0]
            count += logits.shape[0]
        logits = accelerator.pad_across_processes(logits, dim=1) if logits.ndim > 2 else logits
        all_logits.append(accelerator.gather_for_metrics(logits).float().cpu())
        if labels is not None:
            if labels.ndim > 1 and labels.dtype != torch.float:
                labels = accelerator.pad_across_processes(labels, dim=1, pad_index=-100)
            all_labels.append(accelerator.gather_for_metrics(labels).cpu())
    model.train()
    logits = _pad_cat(all_logits, 0.0)
    labels = _pad_cat(all_labels, -100) if all_labels else None
    return logits, labels, (losses / count if count else math.nan)


def evaluate(model, loader, accelerator, task) -> dict[str, float]:
    logits, labels, loss = predict(model, loader, accelerator)
    metrics = task.compute_metrics(logits, labels) if labels is not None else {}
    metrics["loss"] = loss
    return {k: float(v) for k, v in metrics.items()}


class _Progress:
    """A rich progress bar on an interactive terminal, periodic plain lines otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.total = total
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("train", total=total, info="")
            self.bar.start()

    def update(self, step: int, info: str = "") -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        elif self.enabled and info:
            print(f"step {step}/{self.total} {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def fit(model, strategy, task, train_data, eval_data, tokenizer, training: TrainingSection,
        accelerator, learning_rate: float, progress: bool = True,
        on_epoch_end: Optional[Callable[[int, dict[str, float]], None]] = None) -> FitResult:
    """Train ``model`` (already wrapped by ``strategy``) and evaluate after every epoch."""
    from transformers import get_scheduler

    collate = task.collate(tokenizer)
    loader = train_loader(train_data, training.batch_size, collate, training.group_by_length, training.seed)
    evaluation = eval_loader(eval_data, training.eval_batch_size, collate)
    groups = [g for g in strategy.parameter_groups(model, learning_rate, training.weight_decay) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=learning_rate)
    updates_per_epoch = math.ceil(len(loader) / training.gradient_accumulation_steps)
    total_steps = training.max_steps or updates_per_epoch * training.epochs
    epochs = math.ceil(total_steps / updates_per_epoch)
    scheduler = get_scheduler(training.scheduler if training.scheduler != "constant" else "constant_with_warmup",
                              optimizer, num_warmup_steps=int(training.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    model, optimizer, loader, evaluation, scheduler = accelerator.prepare(
        model, optimizer, loader, evaluation, scheduler)

    result = FitResult()
    bar = _Progress(total_steps, progress and accelerator.is_main_process)
    window = torch.zeros((), device=accelerator.device)
    window_batches = 0
    model.train()
    try:
        for epoch in range(epochs):
            epoch_loss, epoch_batches = torch.zeros((), device=accelerator.device), 0
            epoch_started = time.perf_counter()
            for batch in loader:
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
                result.train_examples += batch["input_ids"].shape[0] if "input_ids" in batch else 0
                if accelerator.sync_gradients:
                    result.steps += 1
                    if result.steps % LOG_EVERY == 0 or result.steps == total_steps:
                        mean = float(window) / window_batches  # the one host sync per LOG_EVERY steps
                        result.loss_curve.append({"step": result.steps, "loss": mean})
                        window.zero_()
                        window_batches = 0
                        bar.update(result.steps, f"loss {mean:.4f}")
                    else:
                        bar.update(result.steps)
                    if result.steps >= total_steps:
                        break
            result.train_seconds += time.perf_counter() - epoch_started  # evaluation is not train time
            metrics = evaluate(model, evaluation, accelerator, task)
            entry = {"epoch": epoch + 1, "step": result.steps,
                     "train_loss": float(epoch_loss) / max(epoch_batches, 1),
                     **{f"eval_{k}": v for k, v in metrics.items()}}
            result.history.append(entry)
            result.final_metrics = metrics
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, metrics)
            if result.steps >= total_steps:
                break
    finally:
        bar.close()
    return result
