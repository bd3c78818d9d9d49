"""Instruction and chat fine-tuning of decoders: four data layouts, one chat template, answer-only loss.

Layouts (``format``): plain ``text``; ``prompt_completion``; ``alpaca`` (instruction, input,
output); ``messages`` (a conversation of ``{role, content}`` turns, multi-turn, optional
system prompt). All but text are rendered with the tokenizer's chat template (or the one the
recipe gives), and by default only assistant turns are learnt. ``packing`` joins training
examples into ``max_length`` rows whose examples cannot see each other. Evaluation reports
loss and perplexity over answer tokens; ``predict`` renders each row with the same template
and generates answers for a whole batch at once.
"""
from __future__ import annotations

import sys
from typing import Any, Literal, Optional

from pydantic import Field, PositiveInt

from adaptkit import DataError
from adaptkit_tasks.causal_lm import CausalLM
from adaptkit_tasks.conversation_options import ConversationOptions, GenerationOptions
from adaptkit_tasks.special_tokens import end_token, start_tokens

FORMATS = ("messages", "prompt_completion", "alpaca", "text")


class InstructOptions(ConversationOptions, GenerationOptions):
    format: Literal["messages", "prompt_completion", "alpaca", "text"] = Field(
        "messages", description="Data layout: messages (conversations), prompt_completion, alpaca or text.")
    messages_column: str = Field("messages", description="messages: the column holding each conversation.")
    prompt_column: str = Field("prompt", description="prompt_completion: the prompt column.")
    completion_column: str = Field("completion", description="prompt_completion: the answer column.")
    instruction_column: str = Field("instruction", description="alpaca: the instruction column.")
    input_column: str = Field("input", description="alpaca: the optional input column.")
    output_column: str = Field("output", description="alpaca: the answer column.")
    text_column: str = Field("text", description="text: the column of plain text.")
    train_on_inputs: bool = Field(False, description="Also learn prompts, system and user turns (default: answers only).")
    max_length: PositiveInt = Field(512, description="Tokens kept per example; the end of a longer one is cut.")
    packing: bool = Field(False, description="Join training examples into max_length rows, each attending only to itself.")


