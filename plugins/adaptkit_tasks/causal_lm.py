"""Causal language modelling: adapt a decoder to plain text or to prompt/response pairs.

Labels are the input ids (the model shifts them); with ``loss_on: response`` the prompt
positions are labelled -100, so the model learns to answer, not to repeat questions.
Evaluation never gathers [rows, tokens, vocabulary] logits: each batch is reduced to a
per-row sum of token losses and a token count, from which perplexity follows exactly.
"""
from __future__ import annotations

import math
from typing import Any, Literal, Optional

from pydantic import Field, PositiveInt, model_validator

from adaptkit import Task, TaskOptions
from adaptkit_tasks.padding import IGNORE, padded_ids, right_padded
from adaptkit_tasks.special_tokens import end_token, start_tokens



class CausalLMOptions(TaskOptions):
    text_column: Optional[str] = Field(
        None, description="Column of plain text to model (give this, or prompt_column and response_column).")
    prompt_column: Optional[str] = Field(None, description="Column holding the instruction or prompt.")
    response_column: Optional[str] = Field(None, description="Column holding the answer the model should learn.")
    template: str = Field(
        "{prompt}\n", description="How a prompt is laid out before its response; must contain {prompt}.")
    loss_on: Literal["all", "response"] = Field(
        "all", description="'response' scores only the response tokens (prompt tokens are labelled -100).")
    max_length: PositiveInt = Field(256, description="Tokens kept per example; longer examples are truncated.")
    append_eos: bool = Field(True, description="End every text (or response) with the tokenizer's end token.")
    max_new_tokens: PositiveInt = Field(32, description="Tokens generated per row by `adaptkit predict`.")

    @model_validator(mode="after")
    def _one_layout(self) -> "CausalLMOptions":
        pair = (self.prompt_column is not None, self.response_column is not None)
        if self.text_column is None and pair != (True, True):
            raise ValueError("give text_column (plain text) or both prompt_column and response_column")
        if self.text_column is not None and any(pair):
            raise ValueError("give text_column or prompt_column/response_column, not both")
        if self.prompt_column is not None and "{prompt}" not in self.template:
            raise ValueError("template must contain {prompt}")
        if self.loss_on == "response" and self.text_column is not None:
            raise ValueError("loss_on: response needs prompt_column and response_column")
        return self


