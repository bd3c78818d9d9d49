"""Preference training of decoders: DPO (sigmoid, IPO, hinge), SimPO, ORPO and KTO.

Rows are a prompt with a chosen and a rejected answer (KTO: one answer and whether it is
desirable), rendered with the chat template as ``instruct`` renders them (``preference_data``).
A batch row is one pair: the chosen sequence and the rejected one side by side along the tokens,
each right-padded to the batch's widest answer, as plain causal-LM inputs (``input_ids``,
``attention_mask``, ``labels`` with -100 outside the answers). So the contract's checks and every
strategy see batches any decoder can run, and a batch split across processes by rows keeps its
pairs whole. The loss is not the model's own: ``compute_loss`` (the Task hook the training loop
and evaluation call) lays the pairs out as chosen rows then rejected rows, runs the policy once
over both, asks the reference for its log-probs, and hands them to the objective
(``preference_objectives``).

The reference costs no second copy for adapter strategies: it is the same model with the adapter
switched off (peft's ``disable_adapter``). For full fine-tuning it is a frozen copy, loaded again
from the checkpoint (so a resumed run compares with the same reference), or made of the model
before its first step when it was built from a config (a resume of such a run is refused: its
first-step weights are gone). ``reference: precompute`` computes every row's reference log-probs
once, at the first step, before any weight changes, and keeps no copy at all; the table is kept
with the run (``training_state``: in every checkpoint, read back on ``--resume`` instead of being
computed again from a model that has trained, and in the output folder). The model card and
``metrics.json``'s ``task_notes`` say which reference the run used.

While training, the loss's batches also report reward accuracy, chosen and rejected rewards, their
margin and the answers' log-probs (``training_metrics``), averaged over each log interval by the loop.

KTO rows carry their desirability in ``labels[:, 0]`` (1 desirable, -100 not): the label of a
row's first token is never a prediction target of a causal LM (the loss shifts labels by one), so
the batch stays a plain causal-LM batch.
"""
from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any, Literal, Optional

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, field_validator, model_validator

from adaptkit import DataError
from adaptkit_tasks.causal_lm import CausalLM
from adaptkit_tasks.conversation_options import ConversationOptions, GenerationOptions
from adaptkit_tasks.padding import IGNORE

# Host bytes per entry of the precomputed reference table besides its token ids: a bytes object's
# header, a float, and the dict's slot for them (CPython).
TABLE_ENTRY_BYTES = 120


class PreferenceOptions(ConversationOptions, GenerationOptions):
    objective: str = Field("dpo", description="Preference objective: dpo, simpo, orpo or kto (or a plugin's).")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field(
        "sigmoid", description="dpo: sigmoid (the DPO paper), ipo (squared, per token) or hinge (SLiC).")
    beta: PositiveFloat = Field(0.1, description="Strength of the objective (DPO/KTO: how far from the reference).")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="dpo sigmoid, simpo: share of pairs assumed "
                                                                    "mislabelled (conservative DPO).")
    simpo_gamma: NonNegativeFloat = Field(0.5, description="simpo: the reward margin the chosen answer must win by.")
    desirable_weight: PositiveFloat = Field(1.0, description="kto: weight of desirable rows' losses.")
    undesirable_weight: PositiveFloat = Field(1.0, description="kto: weight of undesirable rows' losses.")
    reference: Literal["auto", "precompute"] = Field(
        "auto", description="auto: the adapter switched off, or a frozen copy for full fine-tuning; precompute: "
                            "every row's reference log-probs computed once at the first step, no copy kept, and "
                            "kept with every checkpoint: a resumed run reads that table back. A resumed full "
                            "fine-tune of a config-built model with auto is refused (its copy would be trained "
                            "weights); precompute resumes it.")
    prompt_column: str = Field("prompt", description="The prompt: text or a list of messages (absent: the turns "
                                                     "chosen and rejected share).")
    chosen_column: str = Field("chosen", description="The preferred answer: text or messages.")
    rejected_column: str = Field("rejected", description="The dispreferred answer: text or messages.")
    completion_column: str = Field("completion", description="kto: the one answer of a row.")
    label_column: str = Field("label", description="kto: whether the completion is desirable (true/false).")
    max_length: PositiveInt = Field(512, description="Tokens kept per prompt plus answer; the end of a longer one "
                                                     "is cut.")

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, value: str) -> str:
        from adaptkit_tasks.preference_objectives import OBJECTIVES

        if value not in OBJECTIVES:
            raise ValueError(f"unknown objective {value!r} (known: {', '.join(sorted(OBJECTIVES))})")
        return value

    @model_validator(mode="after")
    def _smoothing_where_used(self) -> "PreferenceOptions":
        if self.label_smoothing and not (self.objective == "simpo" or
                                         (self.objective == "dpo" and self.loss_type == "sigmoid")):
            raise ValueError("label_smoothing applies to objective dpo with loss_type sigmoid, and to simpo")
        return self


