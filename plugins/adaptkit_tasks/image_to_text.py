"""Image captioning: an image encoder and a text decoder learn to write the captions of images.

The model is what ``AutoModelForImageTextToText`` maps the config's ``model_type`` to, among the
captioners ``adaptkit_tasks.captioners`` knows: ``vision-encoder-decoder`` (``VisionEncoderDecoderModel``,
e.g. ViT + GPT-2) and ``blip`` (``BlipForConditionalGeneration``). The class follows the config, never
a recipe flag; what differs between the two (input names, label alignment, generation ids) is the
captioner's.

Data: a table (CSV, TSV, JSONL) whose image column holds file paths (absolute, or relative to
``task.image_folder``) and whose caption column holds the caption; an image with several captions
has several rows, or in JSONL one row with a list. (A bare image folder has no captions: adaptkit
reads a folder as classes, so ``setup`` refuses it for lack of the caption column.) Every
(image, caption) pair is one training row; the loss is
the decoder's cross-entropy on the caption tokens and its end token only (padding is -100; the
start token is an input, never a label).

Evaluation generates a caption per image (greedy, or ``num_beams``) and scores it against all of
that image's references: BLEU and chrF (sacrebleu), ROUGE-L (rouge-score), CIDEr, exact match
(``adaptkit_tasks.generation_metrics``), with the token loss. ``predict`` writes one caption per
image with the same generation settings, which ``build_model`` also writes into the model's
``generation_config``: the export generates the same captions with a plain ``model.generate`` (BLIP's
with ``generation_config=model.generation_config``: its ``generate`` reads its text decoder's settings).

The processor is transformers' ``VisionTextDualEncoderProcessor`` (an image processor and a
tokenizer in one folder, saved with ``save_pretrained`` and reloaded from it by ``predict``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from pydantic import Field, PositiveInt

from adaptkit import DataError, Task, TaskOptions
from adaptkit_tasks.captioners import Captioner, captioner_for


class ImageToTextOptions(TaskOptions):
    image_column: str = Field("image", description="Column holding the image (a file path or a decoded image).")
    caption_column: str = Field(
        "caption", description="Column holding the caption (a text; in JSONL also a list of captions).")
    image_folder: Optional[str] = Field(
        None, description="Folder relative image paths are read from (itself relative to the recipe's folder); "
                          "default: the working directory.")
    max_length: PositiveInt = Field(48, description="Caption tokens kept per row (the end token included).")
    max_new_tokens: PositiveInt = Field(32, description="Tokens generated per caption at most (eval and predict).")
    num_beams: PositiveInt = Field(1, description="Beam search width for generation; 1 decodes greedily.")
    image_size: Optional[int] = Field(
        None, gt=0, description="Side of the square input image when the model folder has no image processor; "
                                "defaults to the encoder config's image_size.")


class ImageToText(Task):
    """Caption images with a vision encoder-decoder (ViT + GPT-2 / BERT decoder) or BLIP."""

    name = "image_to_text"
    description = "Image captioning: a vision encoder-decoder or BLIP learns captions; BLEU, ROUGE-L, CIDEr generated."
    Options = ImageToTextOptions
    model_class = "AutoModelForImageTextToText"  # resolves the config's model_type (build_model)
    peft_task_type = None  # peft's SEQ_2_SEQ_LM wrapper expects input_ids; a plain PeftModel forwards pixel_values
    pipeline_tag = "image-to-text"
    primary_metric = "bleu"
    greater_is_better = True
    metric_names = ("token_loss", "bleu", "chrf", "rougeL", "cider", "exact_match")
    families = ("vision-encoder-decoder", "blip")  # the conformance kit's tiny ViT + GPT-2, and tiny BLIP
    # No head_names: the decoder's lm_head follows the vocabulary, not the task.

    def __init__(self, options=None):
        super().__init__(options)
        self.folder: Optional[Path] = None
        self._processor: Any = None
        self._from_config = False
        self._captioner: Optional[Captioner] = None

    def captioner(self, config: Any = None) -> Captioner:
        """The captioning family of the model (``config.model_type``), known once the processor or the
        model was loaded."""
        if config is not None:
            self._captioner = captioner_for(getattr(config, "model_type", None))
        if self._captioner is None:
            raise RuntimeError("image_to_text: the model's family is known once load_processor or build_model ran")
        return self._captioner

    # ------------------------------------------------------------------ data
    def required_columns(self) -> list[str]:
        return [self.options.image_column]

    def target_columns(self) -> list[str]:
        return [self.options.caption_column]

    def text_columns(self) -> list[str]:
        """None: the input is an image, and captions repeat by design (several per image, or one
        sentence for many images), so advise's duplicate-text counts would only raise false alarms."""
        return []

    def sequence_length(self) -> Optional[int]:
        return self.options.max_length

    def row_problem(self, row: dict[str, Any]) -> Optional[str]:
        """An empty image cell, an empty caption, or (where the folder is known) a missing image file:
        ``validate`` and the run's start name the file and line."""
        from adaptkit_tasks.captions import caption_problem, resolve_image

        opts = self.options
        image = row.get(opts.image_column)
        if image is None or (isinstance(image, str) and not image.strip()):
            return f"{opts.image_column} is empty: each row needs an image"
        if opts.caption_column in row:
            problem = caption_problem(row[opts.caption_column])
            if problem:
                return f"{opts.caption_column}: {problem}"
        folder = self.folder or (Path(opts.image_folder) if opts.image_folder else None)
        if isinstance(image, str) and (folder is None or folder.is_absolute()):
            path = resolve_image(image, folder)
            if not path.is_file():
                return f"{opts.image_column}: image file {image!r} not found (looked in {path.parent})"
        return None

    def setup(self, train) -> None:
        if self.options.caption_column not in train.column_names:
            raise DataError(f"the training data lacks the caption column {self.options.caption_column!r} "
                            f"(columns: {', '.join(train.column_names)}); set task.caption_column")

    def state(self) -> dict[str, Any]:
        """The image folder, resolved: ``predict`` reads relative paths from it wherever it runs."""
        return {"image_folder": str(self.folder) if self.folder else None}

    def load_state(self, state: dict[str, Any]) -> None:
        self.folder = Path(state["image_folder"]) if state.get("image_folder") else None

    def load_processor(self, recipe, source):
        """The run's saved processor, else the model's tokenizer with its image processor (a plain
        resize/normalise from the encoder config's image_size when the folder has none)."""
        from transformers import AutoImageProcessor, VisionTextDualEncoderProcessor

        from adaptkit import load_config
        from adaptkit_tasks.image_classification import simple_processor

        opts = self.options
        if self.folder is None and opts.image_folder:
            base = recipe.base_dir() if hasattr(recipe, "base_dir") else Path.cwd()
            folder = Path(opts.image_folder).expanduser()
            self.folder = (folder if folder.is_absolute() else base / folder).resolve()
        section = recipe.model
        config = load_config(recipe, source)
        family = self.captioner(config)  # refuses a model that is no captioner before anything is read
        if section.tokenizer is not None and (Path(section.tokenizer) / "processor_config.json").is_file():
            self._processor = VisionTextDualEncoderProcessor.from_pretrained(section.tokenizer)
            return self._processor
        tokenizer = super().load_processor(recipe, source)
        image_processor = None
        if source is not None:
            try:
                image_processor = AutoImageProcessor.from_pretrained(source.location, revision=section.revision,
                                                                     local_files_only=source.local_files_only)
            except (OSError, ValueError):
                image_processor = None  # no preprocessor_config.json: sized from the config below
        if image_processor is None:
            size = opts.image_size or getattr(family.vision(config) or config, "image_size", None)
            if not size:
                from adaptkit import ModelSourceError

                raise ModelSourceError("the model has no image processor and its encoder config no image_size; "
                                       "set task.image_size")
            image_processor = simple_processor(int(size[0] if isinstance(size, (list, tuple)) else size))
        self._processor = VisionTextDualEncoderProcessor(image_processor=image_processor, tokenizer=tokenizer)
        return self._processor

    def preprocess(self, dataset, processor):
        """Pixel values and caption labels: one row per (image, caption); rows without a caption
        (``predict``'s) keep one row per image. An image is read once per row that names it."""
        import datasets

        from adaptkit_tasks.captions import caption_labels, caption_problem, captions_of, resolve_image
        from adaptkit_tasks.image_classification import open_image

        opts = self.options
        tokenizer, images = processor.tokenizer, processor.image_processor
        end = self.end_id(tokenizer)
        labelled = opts.caption_column in dataset.column_names
        if isinstance(dataset.features.get(opts.image_column), datasets.Image):
            dataset = dataset.cast_column(opts.image_column, datasets.Image(decode=False))  # read below, once

        def encode(batch, indices):
            pixels, labels = [], []
            cells = batch[opts.caption_column] if labelled else [None] * len(indices)
            for row, value, cell in zip(indices, batch[opts.image_column], cells):
                where = f"row {row + 1}"
                try:
                    picture = open_image(resolve_image(value, self.folder))
                except (OSError, ValueError, AttributeError) as exc:
                    shown = value.get("path") if isinstance(value, dict) else value
                    raise DataError(f"{where}: cannot open image {shown!r}: {exc}") from None
                array = images(picture, return_tensors="np")["pixel_values"][0]
                if not labelled:
                    pixels.append(array)
                    continue
                problem = caption_problem(cell)
                if problem:
                    raise DataError(f"{where}: {opts.caption_column}: {problem}")
                for caption in captions_of(cell):
                    pixels.append(array)
                    labels.append(caption_labels(tokenizer, caption.strip(), opts.max_length, end))
            encoded = {"pixel_values": pixels}
            if labelled:
                encoded["labels"] = labels
            return encoded

        return dataset.map(encode, batched=True, batch_size=32, with_indices=True,
                           remove_columns=dataset.column_names, desc="preparing images and captions")

    def collate(self, processor):
        """Pixels, labels padded with -100, and the decoder's inputs (the start token, then the labels
        shifted right, padding as pad): every batch is one the model runs on without its labels too
        (the contract's output checks, ``advise``); an unlabelled batch holds the start token alone."""
        import torch

        from adaptkit_tasks.padding import IGNORE, right_padded

        start = self.start_id(processor.tokenizer)
        pad = processor.tokenizer.pad_token_id
        pad = pad if pad is not None else self.end_id(processor.tokenizer)
        family = self.captioner()

        def collate(rows):
            pixels = torch.stack([torch.as_tensor(row["pixel_values"], dtype=torch.float32) for row in rows])
            labels = (right_padded([row["labels"] for row in rows], IGNORE)
                      if all("labels" in row for row in rows) else None)
            return family.batch(pixels, labels, start, pad)

        return collate

    # ------------------------------------------------------------------ model
    @staticmethod
    def end_id(tokenizer: Any) -> Optional[int]:
        """The token a caption ends with: eos, else [SEP] (a BERT WordPiece tokenizer)."""
        from adaptkit_tasks.special_tokens import end_token

        return end_token(tokenizer)

    @staticmethod
    def start_id(tokenizer: Any) -> int:
        """The decoder's first input: bos, else [CLS], else the end token (GPT-2's bos is its eos)."""
        for name in ("bos_token_id", "cls_token_id", "eos_token_id", "sep_token_id"):
            value = getattr(tokenizer, name, None)
            if value is not None:
                return int(value)
        raise DataError("the tokenizer has no bos, cls, eos or sep token to start a caption with")

    def configure_model(self, config: Any) -> None:
        """The decoder attends to the image (cross-attention) and the generation ids come from the
        tokenizer; a decoder built from a config gets a vocabulary the tokenizer fits in."""
        family = self.captioner(config)
        family.prepare(config)
        tokenizer = getattr(self._processor, "tokenizer", None)
        if tokenizer is None:
            return
        end = self.end_id(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        family.configure(config, self.start_id(tokenizer), end, pad, len(tokenizer) if self._from_config else None)

    def build_model(self, source: str, config: Any, from_config: bool, **kwargs: Any):
        """``AutoModelForImageTextToText`` from a checkpoint (it picks the class from the config); from a
        config, the captioner builds it (``VisionEncoderDecoderModel`` has no ``from_config``)."""
        self._from_config = from_config
        if not from_config:
            return super().build_model(source, config, from_config, **kwargs)
        self.configure_model(config)
        return self.finish_model(self.captioner().build(config), source, kwargs)

    def finish_model(self, model, source, load_kwargs):
        """The generation settings go into ``generation_config``, which the export saves: a plain
        ``model.generate(pixel_values=...)`` on the export then writes what ``predict`` writes."""
        for key, value in self.generation_settings().items():
            setattr(model.generation_config, key, value)
        return model

    def card_notes(self) -> list[str]:
        """How the export writes the captions ``predict`` writes, with plain transformers."""
        if self._captioner is None:
            return []
        settings = {k: self.generation_settings()[k] for k in ("max_new_tokens", "num_beams", "do_sample")}
        shown = ", ".join(f"{k}={v}" for k, v in settings.items())
        return [f"Generation settings ({shown}) are saved in `generation_config.json`: "
                f"`{self._captioner.generate_call()}` with the processor's `pixel_values` writes the captions "
                f"`adaptkit predict` writes."]

    def generation_settings(self) -> dict[str, Any]:
        """The ``generate`` arguments of evaluation, ``predict`` and the export's generation_config."""
        tokenizer = getattr(self._processor, "tokenizer", None)
        settings: dict[str, Any] = {"max_new_tokens": self.options.max_new_tokens, "num_beams": self.options.num_beams,
                                    "do_sample": False}
        if tokenizer is not None:
            end = self.end_id(tokenizer)
            settings.update(decoder_start_token_id=self.start_id(tokenizer), bos_token_id=self.start_id(tokenizer),
                            eos_token_id=end,
                            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end)
        return settings

    def _settings_for(self, model: Any) -> dict[str, Any]:
        """``generation_settings`` with ``max_new_tokens`` capped where the decoder's positions end."""
        from adaptkit import position_limit

        family = self.captioner()
        settings = family.generate_arguments(self.generation_settings())
        inner = getattr(model, "module", model)
        config = getattr(inner, "config", None)
        decoder = family.text(config) if config is not None else None
        limit = position_limit(decoder) if decoder is not None else None
        if limit is not None:
            settings["max_new_tokens"] = max(1, min(settings["max_new_tokens"], limit - 1))
        return settings

    # ------------------------------------------------------------------ loss, metrics, predict
    def compute_loss(self, model, batch):
        """The decoder's loss on the caption tokens; in evaluation (the model in eval mode) also the
        captions generated for the batch's images, which ``batch_outputs`` keeps."""
        from types import SimpleNamespace

        from adaptkit_tasks.captions import generate_captions

        outputs = model(**batch)
        if model.training or "labels" not in batch:
            return outputs.loss, outputs
        generated = generate_captions(model, batch["pixel_values"], self._settings_for(model),
                                      self.end_id(self._processor.tokenizer))
        return outputs.loss, SimpleNamespace(loss=outputs.loss, logits=outputs.logits, generated=generated)

    def batch_outputs(self, outputs, batch):
        """Per row: its token-loss sum and count, its reference caption ids, its image's fingerprint
        and (in evaluation) the generated caption ids; O(rows x tokens), never the vocabulary."""
        import torch

        from adaptkit_tasks.captions import IGNORE, image_key

        logits, labels = self.captioner().scored(outputs.logits, batch)
        logits = logits.float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                   reduction="none")
        kept = {"loss_sum": losses.sum(dim=1), "tokens": (labels != IGNORE).sum(dim=1), "references": labels,
                "image": torch.tensor([image_key(row) for row in batch["pixel_values"]], dtype=torch.long)}
        generated = getattr(outputs, "generated", None)
        if generated is None:  # scores of a teacher-forced argmax would not be the captions predict writes
            raise TypeError("image_to_text scores generated captions: pass the outputs of task.compute_loss "
                            "(in eval mode), not of a bare forward pass, to batch_outputs")
        kept["generated"] = generated.to(labels.device)
        return kept

    def compute_metrics(self, loss_sum, tokens, references, image, generated) -> dict[str, float]:
        """Scores per image (its rows' references together), and the token loss over every caption token."""
        from adaptkit_tasks.captions import decode
        from adaptkit_tasks.generation_metrics import text_scores

        count = int(tokens.sum())
        if not count:
            raise DataError("the evaluation data has no caption token to score")
        tokenizer = self._processor.tokenizer
        end = self.end_id(tokenizer)
        predictions: dict[int, str] = {}
        refs: dict[int, list[str]] = {}
        for row, key in enumerate(image.tolist()):
            if key not in predictions:
                predictions[key] = decode(tokenizer, generated[row], end)
            text = decode(tokenizer, references[row], end)
            if text not in refs.setdefault(key, []):
                refs[key].append(text)
        keys = list(predictions)
        said = [predictions[k] for k in keys]
        wanted = [refs[k] for k in keys]
        scores = text_scores(said, wanted)
        metrics = {name: float(scores[name]) for name in ("bleu", "chrf", "rougeL", "cider")}
        metrics["exact_match"] = sum(s in w for s, w in zip(said, wanted)) / len(keys)
        metrics["token_loss"] = float(loss_sum.double().sum()) / count
        return metrics

    def predict_batch(self, model, batch) -> list[str]:
        """One caption per row's image, generated as evaluation generates it."""
        from adaptkit_tasks.captions import decode, generate_captions

        tokenizer = self._processor.tokenizer
        end = self.end_id(tokenizer)
        generated = generate_captions(model, batch["pixel_values"], self._settings_for(model), end)
        return [decode(tokenizer, row, end) for row in generated]

    def head_features(self, model, batch):
        """The encoder's last hidden state, mean-pooled over patches (what the decoder attends to)."""
        encoder = self.captioner().encoder(getattr(model, "module", model))
        return encoder(pixel_values=batch["pixel_values"]).last_hidden_state.mean(dim=1)

    def describe_features(self) -> Optional[str]:
        return "the image encoder's last hidden state, mean-pooled over patches"
