"""Extractive question answering (SQuAD, SQuAD 2.0): the answer is a span of the context.

Rows are SQuAD-shaped: ``question``, ``context`` and ``answers``, a dict (or its JSON text in a
CSV cell) ``{"text": [...], "answer_start": [...]}`` with character offsets into the context;
empty lists mark an unanswerable question (SQuAD 2.0, with ``task.unanswerable: true``). Flat
``answer_text`` / ``answer_start`` columns serve too (``task.answer_text_column``).

Preprocessing follows the Hugging Face question-answering example: the fast tokenizer splits a
long context into windows of ``max_length`` tokens overlapping by ``stride``
(``return_overflowing_tokens``), and each window's start/end token positions point at the
answer, or at the first token when the answer is not inside that window. Unlike the example, one
preprocessed row holds *all* windows of one question, and ``collate`` flattens them into the
model's batch: a question's windows are always in the same batch, so ``batch_outputs`` reduces
them to one best span per question (n-best start/end logits over every window, spans up to
``max_answer_length`` tokens, the null score against the best span), mapped back to characters
through the offsets. Evaluation then keeps four numbers per question instead of full logits,
``compute_metrics`` sees one entry per question (so compare's bootstrap resamples questions), and
``predict`` returns one answer per row.

What a window needs after the model ran (its question's key and its tokens' character offsets)
travels in the batch's ``labels`` tensor, which every caller strips before the forward pass;
the texts (context and gold answers) stay in a process-wide table keyed by a hash of question
and context, filled by ``preprocess``.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Optional

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from adaptkit import Task, TaskOptions
from adaptkit_tasks.squad_metrics import squad_scores

# labels columns per window: start token, end token, question key, then (start, end) character offsets per token
START, END, KEY, OFFSETS = 0, 1, 2, 3
NO_OFFSET = -1  # a token outside the context (question, special tokens, padding)


class QuestionAnsweringOptions(TaskOptions):
    question_column: str = Field("question", description="Column holding the question.")
    context_column: str = Field("context", description="Column holding the context the answer is a span of.")
    answers_column: str = Field("answers", description="Column holding SQuAD's answers: {'text': [...], "
                                                       "'answer_start': [...]} (a dict, or its JSON in a CSV cell); "
                                                       "empty lists: no answer.")
    answer_text_column: Optional[str] = Field(None, description="Flat alternative to answers_column: the answer's "
                                                                "text (empty: no answer); needs answer_start_column.")
    answer_start_column: Optional[str] = Field(None, description="Flat alternative: the answer's first character "
                                                                 "in the context.")
    max_length: PositiveInt = Field(384, description="Tokens per window (question and context together).")
    stride: NonNegativeInt = Field(128, description="Tokens two windows of one long context overlap by.")
    max_answer_length: PositiveInt = Field(30, description="Longest answer predicted, in tokens.")
    n_best: PositiveInt = Field(20, description="Start and end candidates kept per window.")
    unanswerable: bool = Field(False, description="Questions may have no answer (SQuAD 2.0): the model may "
                                                  "predict none, and has_answer_/no_answer_ metrics are reported.")
    null_threshold: float = Field(0.0, description="With unanswerable: predict no answer when the null score "
                                                   "exceeds the best span's by more than this.")

    @model_validator(mode="after")
    def _flat_columns_together(self) -> "QuestionAnsweringOptions":
        if (self.answer_text_column is None) != (self.answer_start_column is None):
            raise ValueError("answer_text_column and answer_start_column go together")
        if self.stride >= self.max_length:
            raise ValueError(f"stride ({self.stride}) must be below max_length ({self.max_length})")
        return self


def question_key(question: str, context: str) -> int:
    """A stable 56-bit key of one question on one context (the same in every process)."""
    digest = hashlib.blake2b(f"{question}\x1f{context}".encode("utf-8"), digest_size=7).digest()
    return int.from_bytes(digest, "big")


class QuestionAnswering(Task):
    """Find the answer to a question as a span of its context (SQuAD), or none (SQuAD 2.0)."""

    name = "question_answering"
    description = "Extractive QA on SQuAD-shaped rows: the answer is a span of the context; exact match and F1."
    Options = QuestionAnsweringOptions
    model_class = "AutoModelForQuestionAnswering"
    head_names = ("qa_outputs",)
    # Not "QUESTION_ANS": peft 0.21's PeftModelForQuestionAnswering.forward takes token_type_ids and does not
    # pass them on, so a BERT trained through it sees every token as segment 0 while its merged export, given
    # the tokenizer's segment ids, predicts differently (the contract's equivalence check caught it: 0.38 on
    # start logits). peft's plain PeftModel passes every input through; the head is trained as modules_to_save.
    peft_task_type = None
    pipeline_tag = "question-answering"
    primary_metric = "f1"
    greater_is_better = True
    metric_names = ("loss", "exact_match", "f1")
    # question key -> (context, gold answer texts), filled by preprocess in this process: metrics and
    # predictions turn a character span back into text with it
    _texts: ClassVar[dict[int, tuple[str, tuple[str, ...]]]] = {}

    def __init__(self, options=None):
        super().__init__(options)
        if self.options.unanswerable:
            self.metric_names = ("loss", "exact_match", "f1", "has_answer_exact_match", "has_answer_f1",
                                 "no_answer_exact_match", "no_answer_f1")

    # ------------------------------------------------------------------ data
    def _answer_columns(self) -> list[str]:
        opts = self.options
        if opts.answer_text_column:
            return [opts.answer_text_column, opts.answer_start_column]
        return [opts.answers_column]

    def required_columns(self) -> list[str]:
        return [self.options.question_column, self.options.context_column, *self._answer_columns()]

    def target_columns(self) -> list[str]:
        return self._answer_columns()

    def text_columns(self) -> list[str]:
        return [self.options.question_column, self.options.context_column]

    def sequence_length(self) -> Optional[int]:
        return self.options.max_length

    def answers(self, row: dict[str, Any]) -> list[tuple[str, int]]:
        """The row's gold answers as (text, first character); raises ValueError naming what is wrong."""
        opts = self.options
        if opts.answer_text_column:
            text, start = row.get(opts.answer_text_column), row.get(opts.answer_start_column)
            if text is None or str(text) == "":
                return []
            try:
                return [(str(text), int(start))]
            except (TypeError, ValueError):
                raise ValueError(f"column {opts.answer_start_column!r} holds {start!r}, not a character offset") from None
        value = row.get(opts.answers_column)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"column {opts.answers_column!r} is not JSON ({exc.msg})") from None
        if value is None:
            return []
        if not isinstance(value, dict) or "text" not in value or "answer_start" not in value:
            raise ValueError(f"column {opts.answers_column!r} must be {{\"text\": [...], \"answer_start\": [...]}}, "
                             f"got {value!r}")
        texts, starts = value["text"], value["answer_start"]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise ValueError(f"column {opts.answers_column!r}: 'text' and 'answer_start' must be lists of one "
                             f"length, got {texts!r} and {starts!r}")
        if any(isinstance(s, bool) or not isinstance(s, int) for s in starts):
            raise ValueError(f"column {opts.answers_column!r}: answer_start must hold whole numbers, got {starts!r}")
        return [(str(t), int(s)) for t, s in zip(texts, starts)]

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        opts = self.options
        if not all(column in row for column in self._answer_columns()):
            return None  # rows to predict
        try:
            answers = self.answers(row)
        except ValueError as exc:
            return str(exc)
        context = "" if row.get(opts.context_column) is None else str(row[opts.context_column])
        if not answers and not opts.unanswerable:
            return "no answer given: set task.unanswerable: true for questions without an answer (SQuAD 2.0)"
        for text, start in answers:
            if start < 0 or context[start:start + len(text)] != text:
                found = context.find(text)
                hint = f" (it occurs at {found})" if found >= 0 else " (it does not occur in the context)"
                return f"answer {text!r} is not at character {start} of the context{hint}"
        return None

    def preprocess(self, dataset, tokenizer):
        from adaptkit import AdaptkitError, DataError

        if not getattr(tokenizer, "is_fast", False):
            raise AdaptkitError("question_answering needs a fast tokenizer (it maps answers through the "
                                "tokenizer's character offsets); this model's tokenizer is not one")
        opts = self.options
        labelled = all(column in dataset.column_names for column in self._answer_columns())
        pad_right = getattr(tokenizer, "padding_side", "right") == "right"

        def encode(batch, indices):
            columns = list(batch)
            rows = [dict(zip(columns, values)) for values in zip(*batch.values())]
            questions = [str(r[opts.question_column] or "").strip() for r in rows]
            contexts = [str(r[opts.context_column] or "") for r in rows]
            first, second = (questions, contexts) if pad_right else (contexts, questions)
            encoded = tokenizer(first, second, truncation="only_second" if pad_right else "only_first",
                                max_length=opts.max_length, stride=opts.stride, return_overflowing_tokens=True,
                                return_offsets_mapping=True)
            context_side = 1 if pad_right else 0
            out: dict[str, list] = {k: [[] for _ in rows] for k in
                                    ("input_ids", "attention_mask", "token_type_ids", "offsets", "start_positions",
                                     "end_positions")}
            gold: list[list[tuple[str, int]]] = []
            for row, index in zip(rows, indices):
                try:
                    gold.append(self.answers(row) if labelled else [])
                except ValueError as exc:
                    raise DataError(f"row {index + 2}: {exc}") from None
            for window, example in enumerate(encoded["overflow_to_sample_mapping"]):
                ids = encoded["input_ids"][window]
                sequence = encoded.sequence_ids(window)
                offsets = [list(o) if s == context_side else [NO_OFFSET, NO_OFFSET]
                           for o, s in zip(encoded["offset_mapping"][window], sequence)]
                out["input_ids"][example].append(ids)
                out["attention_mask"][example].append(encoded["attention_mask"][window])
                if "token_type_ids" in encoded:
                    out["token_type_ids"][example].append(encoded["token_type_ids"][window])
                out["offsets"][example].append(offsets)
                start, end = self._positions(offsets, gold[example][:1])
                out["start_positions"][example].append(start)
                out["end_positions"][example].append(end)
            keys = [question_key(question, context) for question, context in zip(questions, contexts)]
            result = {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"], "offsets": out["offsets"],
                      "question_key": keys, "length": [max(len(w) for w in windows) for windows in out["input_ids"]]}
            if "token_type_ids" in encoded:
                result["token_type_ids"] = out["token_type_ids"]
            if labelled:
                result["start_positions"], result["end_positions"] = out["start_positions"], out["end_positions"]
            return result

        self._remember(dataset, labelled)
        return dataset.map(encode, batched=True, with_indices=True, remove_columns=dataset.column_names,
                           desc="tokenizing")

    def _remember(self, dataset: Any, labelled: bool) -> None:
        """Record every question's context and gold answers under its key, outside ``dataset.map``: a map
        whose result datasets reloads from its cache never runs the function (a bad row is reported by
        the map itself, with its line)."""
        opts = self.options
        columns = [opts.question_column, opts.context_column] + (self._answer_columns() if labelled else [])
        for row in dataset.select_columns(columns):
            question, context = str(row[opts.question_column] or "").strip(), str(row[opts.context_column] or "")
            try:
                answers = [t for t, _ in self.answers(row)] if labelled else []
            except ValueError:
                answers = []
            key = question_key(question, context)
            known = self._texts.get(key, (context, ()))[1]
            self._texts[key] = (context, tuple(dict.fromkeys([*known, *answers])))

    @staticmethod
    def _positions(offsets: list[list[int]], answers: list[tuple[str, int]]) -> tuple[int, int]:
        """(start, end) token positions of the first gold answer inside this window, else (0, 0): the first
        token, which the null score reads (an answer outside the window, or none)."""
        if not answers:
            return 0, 0
        text, start_char = answers[0]
        end_char = start_char + len(text)
        inside = [i for i, (s, e) in enumerate(offsets) if s != NO_OFFSET]
        if not inside or offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:
            return 0, 0
        start = next(i for i in inside if offsets[i][1] > start_char)
        end = next(i for i in reversed(inside) if offsets[i][0] < end_char)
        return start, max(start, end)

    def collate(self, tokenizer):
        import torch

        def collate(rows):
            features, starts, ends, keys, offsets = [], [], [], [], []
            for row in rows:
                for w, ids in enumerate(row["input_ids"]):
                    feature = {"input_ids": ids, "attention_mask": row["attention_mask"][w]}
                    if "token_type_ids" in row:
                        feature["token_type_ids"] = row["token_type_ids"][w]
                    features.append(feature)
                    offsets.append(row["offsets"][w])
                    keys.append(row["question_key"])
                    if "start_positions" in row:
                        starts.append(row["start_positions"][w])
                        ends.append(row["end_positions"][w])
            batch = dict(tokenizer.pad(features, return_tensors="pt"))
            width = batch["input_ids"].shape[1]
            left = getattr(tokenizer, "padding_side", "right") == "left"
            labels = torch.full((len(features), OFFSETS + 2 * width), NO_OFFSET, dtype=torch.long)
            labels[:, KEY] = torch.tensor(keys, dtype=torch.long)
            for w, window in enumerate(offsets):
                shift = width - len(window) if left else 0
                flat = torch.tensor(window, dtype=torch.long).reshape(-1)
                labels[w, OFFSETS + 2 * shift:OFFSETS + 2 * shift + flat.numel()] = flat
            if starts:
                shift = [width - len(window) if left else 0 for window in offsets]
                batch["start_positions"] = torch.tensor([s + d for s, d in zip(starts, shift)], dtype=torch.long)
                batch["end_positions"] = torch.tensor([e + d for e, d in zip(ends, shift)], dtype=torch.long)
                labels[:, START], labels[:, END] = batch["start_positions"], batch["end_positions"]
            batch["labels"] = labels
            return batch

        return collate

    # ------------------------------------------------------------------ model
    def compute_loss(self, model, batch):
        outputs = model(**{k: v for k, v in batch.items() if k != "labels"})
        return outputs.loss, outputs

    # ------------------------------------------------------------------ from windows to answers
    def _best_spans(self, start_logits, end_logits, labels) -> dict[str, Any]:
        """Per question (windows grouped by key, in batch order): the best span's characters and score,
        the null score (the lowest first-token score over its windows, as the HF example takes it),
        and the softmax probability of the chosen answer among the n-best candidates and null."""
        import torch

        opts = self.options
        start_logits, end_logits = start_logits.float(), end_logits.float()
        order: dict[int, list[int]] = {}
        for w, key in enumerate(labels[:, KEY].tolist()):
            order.setdefault(key, []).append(w)
        spans, span_scores, null_scores, probabilities, keys = [], [], [], [], []
        width = start_logits.shape[1]
        for key, windows in order.items():
            best = (-float("inf"), -1, -1)
            candidates: list[float] = []
            null = float("inf")
            for w in windows:
                offsets = labels[w, OFFSETS:OFFSETS + 2 * width].reshape(width, 2)
                null = min(null, float(start_logits[w, 0] + end_logits[w, 0]))
                valid = offsets[:, 0] != NO_OFFSET
                if not bool(valid.any()):
                    continue
                s_logits = start_logits[w].masked_fill(~valid, -float("inf"))
                e_logits = end_logits[w].masked_fill(~valid, -float("inf"))
                k = min(opts.n_best, int(valid.sum()))
                s_top, s_index = s_logits.topk(k)
                e_top, e_index = e_logits.topk(k)
                scores = s_top[:, None] + e_top[None, :]
                length = e_index[None, :] - s_index[:, None]
                scores = scores.masked_fill((length < 0) | (length >= opts.max_answer_length), -float("inf"))
                finite = scores[torch.isfinite(scores)]
                candidates.extend(finite.tolist())
                if finite.numel() == 0:
                    continue
                flat = int(scores.argmax())
                score = float(scores.reshape(-1)[flat])
                if score > best[0]:
                    i, j = int(s_index[flat // k]), int(e_index[flat % k])
                    best = (score, int(offsets[i, 0]), int(offsets[j, 1]))
            no_answer = best[1] < 0 or (opts.unanswerable and null - best[0] > opts.null_threshold)
            chosen = null if no_answer else best[0]
            pool = torch.tensor(candidates + [null]) if candidates else torch.tensor([null])
            probabilities.append(float(torch.exp(torch.tensor(chosen) - torch.logsumexp(pool, 0))))
            spans.append([-1, -1] if no_answer else [best[1], best[2]])
            span_scores.append(best[0] if best[1] >= 0 else -1e9)
            null_scores.append(null)
            keys.append(key)
        return {"span": torch.tensor(spans, dtype=torch.long).reshape(-1, 2),
                "span_score": torch.tensor(span_scores), "null_score": torch.tensor(null_scores),
                "probability": torch.tensor(probabilities), "labels": torch.tensor(keys, dtype=torch.long)}

    def batch_outputs(self, outputs: Any, batch: dict[str, Any]) -> dict[str, Any]:
        kept = self._best_spans(outputs.start_logits, outputs.end_logits, batch["labels"])
        kept.pop("probability")
        return kept

    def _answer(self, key: int, span: list[int]) -> str:
        context = self._texts[key][0]
        return "" if span[0] < 0 else context[span[0]:span[1]]

    def compute_metrics(self, span, span_score, null_score, labels) -> dict[str, float]:
        """Exact match and F1 (SQuAD's normalisation) of each question's answer; with ``unanswerable``,
        the answer is empty when the null score beats the best span by more than ``null_threshold``."""
        predictions, golds = [], []
        for s, score, null, key in zip(span.tolist(), span_score.tolist(), null_score.tolist(), labels.tolist()):
            empty = s[0] < 0 or (self.options.unanswerable and null - score > self.options.null_threshold)
            predictions.append("" if empty else self._answer(key, s))
            golds.append(list(self._texts[key][1]))
        return squad_scores(predictions, golds, splits=self.options.unanswerable)

    def predict_batch(self, model, batch) -> list[Any]:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "start_positions", "end_positions")}
        outputs = model(**inputs)
        found = self._best_spans(outputs.start_logits, outputs.end_logits, batch["labels"])
        results = []
        for s, p, key in zip(found["span"].tolist(), found["probability"].tolist(), found["labels"].tolist()):
            results.append({"answer": self._answer(key, s), "start": None if s[0] < 0 else s[0],
                            "end": None if s[0] < 0 else s[1], "score": round(p, 6)})
        return results
