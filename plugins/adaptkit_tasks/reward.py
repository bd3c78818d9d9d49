"""Reward models: a scalar head trained on preference pairs with the Bradley-Terry loss.

Each pair is rendered as two conversations (the prompt, then the chosen or the rejected answer)
with the chat template exactly as ``preference`` renders them (``preference_data``), and the model
is a one-label sequence classifier (``AutoModelForSequenceClassification``, ``num_labels: 1``)
whose score of the chosen conversation is pushed above the rejected one's:
``-log sigmoid(score_chosen - score_rejected - margin)``, with an optional per-pair margin column
(Llama 2's reward models; TRL's ``margin``). The export is that classifier: plain transformers
loads it and scores text rendered with the saved tokenizer's chat template. ``predict`` takes a
prompt and a ``completion`` per row and returns its score.

A batch row is one pair, its chosen and rejected conversations side by side along the tokens (as
``preference`` lays pairs out: a split across processes keeps pairs whole), and ``labels`` holds
each pair's margin, a float per row the model's own regression loss could read, so the contract's
checks see an ordinary classifier batch. The training log shows the evaluation's figures for the
training batches too (``training_metrics``).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

from pydantic import Field, PositiveInt

from adaptkit import DataError, Task, write_label_maps
from adaptkit_tasks.conversation_options import ConversationOptions


def _number(value: Any) -> Optional[float]:
    """A finite float from a cell (a number or its text), else None."""
    import math

    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class RewardOptions(ConversationOptions):
    prompt_column: str = Field("prompt", description="The prompt: text or a list of messages (absent: the turns "
                                                     "chosen and rejected share).")
    chosen_column: str = Field("chosen", description="The preferred answer: text or messages.")
    rejected_column: str = Field("rejected", description="The dispreferred answer: text or messages.")
    completion_column: str = Field("completion", description="predict: the answer to score, after its prompt.")
    margin_column: Optional[str] = Field(None, description="A column of per-pair margins the chosen score must "
                                                           "win by (e.g. a rating difference); none: 0.")
    max_length: PositiveInt = Field(512, description="Tokens kept per prompt plus answer; the end of a longer one "
                                                     "is cut.")


class Reward(Task):
    """Train a reward model: one score per conversation, the chosen answer's above the rejected one's."""

    name = "reward"
    description = "Reward model: a one-label sequence classifier trained on chosen/rejected pairs (Bradley-Terry)."
    Options = RewardOptions
    model_class = "AutoModelForSequenceClassification"
    head_names = ("score", "classifier")
    peft_task_type = "SEQ_CLS"
    pipeline_tag = "text-classification"
    primary_metric = "accuracy"
    greater_is_better = True
    metric_names = ("accuracy", "margin", "chosen_score", "rejected_score")

    def required_columns(self) -> list[str]:
        return []  # a shared conversation has no prompt column: rows are checked one by one

    def target_columns(self) -> list[str]:
        columns = [self.options.chosen_column, self.options.rejected_column]
        return columns + ([self.options.margin_column] if self.options.margin_column else [])

    def text_columns(self) -> list[str]:
        return [self.options.prompt_column]

    def sequence_length(self) -> Optional[int]:
        """Tokens of a batch row: a pair's two conversations side by side."""
        return self.options.max_length * 2

    def _row(self, row: dict[str, Any], where: str):
        """(prompt, chosen, rejected, margin); a predict row (prompt and completion): (prompt, completion, None, 0)."""
        from adaptkit_tasks.preference_data import answer_messages, pair_messages

        opts = self.options
        if opts.chosen_column not in row and opts.completion_column in row:
            prompt, _, _ = pair_messages({opts.prompt_column: row.get(opts.prompt_column)}, opts, where)
            return prompt, answer_messages(row[opts.completion_column], opts, f"{where}: {opts.completion_column}"), None, 0.0
        prompt, chosen, rejected = pair_messages(row, opts, where)
        if rejected is None:
            raise DataError(f"{where}: a reward model scores a {opts.completion_column!r} after its prompt; the row "
                            f"has neither it nor {opts.chosen_column!r}/{opts.rejected_column!r}")
        margin = 0.0
        if opts.margin_column:
            margin = _number(row.get(opts.margin_column))
            if margin is None:
                raise DataError(f"{where}: {opts.margin_column} is {row.get(opts.margin_column)!r}, not a number")
        return prompt, chosen, rejected, margin

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        try:
            self._row(row, "row")
        except DataError as exc:
            return str(exc)
        return None

    def load_processor(self, recipe, source):
        """The tokenizer with the chat template installed (saved with it, so the export renders alike)."""
        from adaptkit_tasks.chat_templates import install_template

        tokenizer = super().load_processor(recipe, source)
        install_template(tokenizer, self.options.chat_template, repr(recipe.model.tokenizer or recipe.model.name
                                                                     or "the model"))
        self._tokenizer = tokenizer
        return tokenizer

    def preflight(self, recipe, source) -> list[str]:
        self.load_processor(recipe, source)
        return []

    def configure_model(self, config: Any) -> None:
        """One output named "reward", and the pad id the head needs to find each row's last token."""
        write_label_maps(config, ["reward"])
        tokenizer = getattr(self, "_tokenizer", None)
        if getattr(config, "pad_token_id", None) is None and tokenizer is not None:
            config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
                tokenizer.eos_token_id

    # ------------------------------------------------------------------ data
    def _encode(self, row: dict[str, Any], index: int, tokenizer: Any) -> dict[str, Any]:
        from adaptkit_tasks.preference_data import encode_answer

        where = f"row {index + 1}"
        prompt, first, second, margin = self._row(row, where)
        try:
            chosen = encode_answer(tokenizer, prompt, first, self.options.max_length)
            if second is None:
                return {"input_ids": chosen["input_ids"], "length": chosen["length"]}
            rejected = encode_answer(tokenizer, prompt, second, self.options.max_length)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        return {"chosen_input_ids": chosen["input_ids"], "rejected_input_ids": rejected["input_ids"],
                "margin": float(margin), "length": max(chosen["length"], rejected["length"])}

    def preprocess(self, dataset, tokenizer):
        return dataset.map(lambda row, index: self._encode(row, index, tokenizer), with_indices=True,
                           remove_columns=dataset.column_names, desc="tokenizing")

    def collate(self, tokenizer):
        """Right-padded conversations; a pair is one row, its chosen and rejected conversations side by side
        (``side_by_side``), with its margin in ``labels``."""
        import torch

        from adaptkit_tasks.preference_data import pad_rows, side_by_side

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

        def collate(rows):
            if "chosen_input_ids" not in rows[0]:
                width = max(len(r["input_ids"]) for r in rows)
                return {"input_ids": pad_rows([r["input_ids"] for r in rows], pad, width),
                        "attention_mask": pad_rows([[1] * len(r["input_ids"]) for r in rows], 0, width)}
            chosen, rejected = [r["chosen_input_ids"] for r in rows], [r["rejected_input_ids"] for r in rows]
            return {"input_ids": side_by_side(chosen, rejected, pad),
                    "attention_mask": side_by_side([[1] * len(r) for r in chosen], [[1] * len(r) for r in rejected], 0),
                    "labels": torch.tensor([r["margin"] for r in rows], dtype=torch.float)}

        return collate

    # ------------------------------------------------------------------ loss and metrics
    def compute_loss(self, model, batch):
        """Bradley-Terry: -log sigmoid(score(chosen) - score(rejected) - margin), averaged over pairs."""
        import torch.nn.functional as F

        from adaptkit_tasks.preference_data import split_pairs

        scores = model(input_ids=split_pairs(batch["input_ids"]),
                       attention_mask=split_pairs(batch["attention_mask"])).logits[:, 0].float()
        half = scores.shape[0] // 2
        chosen, rejected = scores[:half], scores[half:]
        margin = batch["labels"].to(scores.dtype) if "labels" in batch else 0.0
        loss = -F.logsigmoid(chosen - rejected - margin).mean()
        return loss, SimpleNamespace(loss=loss, chosen=chosen.detach(), rejected=rejected.detach())

    def training_metrics(self, outputs, batch) -> dict[str, Any]:
        """The evaluation's figures for each training batch, left on the device (the loop averages
        them over its log interval): the training log shows whether the pairs are being ranked."""
        chosen, rejected = outputs.chosen, outputs.rejected
        return {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean(),
                "chosen_score": chosen.mean(), "rejected_score": rejected.mean()}

    def batch_outputs(self, outputs, batch):
        """Per pair: both conversations' scores."""
        return {"chosen_scores": outputs.chosen, "rejected_scores": outputs.rejected}

    def compute_metrics(self, chosen_scores, rejected_scores) -> dict[str, float]:
        """Pairwise accuracy (the chosen conversation scored higher), the mean margin and mean scores."""
        chosen, rejected = chosen_scores.double(), rejected_scores.double()
        return {"accuracy": float((chosen > rejected).double().mean()), "margin": float((chosen - rejected).mean()),
                "chosen_score": float(chosen.mean()), "rejected_score": float(rejected.mean())}

    def predict_batch(self, model, batch) -> list[float]:
        """Each row's score: its prompt followed by its completion."""
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        return [float(score) for score in model(**inputs).logits[:, 0].float()]
