"""Preference objectives: a small registry from a name to a loss over answer log-probs.

An objective sees only tensors (``Scores``): the policy's summed log-probs of each answer, its
answer-token counts, the reference's log-probs where it needs a reference, which rows are the
preferred ones, and for ORPO the mean token NLL of the preferred answers. It returns the loss and
one implicit reward per row, from which the task reports reward accuracy and margins. A later
plugin adds one with ``register_objective``; nothing else changes.

Online methods that generate while training (GRPO, RLOO, online DPO) are not functions of fixed
rows' log-probs: they fit as a task plugin whose ``compute_loss`` (the Task hook) samples k answers
per prompt with ``model.generate`` under no_grad, scores them (a reward function, or a ``reward``
task's export), and takes the policy's and reference's log-probs of the samples the way
``Preference`` does (``_answer_logps``, ``_reference_forward``); its loss of those log-probs and
the advantages can then be registered here like any other.

Why not TRL's trainers: TRL 1.16 computes these losses inside its own trainers' ``_compute_loss``
(DPO, KTO) or methods of experimental trainers (CPO's SimPO, ORPO's odds ratio), which need a
trainer instance and TRL's data pipeline; adaptkit's loop, strategies and contract stay in charge
here. The formulas are a few lines each, and tests/test_task_preference.py checks every one
against TRL's own code on the same batch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    import torch


@dataclass
class Scores:
    """What an objective reads, one entry per row of the batch.

    Paired objectives get the chosen rows first and the rejected rows after them, in the same
    order (``desirable`` is True for the first half); unpaired ones (KTO) get rows in any order
    with ``desirable`` saying which are. ``policy``/``reference`` are summed log-probs of the
    answer tokens; ``tokens`` their counts; ``chosen_nll`` the mean NLL per token of the desirable
    answers (ORPO adds it); ``kl`` KTO's batch estimate of KL(policy || reference).
    """

    policy: "torch.Tensor"
    tokens: "torch.Tensor"
    desirable: "torch.Tensor"
    reference: Optional["torch.Tensor"] = None
    chosen_nll: Optional["torch.Tensor"] = None
    kl: Optional["torch.Tensor"] = None


# An objective: (scores, task options) -> (scalar loss, implicit reward per row).
ObjectiveFn = Callable[[Scores, Any], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class Objective:
    """A registered objective: its loss, whether it needs the reference model's log-probs, whether
    its rows come in chosen/rejected pairs, and whether it needs KTO's KL estimate."""

    name: str
    loss: ObjectiveFn
    reference: bool
    paired: bool = True
    kl: bool = False


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> None:
    """Add an objective under its name; a second one under a taken name is an error naming it."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"a preference objective named {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective


def _halves(tensor: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    half = tensor.shape[0] // 2
    return tensor[:half], tensor[half:]


def dpo(scores: Scores, options: Any) -> "tuple[torch.Tensor, torch.Tensor]":
    """DPO (Rafailov et al. 2023) on log-ratios to the reference; ``loss_type`` sigmoid (with
    ``label_smoothing``: conservative DPO), hinge (SLiC), or ipo (Azar et al., on log-ratios
    averaged per answer token, as TRL and the IPO authors use it)."""
    import torch.nn.functional as F

    beta, smoothing = options.beta, options.label_smoothing
    ratios = scores.policy - scores.reference
    chosen, rejected = _halves(ratios)
    delta = chosen - rejected
    if options.loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta) * (1 - smoothing) - F.logsigmoid(-beta * delta) * smoothing
    elif options.loss_type == "hinge":
        losses = (1 - beta * delta).clamp(min=0)
    elif options.loss_type == "ipo":
        per_token = ratios / scores.tokens.clamp(min=1)
        chosen_avg, rejected_avg = _halves(per_token)
        losses = (chosen_avg - rejected_avg - 1 / (2 * beta)) ** 2
    else:  # pragma: no cover - the options model allows no other value
        raise ValueError(options.loss_type)
    return losses.mean(), beta * ratios.detach()


def simpo(scores: Scores, options: Any) -> "tuple[torch.Tensor, torch.Tensor]":
    """SimPO (Meng et al. 2024): no reference; the reward is beta times the mean log-prob per answer
    token, and the chosen must win by ``simpo_gamma``."""
    import torch.nn.functional as F

    beta, smoothing = options.beta, options.label_smoothing
    average = scores.policy / scores.tokens.clamp(min=1)
    chosen, rejected = _halves(average)
    logits = chosen - rejected - options.simpo_gamma / beta
    losses = -F.logsigmoid(beta * logits) * (1 - smoothing) - F.logsigmoid(-beta * logits) * smoothing
    return losses.mean(), beta * average.detach()


def orpo(scores: Scores, options: Any) -> "tuple[torch.Tensor, torch.Tensor]":
    """ORPO (Hong et al. 2024): no reference; the chosen answers' NLL minus beta times the log-sigmoid
    of the log odds ratio of mean token probabilities."""
    import torch
    import torch.nn.functional as F

    def log1mexp(x: "torch.Tensor") -> "torch.Tensor":  # log(1 - exp(x)) for x < 0, stable at both ends
        return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))

    average = (scores.policy / scores.tokens.clamp(min=1)).float()
    chosen, rejected = _halves(average)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = F.logsigmoid(log_odds)
    return scores.chosen_nll - options.beta * ratio.mean(), options.beta * average.detach()


def kto(scores: Scores, options: Any) -> "tuple[torch.Tensor, torch.Tensor]":
    """KTO (Ethayarajh et al. 2024) on unpaired rows: desirable answers pushed above the batch's KL
    estimate, undesirable ones below it, weighted by ``desirable_weight``/``undesirable_weight``."""
    import torch

    beta = options.beta
    ratios = scores.policy - scores.reference
    kl = scores.kl if scores.kl is not None else torch.zeros((), device=ratios.device)
    good = scores.desirable.bool()
    chosen = 1 - torch.sigmoid(beta * (ratios[good] - kl))
    rejected = 1 - torch.sigmoid(beta * (kl - ratios[~good]))
    losses = torch.cat([options.desirable_weight * chosen, options.undesirable_weight * rejected])
    return losses.mean(), beta * ratios.detach()


for _objective in (Objective("dpo", dpo, reference=True), Objective("simpo", simpo, reference=False),
                   Objective("orpo", orpo, reference=False),
                   Objective("kto", kto, reference=True, paired=False, kl=True)):
    register_objective(_objective)