def token_logps(logits: "Any", labels: "Any") -> "Any":
    """Per-position log-prob of each next token ([rows, tokens - 1]), 0 where the label is -100.

    A strategy that prepends positions (prompt tuning's virtual tokens) returns logits for them in
    front: the row's own tokens are the last ``labels.shape[1]`` positions.
    """
    import torch.nn.functional as F

    logits = logits[:, -labels.shape[1]:-1, :].float()
    return -F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE, reduction="none")


def mismatched_pairs(input_ids: "Any", attention_mask: "Any", labels: "Any") -> tuple["Any", "Any", "Any"]:
    """Each row's prompt followed by the next row's answer (the last row takes the first's), right-padded,
    answers labelled: KTO's KL estimate scores answers the prompt did not ask for."""
    import torch

    rows, targets = [], []
    count = input_ids.shape[0]
    for i in range(count):
        j = (i + 1) % count
        answer_i = (labels[i, 1:] != IGNORE).nonzero()
        start = int(answer_i[0]) + 1 if len(answer_i) else int(attention_mask[i].sum())
        completion = input_ids[j, 1:][labels[j, 1:] != IGNORE]
        rows.append(torch.cat([input_ids[i, :start], completion]))
        targets.append(torch.cat([torch.full((start,), IGNORE, device=input_ids.device), completion]))
    width = max(len(row) for row in rows)
    ids = torch.zeros((count, width), dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.zeros_like(ids)
    target = torch.full_like(ids, IGNORE)
    for i, (row, row_target) in enumerate(zip(rows, targets)):
        ids[i, :len(row)], mask[i, :len(row)], target[i, :len(row)] = row, 1, row_target
    return ids, mask, target


class Preference(CausalLM):
    """Align a decoder with preferences: a prompt's chosen answer made likelier than its rejected one."""

    name = "preference"
    description = "Preference tuning (DPO, IPO, hinge, SimPO, ORPO, KTO) on prompt/chosen/rejected rows."
    Options = PreferenceOptions
    pipeline_tag = "text-generation"
    primary_metric = "reward_accuracy"
    greater_is_better = True
    metric_names = ("reward_accuracy", "rewards_chosen", "rewards_rejected", "reward_margin", "logps_chosen",
                    "logps_rejected")

    def __init__(self, options=None):
        super().__init__(options)
        self._reference_model: Any = None
        self._precomputed: Optional[dict[bytes, float]] = None
        self._tables: list[Any] = []
        self._source: Optional[tuple[str, dict[str, Any]]] = None
        self._reference_used: Optional[str] = None  # what the reference was, in words, for the model card
        self._resumed = False  # load_training_state ran: the weights are no longer the first step's

    # ------------------------------------------------------------------ what the task declares
    @property
    def objective(self):
        from adaptkit_tasks.preference_objectives import OBJECTIVES

        return OBJECTIVES[self.options.objective]

    def required_columns(self) -> list[str]:
        """The prompt: every file has it, except shared-conversation pairs (checked row by row)."""
        return []

    def target_columns(self) -> list[str]:
        opts = self.options
        if self.objective.paired:
            return [opts.chosen_column, opts.rejected_column]
        return [opts.completion_column, opts.label_column]

    def text_columns(self) -> list[str]:
        return [self.options.prompt_column]

    def sequence_length(self) -> Optional[int]:
        """Tokens of a batch row: a pair's row holds both answers side by side (``side_by_side``), and a
        plain forward pass (the contract's output checks) reads it whole."""
        return self.options.max_length * (2 if self.objective.paired else 1)

    def _row(self, row: dict[str, Any], where: str):
        from adaptkit_tasks.preference_data import pair_messages, unpaired_messages

        if self.objective.paired:
            return pair_messages(row, self.options, where)
        return unpaired_messages(row, self.options, where)

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        """A row that cannot be read as a preference (no answer, an answer not from the assistant, an
        unknown label): ``validate`` names its file and line before any model is built."""
        try:
            self._row(row, "row")
        except DataError as exc:
            return str(exc)
        return None

    def setup(self, train) -> None:
        self._train = train

    def load_processor(self, recipe, source):
        """The tokenizer with the chat template installed (refused here when there is none)."""
        from adaptkit_tasks.chat_templates import install_template

        tokenizer = super().load_processor(recipe, source)
        install_template(tokenizer, self.options.chat_template, repr(recipe.model.tokenizer or recipe.model.name
                                                                     or "the model"))
        return tokenizer

    def preflight(self, recipe, source) -> list[str]:
        self.load_processor(recipe, source)
        objective = self.objective
        if not objective.reference:
            return [f"objective {objective.name}: reference-free, no reference model"]
        if self.options.reference == "precompute":
            return [f"objective {objective.name}: reference log-probs computed once before the first step and kept "
                    f"with every checkpoint (a resume reads them back), no copy"]
        return [f"objective {objective.name}: the reference is the base with the adapter switched off, or a "
                f"frozen copy of the model for strategies without one"]

    def finish_model(self, model, source: str, load_kwargs: dict[str, Any]):
        """Remember where the base came from: a full fine-tune's reference is loaded again from it."""
        self._source = (source, dict(load_kwargs)) if source else None
        return model

    def memory_estimate(self, model, parts: dict[str, int]) -> dict[str, int]:
        """For a strategy without an adapter to switch off, the frozen reference copy at the weights'
        size (none with ``reference: precompute`` except for KTO, whose KL estimate pairs rows anew in
        every batch, nor for reference-free objectives). A pair's two
        answers are already counted: ``sequence_length`` is twice ``max_length`` for them. With
        ``reference: precompute`` the table of reference log-probs is a part of its own
        (``reference_table``, its upper bound for the training rows)."""
        parts = dict(parts)
        keeps_copy = self.options.reference == "auto" or self.objective.kl  # KTO's KL pass needs it every step
        if self.objective.reference and keeps_copy and not hasattr(model, "disable_adapter"):
            parts["reference"] = sum(p.numel() * p.element_size() for p in model.parameters())
        rows = len(getattr(self, "_train", None) or ())
        if self.objective.reference and self.options.reference == "precompute" and rows:
            # the table of reference log-probs, host memory: one entry per sequence, keyed by its token ids
            # (at most max_length int64s); the training rows only (the eval rows are not known to plan)
            sequences = rows * (2 if self.objective.paired else 1)
            parts["reference_table"] = sequences * (8 * self.options.max_length + TABLE_ENTRY_BYTES)
        return parts

    # ------------------------------------------------------------------ data
    def _encode(self, row: dict[str, Any], index: int, tokenizer: Any) -> dict[str, Any]:
        from adaptkit_tasks.preference_data import encode_answer, encode_prompt_only

        where = f"row {index + 1}"
        prompt, first, second = self._row(row, where)
        length = self.options.max_length
        try:
            if not first:
                encoded = encode_prompt_only(tokenizer, prompt, length)
                return {"input_ids": encoded["input_ids"], "labels": encoded["labels"], "length": encoded["length"]}
            chosen = encode_answer(tokenizer, prompt, first, length)
            if not self.objective.paired:
                return {"input_ids": chosen["input_ids"], "labels": chosen["labels"], "length": chosen["length"],
                        "desirable": int(second)}
            rejected = encode_answer(tokenizer, prompt, second, length)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        return {"chosen_input_ids": chosen["input_ids"], "chosen_labels": chosen["labels"],
                "rejected_input_ids": rejected["input_ids"], "rejected_labels": rejected["labels"],
                "length": max(chosen["length"], rejected["length"])}

    def preprocess(self, dataset, tokenizer):
        from adaptkit_tasks.preference_data import has_answer

        training = dataset is getattr(self, "_train", None)
        encoded = dataset.map(lambda row, index: self._encode(row, index, tokenizer), with_indices=True,
                              remove_columns=dataset.column_names, desc="tokenizing")
        if "chosen_labels" in encoded.column_names:
            usable = [has_answer(c) and has_answer(r) for c, r in zip(encoded["chosen_labels"],
                                                                     encoded["rejected_labels"])]
        elif "desirable" in encoded.column_names:
            usable = [has_answer(labels) for labels in encoded["labels"]]
        else:
            return encoded  # predict inputs: prompts only
        dropped = [index + 1 for index, ok in enumerate(usable) if not ok]
        if len(dropped) == len(usable):
            raise DataError(f"no {'training' if training else 'evaluation'} row keeps an answer token: "
                            f"task.max_length ({self.options.max_length}) cuts every answer off")
        if dropped:
            shown = ", ".join(map(str, dropped[:8])) + (", ..." if len(dropped) > 8 else "")
            print(f"warning: {len(dropped)} of {len(usable)} rows lose an answer to task.max_length "
                  f"{self.options.max_length} (rows {shown}); they are left out", file=sys.stderr)
            encoded = encoded.select([index for index, ok in enumerate(usable) if ok])
        self._tables.append(encoded)
        return encoded

    def collate(self, tokenizer):
        """Right-padded rows. A pair is one row, its chosen and rejected sequences side by side
        (``side_by_side``); a KTO row carries its desirability in labels[:, 0]."""
        import torch

        from adaptkit_tasks.preference_data import pad_rows, side_by_side

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def collate(rows):
            if "chosen_input_ids" in rows[0]:
                chosen = [r["chosen_input_ids"] for r in rows]
                rejected = [r["rejected_input_ids"] for r in rows]
                return {"input_ids": side_by_side(chosen, rejected, pad),
                        "attention_mask": side_by_side([[1] * len(r) for r in chosen],
                                                       [[1] * len(r) for r in rejected], 0),
                        "labels": side_by_side([r["chosen_labels"] for r in rows],
                                               [r["rejected_labels"] for r in rows], IGNORE)}
            width = max(len(r["input_ids"]) for r in rows)
            batch = {"input_ids": pad_rows([r["input_ids"] for r in rows], pad, width),
                     "attention_mask": pad_rows([[1] * len(r["input_ids"]) for r in rows], 0, width),
                     "labels": pad_rows([r["labels"] for r in rows], IGNORE, width)}
            if "desirable" in rows[0]:
                batch["labels"][:, 0] = torch.tensor([1 if r["desirable"] else IGNORE for r in rows])
            return batch

        return collate

    def sequences(self, batch):
        """The batch as one sequence per row: pairs split into chosen rows, then rejected rows."""
        from adaptkit_tasks.preference_data import split_pairs

        if not self.objective.paired:
            return batch
        return {key: split_pairs(batch[key]) for key in ("input_ids", "attention_mask", "labels")}

    # ------------------------------------------------------------------ the loss
    def _desirable(self, labels):
        import torch

        if self.objective.paired:
            rows = labels.shape[0]
            return torch.arange(rows, device=labels.device) < rows // 2
        return labels[:, 0] == 1

    def _answer_logps(self, model, input_ids, attention_mask, labels):
        """Summed answer log-probs per row and the per-token ones (0 outside answers)."""
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        per_token = token_logps(outputs.logits, labels)
        return per_token.sum(dim=1), per_token

    def _reference_forward(self, model):
        """A callable (input_ids, attention_mask, labels) -> summed reference log-probs, under no_grad and
        in eval mode (no dropout).

        Adapter strategies (peft's ``PeftModel`` and any model offering ``disable_adapter()``): the
        same model with the adapter off. Others: a frozen reference, loaded again from the checkpoint
        when there is one (a resumed run compares with the same reference), else the weights as they
        were at the first call, run through the live model with ``torch.func.functional_call`` (a
        ``deepcopy`` would keep wrappers' forward hooks that still call the live modules).
        """
        import contextlib

        import torch

        inner = getattr(model, "module", model)  # accelerate's DDP wrapper

        def run(forward_model, context, mode_of):
            def forward(input_ids, attention_mask, labels):
                was_training = mode_of.training
                mode_of.eval()
                try:
                    with torch.no_grad(), context():
                        return self._answer_logps(forward_model, input_ids, attention_mask, labels)[0]
                finally:
                    mode_of.train(was_training)
            return forward

        if hasattr(inner, "disable_adapter"):
            self._note_reference("the base model with the adapter switched off (peft's disable_adapter)")
            return run(inner, inner.disable_adapter, inner)
        if self._reference_model is None:
            self._reference_model = self._frozen_copy(inner)
        if isinstance(self._reference_model, dict):
            snapshot = self._reference_model

            def with_snapshot(**inputs):
                return torch.func.functional_call(inner, snapshot, args=(), kwargs=inputs)
            return run(with_snapshot, contextlib.nullcontext, inner)
        return run(self._reference_model, contextlib.nullcontext, self._reference_model)

    def _note_reference(self, used: str) -> None:
        """Record what the reference is, in words, the first time (a precomputed table's note wraps it)."""
        self._reference_used = self._reference_used or used

    def _frozen_copy(self, model):
        """The base reloaded from its checkpoint, or (built from a config) a snapshot of the weights,
        which a resumed run no longer has: refused then, rather than comparing with trained weights."""
        if self._source is None:
            if self._resumed:
                from adaptkit import AdaptkitError

                raise AdaptkitError(
                    f"objective {self.objective.name} compares with the model as it was before its first step; a "
                    f"resumed full fine-tune built from model.config no longer has those weights (the checkpoint "
                    f"holds the trained ones). Start over with --overwrite, or set task.reference: precompute "
                    f"(the reference log-probs are then kept with every checkpoint)")
            self._note_reference("a frozen snapshot of the starting weights (the model was built from model.config)")
            return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
        import transformers

        source, kwargs = self._source
        self._note_reference(f"a frozen copy of the base model, loaded again from {source}")
        reference = getattr(transformers, self.model_class).from_pretrained(source, **kwargs)
        reference.to(next(model.parameters()).device)
        reference.eval()
        reference.requires_grad_(False)
        return reference

    @staticmethod
    def _keys(input_ids, attention_mask) -> list[bytes]:
        """Each sequence's token ids (padding left out) as int64 bytes: the table's keys."""
        import torch

        return [ids[mask.bool()].to(torch.int64).cpu().numpy().tobytes()
                for ids, mask in zip(input_ids, attention_mask)]

    def _precompute(self, model) -> None:
        """Every known row's reference log-probs, once, before the first step changes the weights."""
        forward = self._reference_forward(model)
        collate = self.collate(self._tokenizer)
        device = next(getattr(model, "module", model).parameters()).device
        cache: dict[bytes, float] = {}
        for table in self._tables:
            for start in range(0, len(table), 16):
                batch = self.sequences(collate([table[i] for i in range(start, min(start + 16, len(table)))]))
                batch = {k: v.to(device) for k, v in batch.items()}
                values = forward(batch["input_ids"], batch["attention_mask"], batch["labels"])
                cache.update(zip(self._keys(batch["input_ids"], batch["attention_mask"]), values.tolist()))
        self._precomputed = cache
        self._reference_used = (f"reference log-probs of every row computed once before the first step from "
                                f"{self._reference_used}, kept with the run (task-state.safetensors)")
        if not self.objective.kl:  # KTO's KL estimate pairs rows per batch: its reference runs every step
            self._reference_model = None  # the copy (if one was made) is needed no more

    def _reference_logps(self, model, batch):
        import torch

        if self.options.reference == "precompute":
            if self._precomputed is None:
                self._precompute(model)
            keys = self._keys(batch["input_ids"], batch["attention_mask"])
            missing = [key for key in keys if key not in self._precomputed]
            if missing:  # a row not seen in preprocess (a caller's own batch): computed now, kept
                forward = self._reference_forward(model)
                values = forward(batch["input_ids"], batch["attention_mask"], batch["labels"]).tolist()
                self._precomputed.update(zip(keys, values))
            return torch.tensor([self._precomputed[key] for key in keys], device=batch["input_ids"].device)
        return self._reference_forward(model)(batch["input_ids"], batch["attention_mask"], batch["labels"])

    def _kl_estimate(self, model, batch):
        """KTO's reference point: KL(policy || reference) estimated on mismatched pairs (``mismatched_pairs``),
        under no_grad and clamped at 0, as the KTO paper and TRL do."""
        import torch

        if batch["input_ids"].shape[0] < 2:
            return torch.zeros((), device=batch["input_ids"].device)
        kl_ids, kl_mask, kl_labels = mismatched_pairs(batch["input_ids"], batch["attention_mask"], batch["labels"])
        with torch.no_grad():
            policy = self._answer_logps(model, kl_ids, kl_mask, kl_labels)[0]
        reference = self._reference_forward(model)(kl_ids, kl_mask, kl_labels)
        return (policy - reference).mean().clamp(min=0)

    def compute_loss(self, model, batch):
        """The objective's loss on one batch, and per-pair rewards and log-probs for the metrics."""
        from adaptkit_tasks.preference_objectives import Scores

        objective = self.objective
        batch = self.sequences(batch)
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        policy, per_token = self._answer_logps(model, ids, mask, labels)
        answer = labels[:, 1:] != IGNORE
        tokens = answer.sum(dim=1)
        desirable = self._desirable(labels)
        reference = self._reference_logps(model, batch) if objective.reference else None
        good_tokens = tokens[desirable].sum().clamp(min=1)
        chosen_nll = -per_token[desirable].sum() / good_tokens
        kl = self._kl_estimate(model, batch) if objective.kl else None
        scores = Scores(policy=policy, tokens=tokens, desirable=desirable, reference=reference,
                        chosen_nll=chosen_nll, kl=kl)
        loss, rewards = objective.loss(scores, self.options)
        return loss, SimpleNamespace(loss=loss, rewards=rewards, logps=policy.detach(), desirable=desirable,
                                     logits=None)

    # ------------------------------------------------------------------ kept with the run
    def training_state(self) -> dict[str, Any]:
        """``reference: precompute``'s table as plain tensors: every sequence's token ids end to end
        (``reference_tokens``), each one's length (``reference_lengths``), its reference log-prob
        (``reference_logps``, float64: the float32 values exactly) and, as UTF-8 bytes, what the
        reference was (``reference_used``, for the model card of a resumed run)."""
        import torch

        if not self._precomputed:
            return {}
        keys = list(self._precomputed)
        tokens = [torch.frombuffer(bytearray(key), dtype=torch.int64) for key in keys]
        return {"reference_tokens": torch.cat(tokens),
                "reference_lengths": torch.tensor([len(t) for t in tokens], dtype=torch.int64),
                "reference_logps": torch.tensor([self._precomputed[key] for key in keys], dtype=torch.float64),
                "reference_used": torch.tensor(list((self._reference_used or "").encode()), dtype=torch.uint8)}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """A resumed run's table, as it was computed before the first step; from here on the model
        holds trained weights, so a reference that would snapshot them is refused (``_frozen_copy``)."""
        import torch

        self._resumed = True
        if "reference_logps" not in state:
            return
        tokens, lengths = state["reference_tokens"].to(torch.int64), state["reference_lengths"].tolist()
        keys, start = [], 0
        for length in lengths:
            keys.append(tokens[start:start + length].numpy().tobytes())
            start += length
        self._precomputed = dict(zip(keys, state["reference_logps"].tolist()))
        used = bytes(state["reference_used"].tolist()).decode() if "reference_used" in state else ""
        self._reference_used = used or None

    def card_notes(self) -> list[str]:
        """Which reference the run compared with (none for a reference-free objective)."""
        objective = self.objective
        if not objective.reference:
            return [f"Preference objective {objective.name}: reference-free, no reference model."]
        used = self._reference_used or ("reference log-probs computed once before the first step"
                                        if self.options.reference == "precompute" else "none was run")
        return [f"Preference objective {objective.name}; reference: {used}."]

    # ------------------------------------------------------------------ metrics
    def training_metrics(self, outputs, batch) -> dict[str, Any]:
        """Each training batch's reward accuracy, mean chosen and rejected rewards, their margin and the
        answers' mean log-probs, as device tensors (the loop averages them over its log interval).
        Masked sums, not boolean indexing: indexing by a mask waits on the device for its size."""
        rewards, logps = outputs.rewards.float(), outputs.logps.float()
        if self.objective.paired:
            half = rewards.shape[0] // 2
            chosen, rejected = rewards[:half], rewards[half:]
            return {"reward_accuracy": (chosen > rejected).float().mean(), "rewards_chosen": chosen.mean(),
                    "rewards_rejected": rejected.mean(), "reward_margin": (chosen - rejected).mean(),
                    "logps_chosen": logps[:half].mean(), "logps_rejected": logps[half:].mean()}
        good = outputs.desirable.float()
        bad = 1 - good
        chosen, rejected = (rewards * good).sum() / good.sum(), (rewards * bad).sum() / bad.sum()  # NaN if none
        return {"reward_accuracy": ((rewards > 0).float() == good).float().mean(), "rewards_chosen": chosen,
                "rewards_rejected": rejected, "reward_margin": chosen - rejected,
                "logps_chosen": (logps * good).sum() / good.sum(), "logps_rejected": (logps * bad).sum() / bad.sum()}

    def batch_outputs(self, outputs, batch):
        """Per pair: the implicit rewards and log-probs of both answers (per row for KTO)."""
        if not hasattr(outputs, "rewards"):
            raise DataError("the preference task's evaluation needs its own compute_loss outputs (rewards); "
                            "this caller passed plain model outputs")
        if self.objective.paired:
            half = outputs.rewards.shape[0] // 2
            return {"chosen_rewards": outputs.rewards[:half], "rejected_rewards": outputs.rewards[half:],
                    "chosen_logps": outputs.logps[:half], "rejected_logps": outputs.logps[half:]}
        return {"rewards": outputs.rewards, "logps": outputs.logps, "desirable": outputs.desirable.long()}

    def compute_metrics(self, **gathered) -> dict[str, float]:
        """Reward accuracy (the chosen answer's implicit reward above the rejected one's; KTO: the
        reward's sign agrees with the label), mean rewards, their margin and mean log-probs."""
        if "chosen_rewards" in gathered:
            chosen, rejected = gathered["chosen_rewards"].double(), gathered["rejected_rewards"].double()
            chosen_logps, rejected_logps = gathered["chosen_logps"].double(), gathered["rejected_logps"].double()
            accuracy = (chosen > rejected).double().mean()
        else:
            good = gathered["desirable"].bool()
            rewards, logps = gathered["rewards"].double(), gathered["logps"].double()
            chosen, rejected, chosen_logps, rejected_logps = rewards[good], rewards[~good], logps[good], logps[~good]
            accuracy = ((rewards > 0) == good).double().mean()

        def mean(values) -> float:
            return float(values.mean()) if values.numel() else float("nan")

        return {"reward_accuracy": float(accuracy), "rewards_chosen": mean(chosen), "rewards_rejected": mean(rejected),
                "reward_margin": mean(chosen) - mean(rejected), "logps_chosen": mean(chosen_logps),
                "logps_rejected": mean(rejected_logps)}

    # ------------------------------------------------------------------ predict
    def predict_batch(self, model, batch) -> list[str]:
        """Each row's answer to its prompt, generated for the whole batch at once."""
        from adaptkit_tasks.chat_templates import stop_ids
        from adaptkit_tasks.generation import generate

        tokenizer = self._tokenizer
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        opts = self.options
        return generate(model, tokenizer, prompts, opts.max_new_tokens, stop_ids(tokenizer),
                        temperature=opts.temperature, top_p=opts.top_p, pad_id=tokenizer.pad_token_id)