class CausalLM(Task):
    """Fine-tune a decoder on text, or on prompt/response pairs (optionally scoring responses only)."""

    name = "causal_lm"
    model_class = "AutoModelForCausalLM"
    # No head_names: lm_head's shape follows the vocabulary, not the task, and is often tied to the
    # input embeddings; declaring it a head would make peft copy (and untie) it.
    Options = CausalLMOptions
    peft_task_type = "CAUSAL_LM"
    pipeline_tag = "text-generation"
    primary_metric = "perplexity"
    metric_names = ("token_loss", "perplexity", "tokens")
    greater_is_better = False

    # ------------------------------------------------------------------ data
    def target_columns(self) -> list[str]:
        return [self.options.response_column] if self.options.response_column else []

    def text_columns(self) -> list[str]:
        return [self.options.text_column] if self.options.text_column else []

    def sequence_length(self) -> Optional[int]:
        return self.options.max_length

    def required_columns(self) -> list[str]:
        opts = self.options
        return [opts.text_column] if opts.text_column else [opts.prompt_column, opts.response_column]

    def encode_row(self, tokenizer: Any, text: Optional[str], prompt: Optional[str],
                   response: Optional[str]) -> dict[str, list[int]]:
        """Token ids and labels of one example; a prompt without response is a generation input.

        Pieces are tokenized separately and joined, so the prompt/response boundary is exact
        (tokenizing the joined string could merge tokens across it).
        """
        opts = self.options
        end = [end_token(tokenizer)] if opts.append_eos and end_token(tokenizer) is not None else []
        start = start_tokens(tokenizer)
        if opts.text_column is not None:
            ids = start + tokenizer(text or "", add_special_tokens=False)["input_ids"] + end
            ids = ids[:opts.max_length]
            return {"input_ids": ids, "labels": list(ids), "length": len(ids)}
        prompt_ids = start + tokenizer(opts.template.replace("{prompt}", prompt or ""),
                                       add_special_tokens=False)["input_ids"]
        if response is None:  # generation: the prompt alone, its tail kept when too long
            prompt_ids = prompt_ids[-opts.max_length:]
            return {"input_ids": prompt_ids, "labels": [IGNORE] * len(prompt_ids), "length": len(prompt_ids)}
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + end
        # A long prompt gives up its head so at least half the budget (or the whole response) remains.
        room = opts.max_length - min(len(response_ids), opts.max_length // 2)
        prompt_ids = prompt_ids[-room:] if len(prompt_ids) > room else prompt_ids
        ids = (prompt_ids + response_ids)[:opts.max_length]
        masked = opts.loss_on == "response"
        labels = ([IGNORE] * len(prompt_ids) if masked else list(prompt_ids)) + response_ids
        return {"input_ids": ids, "labels": labels[:len(ids)], "length": len(ids)}

    def preprocess(self, dataset, tokenizer):
        opts = self.options
        has_response = opts.response_column is not None and opts.response_column in dataset.column_names

        def encode(row):
            if opts.text_column is not None:
                return self.encode_row(tokenizer, row[opts.text_column], None, None)
            response = row[opts.response_column] if has_response else None
            return self.encode_row(tokenizer, None, row[opts.prompt_column],
                                   None if response is None else str(response))

        return dataset.map(encode, remove_columns=dataset.column_names, desc="tokenizing")

    def collate(self, tokenizer):
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

        def collate(rows):
            return {**padded_ids(rows, pad), "labels": right_padded([row["labels"] for row in rows], IGNORE)}

        return collate

    # ------------------------------------------------------------------ model

    # ------------------------------------------------------------------ metrics
    def batch_outputs(self, outputs, batch):
        """Per-row sums of next-token losses and token counts: O(rows), not O(rows x vocab)."""
        import torch

        labels = batch["labels"]
        # A strategy that prepends positions (prompt tuning's virtual tokens) returns logits for them
        # too, in front: the row's own tokens are the last labels.shape[1] positions.
        logits = outputs.logits[:, -labels.shape[1]:-1, :].float()
        targets = labels[:, 1:]
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE,
                                                   reduction="none")
        return {"loss_sum": losses.sum(dim=1), "tokens": (targets != IGNORE).sum(dim=1)}

    def compute_metrics(self, loss_sum, tokens) -> dict[str, float]:
        from adaptkit import DataError

        count = int(tokens.sum())
        if not count:  # a mean over no tokens is NaN, which reached metrics.json and the card as a score
            raise DataError("the evaluation data has no token to score (every target is cut off by "
                            "task.max_length, or no row has one); raise task.max_length or check the eval data")
        mean = float(loss_sum.double().sum()) / count
        return {"token_loss": mean, "perplexity": math.exp(min(mean, 700.0)),
                "tokens": float(count)}

    def predict_batch(self, model, batch) -> list[str]:
        """Greedy continuation of each row's prompt (or text), decoded without special tokens.

        The rows' prompts (right-padded by ``collate``) are re-padded on the left and generated
        as one batch (``adaptkit_tasks.generation``): a decoder continues from the last position.
        """
        from adaptkit_tasks.generation import generate

        tokenizer = getattr(self, "_tokenizer", None)
        prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
        end = end_token(tokenizer) if tokenizer is not None else None
        return generate(model, tokenizer, prompts, self.options.max_new_tokens, [end] if end is not None else [],
                        pad_id=getattr(tokenizer, "pad_token_id", None))

    def load_processor(self, recipe, source):
        """The tokenizer, remembered so ``predict_batch`` can decode what it generates."""
        self._tokenizer = super().load_processor(recipe, source)
        return self._tokenizer