class Instruct(CausalLM):
    """Fine-tune a decoder on instructions or conversations, learning the answers only."""

    name = "instruct"
    description = "Instruction/chat tuning: text, prompt_completion, alpaca or messages data, answer-only loss."
    Options = InstructOptions

    def target_columns(self) -> list[str]:
        return []  # the assistant turns are inside the rows: a conversation to continue has them too

    def required_columns(self) -> list[str]:
        """The columns every file needs, predict inputs included: the answer column is not among
        them (``setup`` requires it of the training data), so new questions need no empty answers."""
        opts = self.options
        return {"text": [opts.text_column], "prompt_completion": [opts.prompt_column],
                "alpaca": [opts.instruction_column], "messages": [opts.messages_column]}[opts.format]

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        """A row whose messages cannot be read (an unknown role, a turn without content, a cell that
        is no list of messages): ``validate`` names its file and line. It used to pass validate and
        stop the run after the model was built, naming neither."""
        from adaptkit_tasks.instruct_formats import row_messages

        if self.options.format == "text":
            return None
        try:
            row_messages(row, self.options, "row")
        except DataError as exc:
            return str(exc)
        return None

    def answer_column(self) -> Optional[str]:
        opts = self.options
        return {"prompt_completion": opts.completion_column, "alpaca": opts.output_column}.get(opts.format)

    def setup(self, train) -> None:
        """Remember the training table: only it is packed, and only its prompts are learnt with
        ``train_on_inputs`` (eval loss stays on answers, predict rows stay one per input)."""
        answer = self.answer_column()
        if answer is not None and answer not in train.column_names:
            raise DataError(f"the training data lacks column {answer!r}, the answers format "
                            f"{self.options.format!r} learns (columns: {', '.join(train.column_names)}); set "
                            f"task.{'completion' if self.options.format == 'prompt_completion' else 'output'}_column "
                            f"or map it with data.columns")
        self._train = train

    def load_processor(self, recipe, source):
        """The tokenizer with the chat template installed; refused here, before any training,
        when no template is available (``adaptkit plan`` runs this too, via ``preflight``)."""
        from adaptkit_tasks.chat_templates import install_template

        tokenizer = super().load_processor(recipe, source)
        if self.options.format != "text":
            model = recipe.model.tokenizer or recipe.model.name or "the model"
            install_template(tokenizer, self.options.chat_template, repr(model))
        self._tokenizer = tokenizer
        return tokenizer

    def preflight(self, recipe, source) -> list[str]:
        """What ``adaptkit plan`` must refuse (no chat template) or say (packing isolation)."""
        from adaptkit import load_config
        from adaptkit_tasks.packing import isolation_problem

        self.load_processor(recipe, source)
        if not self.options.packing:
            return []
        problem = isolation_problem(load_config(recipe, source), recipe.strategy.name)
        if problem:
            return [f"packing: examples are NOT isolated: {problem}. Set task.packing: false for exact "
                    f"per-example training"]
        return ["packing: training examples share max_length rows; position ids restart per example and the "
                "attention mask is block-diagonal, so no example attends to another"]

    def configure_model(self, config: Any) -> None:
        """With packing, no training-time KV cache (transformers only reads packed position ids into
        a block-diagonal mask when no cache is passed)."""
        if self.options.packing:
            config.use_cache = False

    # ------------------------------------------------------------------ data
    def _encode(self, row: dict[str, Any], index: int, tokenizer: Any, training: bool) -> dict[str, Any]:
        from adaptkit_tasks.chat_templates import render_pieces
        from adaptkit_tasks.instruct_formats import row_messages
        from adaptkit_tasks.masking import encode_pieces, encode_prompt, encode_text

        opts = self.options
        where = f"row {index + 1}"
        if opts.format == "text":
            text = row.get(opts.text_column)
            if text is None or isinstance(text, (list, dict)):
                raise DataError(f"{where}: {opts.text_column} must be text")
            end = [end_token(tokenizer)] if end_token(tokenizer) is not None else []
            return encode_text(tokenizer, str(text), opts.max_length, start_tokens(tokenizer), end)
        messages, answered = row_messages(row, opts, where)
        try:
            pieces = render_pieces(tokenizer, messages)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if not answered:
            return encode_prompt(tokenizer, pieces, opts.max_length)
        return encode_pieces(tokenizer, pieces, opts.max_length, opts.train_on_inputs and training)

    def preprocess(self, dataset, tokenizer):
        from adaptkit_tasks.packing import pack_table

        training = dataset is getattr(self, "_train", None)
        if training and self.options.format != "text" and len(dataset):
            self._check_render_cost(dataset[0], tokenizer)
        encoded = dataset.map(lambda row, index: self._encode(row, index, tokenizer, training), with_indices=True,
                              remove_columns=dataset.column_names, desc="tokenizing")
        learnt = [any(label != -100 for label in labels) for labels in encoded["labels"]]
        if training:
            encoded = self._drop_rows_without_answers(dataset, encoded, learnt)
            if self.options.packing:
                encoded = pack_table(encoded, self.options.max_length)
        else:
            self._check_scorable(dataset, learnt)
        return encoded

    def _check_render_cost(self, row: dict[str, Any], tokenizer: Any) -> None:
        """The template rendered on the first training row under bounds (``render_cost_problem``):
        ``validate`` tried it on a sample conversation, but a template may loop over a real row's
        content; one bounded render here turns a silent hang of tokenizing into an error."""
        from adaptkit_tasks.chat_templates import render_cost_problem
        from adaptkit_tasks.instruct_formats import row_messages

        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, str):
            problem = render_cost_problem(template, row_messages(row, self.options, "row 1")[0])
            if problem:
                raise DataError(f"training row 1: {problem}")

    def _empty(self, dataset) -> list[bool]:
        """Per row, whether it holds nothing to learn by its layout: an empty text (text format)."""
        if self.options.format != "text":
            return [False] * len(dataset)
        return [not str(text or "").strip() for text in dataset[self.options.text_column]]

    def _drop_rows_without_answers(self, dataset, encoded, learnt: list[bool]):
        """Training rows with no answer token (no assistant turn, an answer max_length cuts off, an
        empty text) trained nothing without a word: they are counted, named and left out, and a
        table with none left is refused before any model is built."""
        keep = [has and not empty for has, empty in zip(learnt, self._empty(dataset))]
        dropped = [index + 1 for index, kept in enumerate(keep) if not kept]
        if len(dropped) == len(keep):
            raise DataError(f"no training row has an answer token to learn: all {len(keep)} rows end without an "
                            f"assistant turn, have an empty text, or max_length ({self.options.max_length}) cuts "
                            f"every answer off")
        if dropped:
            shown = ", ".join(map(str, dropped[:8])) + (", ..." if len(dropped) > 8 else "")
            print(f"warning: {len(dropped)} of {len(keep)} training rows have no answer token to learn (rows "
                  f"{shown}: no assistant turn, an empty text, or an answer cut off by task.max_length "
                  f"{self.options.max_length}); they are left out of training", file=sys.stderr)
            self.dropped_training_rows = len(dropped)
            encoded = encoded.select([index for index, kept in enumerate(keep) if kept])
        return encoded

    def _check_scorable(self, dataset, learnt: list[bool]) -> None:
        """Eval rows hold answers, but max_length may cut every one off: the eval loss was then a
        mean over no tokens, ``token_loss nan`` with exit 0 and NaN in metrics.json and the card.
        Refused here, before training. (Rows without answers are questions for ``predict``.)"""
        from adaptkit_tasks.instruct_formats import row_messages

        if self.options.format == "text":
            answered = [not empty for empty in self._empty(dataset)]
        else:
            answered = [row_messages(row, self.options, f"row {index + 1}")[1] for index, row in enumerate(dataset)]
        if any(answered) and not any(has for has, asks in zip(learnt, answered) if asks):
            raise DataError(f"no evaluation row has an answer token left to score: task.max_length "
                            f"({self.options.max_length}) cuts off the answer of all {sum(answered)} eval rows "
                            f"that have one; raise task.max_length or shorten the prompts")

    def collate(self, tokenizer):
        from adaptkit_tasks.packing import collate_fn

        return collate_fn(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)

    # ------------------------------------------------------------------ predict
    def predict_batch(self, model, batch) -> list[str]:
        """Each row's answer, generated for the whole batch at once from left-padded prompts."""
        from adaptkit_tasks.chat_templates import stop_ids
        from adaptkit_tasks.generation import generate

        tokenizer = self._tokenizer
        lengths = getattr(batch, "prompt_lengths", None) or batch["attention_mask"].sum(dim=1).tolist()
        prompts = [batch["input_ids"][i, :n].tolist() for i, n in enumerate(lengths)]
        opts = self.options
        return generate(model, tokenizer, prompts, opts.max_new_tokens, stop_ids(tokenizer),
                        temperature=opts.temperature, top_p=opts.top_p, pad_id=tokenizer.pad_token_id)
