"""Where a training step's time goes, for any loop, without changing the loop (issue 27, item 2).

``install()`` puts process-wide hooks in torch before a contender runs: a global module forward
pre/post hook (only the outermost module's call counts, and only in training mode), a wrapper
around ``torch.Tensor.backward`` and ``torch.autograd.backward``, and the global optimizer step
pre/post hooks. Each training step is then cut into

  forward    the outermost module call (the model, with the loss if the model computes it)
  backward   the backward call
  optimizer  ``optimizer.step`` (AdamW's update)
  other      everything else between one optimizer step and the next: the data loader and collator,
             gradient clipping, the scheduler, ``zero_grad``, progress, logging, energy sampling,
             checkpoints, accelerate's wrappers

A gap that held an evaluation (a forward in eval mode) is not a training step's and is left out.
The same hooks run in adaptkit's loop, the plain loop and the Trainer, so their "other" shares can be
compared: what a loop does besides the arithmetic. CPU only as written (no CUDA synchronisation;
on a GPU the split would need ``torch.cuda.synchronize`` at each mark).

Why hand-written: ``torch.profiler`` records operators, not the phases of a step, and its overhead
on a 2-core CPU changes the figures it measures; these hooks cost a clock read per phase.
"""
from __future__ import annotations

import statistics
import time
from typing import Any

PHASES = ("forward", "backward", "optimizer", "other")


class StepProfile:
    """Phase marks of every training step, collected by the hooks ``install`` puts in torch."""

    def __init__(self) -> None:
        self.depth = 0
        self.forward_started: float | None = None
        self.step_started: float | None = None  # the previous optimizer step's end: where "other" begins
        self.evaluated = False  # an eval-mode forward happened since the last optimizer step
        self.current = {phase: 0.0 for phase in PHASES}
        self.steps: list[dict[str, float]] = []
        self.optimizer_started: float | None = None

    # forward ------------------------------------------------------------------------------------
    def before_forward(self, module: Any, _args: Any) -> None:
        self.depth += 1
        if self.depth == 1:
            if module.training:
                self.forward_started = time.perf_counter()
            else:
                self.evaluated = True

    def after_forward(self, _module: Any, _args: Any, _output: Any) -> None:
        self.depth -= 1
        if self.depth == 0 and self.forward_started is not None:
            self.current["forward"] += time.perf_counter() - self.forward_started
            self.forward_started = None

    # backward -----------------------------------------------------------------------------------
    def timed_backward(self, call: Any) -> Any:
        def backward(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.current["backward"] += time.perf_counter() - started
        return backward

    # optimizer ----------------------------------------------------------------------------------
    def before_step(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        self.optimizer_started = time.perf_counter()

    def after_step(self, _optimizer: Any, _args: Any, _kwargs: Any) -> None:
        now = time.perf_counter()
        if self.optimizer_started is not None:
            self.current["optimizer"] += now - self.optimizer_started
        if self.step_started is not None and not self.evaluated:
            total = now - self.step_started
            measured = self.current["forward"] + self.current["backward"] + self.current["optimizer"]
            self.steps.append({**self.current, "other": max(0.0, total - measured), "total": total})
        self.step_started = now
        self.evaluated = False
        self.current = {phase: 0.0 for phase in PHASES}

    # summary ------------------------------------------------------------------------------------
    def summary(self, skip: int = 3) -> dict[str, Any]:
        """Median milliseconds per phase over the steps after the first ``skip`` (warm-up), and each
        phase's share of the summed step time."""
        steps = self.steps[skip:] if len(self.steps) > skip + 5 else self.steps
        if not steps:
            return {"steps": 0}
        totals = {phase: sum(s[phase] for s in steps) for phase in (*PHASES, "total")}
        return {"steps": len(steps),
                "median_ms": {phase: 1000 * statistics.median(s[phase] for s in steps) for phase in (*PHASES, "total")},
                "share": {phase: totals[phase] / totals["total"] for phase in PHASES}}


def install() -> StepProfile:
    """Hook torch process-wide and return the profile the hooks fill."""
    import torch
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    profile = StepProfile()
    register_module_forward_pre_hook(profile.before_forward)
    register_module_forward_hook(profile.after_forward)
    register_optimizer_step_pre_hook(profile.before_step)
    register_optimizer_step_post_hook(profile.after_step)
    torch.Tensor.backward = profile.timed_backward(torch.Tensor.backward)  # loss.backward(), accelerate's too
    return profile


def table(profiles: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: median ms per phase and each phase's share, one row per contender."""
    lines = ["| contender | steps | forward ms | backward ms | optimizer ms | other ms | step ms | other share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, found in profiles.items():
        if not found.get("steps"):
            lines.append(f"| {name} | 0 | - | - | - | - | - | - |")
            continue
        ms, share = found["median_ms"], found["share"]
        lines.append(f"| {name} | {found['steps']} | {ms['forward']:.1f} | {ms['backward']:.1f} | "
                     f"{ms['optimizer']:.1f} | {ms['other']:.1f} | {ms['total']:.1f} | {100 * share['other']:.1f}% |")
    return lines
