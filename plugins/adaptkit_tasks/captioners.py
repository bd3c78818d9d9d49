"""What differs between the captioning architectures ``image_to_text`` trains, chosen by ``config.model_type``.

Two families caption an image with the same data, loss and metrics, and differ in plumbing only:

- ``vision-encoder-decoder`` (``VisionEncoderDecoderModel``: a ViT encoder and a GPT-2 or BERT
  decoder): the decoder reads ``decoder_input_ids`` (the start token, then the caption shifted
  right) and scores ``labels`` (the caption) position for position; ``generate`` takes its ids as
  arguments.
- ``blip`` (``BlipForConditionalGeneration``, what ``AutoModelForImageTextToText`` maps it to):
  the text decoder reads ``input_ids`` (the start token, then the caption) and shifts the labels
  itself (``labels`` is the same sequence, the start position ignored); its ``generate`` passes
  the text config's ``sep_token_id`` and ``pad_token_id`` to the decoder itself, so those go into
  the config, never into the ``generate`` call (a second value is a TypeError).

The task asks its ``Captioner`` instead of testing the family itself, so a third family is one
more class here. Other image-text-to-text models (LLaVA, Idefics, PaliGemma, ...) answer a text
prompt about the image with a chat template: a different task, refused by name.
"""
from __future__ import annotations

from typing import Any, Optional

from adaptkit_tasks.captions import IGNORE


class Captioner:
    """The encoder-decoder layout (``VisionEncoderDecoderModel``); subclasses change what differs."""

    model_type = "vision-encoder-decoder"
    model_class = "VisionEncoderDecoderModel"
    vision_config = "encoder"  # the attribute of the config holding the image encoder's config
    text_config = "decoder"  # ... and the text decoder's
    # ``generate`` arguments this family sets itself from its config; they are left out of the call.
    fixed_generate_arguments: tuple[str, ...] = ()

    def vision(self, config: Any) -> Any:
        return getattr(config, self.vision_config, None)

    def text(self, config: Any) -> Any:
        return getattr(config, self.text_config, None)

    def prepare(self, config: Any) -> None:
        """What the architecture needs whatever the tokenizer: a GPT-2 or BERT decoder attends to the image."""
        decoder = self.text(config)
        decoder.is_decoder = True
        decoder.add_cross_attention = True

    def fitted_text(self, config: Any, vocabulary: Optional[int]) -> Any:
        """The text config, its vocabulary widened to hold the tokenizer's (``vocabulary``: a model built
        from a config) where it is smaller; every family's ``configure`` starts here."""
        text = self.text(config)
        if vocabulary and getattr(text, "vocab_size", 0) < vocabulary:
            text.vocab_size = vocabulary
        return text

    def configure(self, config: Any, start: int, end: Optional[int], pad: Optional[int],
                  vocabulary: Optional[int]) -> None:
        """Write the tokenizer's ids (and, for a model built from a config, a vocabulary the tokenizer
        fits in: ``vocabulary``) into ``config``."""
        decoder = self.fitted_text(config, vocabulary)
        config.pad_token_id = pad
        config.decoder_start_token_id = start
        config.eos_token_id = end
        decoder.pad_token_id = pad

    def build(self, config: Any) -> Any:
        """A model from ``config`` with random weights (``VisionEncoderDecoderModel`` has no ``from_config``)."""
        import transformers

        return getattr(transformers, self.model_class)(config)

    def batch(self, pixels: Any, labels: Optional[Any], start: int, pad: int) -> dict[str, Any]:
        """The model's inputs: ``labels`` are the captions' ids padded with -100 (None: unlabelled rows,
        which get the start token alone)."""
        import torch

        rows = pixels.shape[0]
        starts = torch.full((rows, 1), start, dtype=torch.long)
        if labels is None:
            return {"pixel_values": pixels, "decoder_input_ids": starts}
        inputs = torch.cat([starts, labels[:, :-1]], dim=1)
        return {"pixel_values": pixels, "decoder_input_ids": inputs.masked_fill(inputs == IGNORE, pad),
                "labels": labels}

    def scored(self, logits: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """(logits, caption ids) aligned position for position: what each caption token was predicted from."""
        labels = batch["labels"]
        return logits[:, -labels.shape[1]:, :], labels

    def generate_arguments(self, settings: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in settings.items() if k not in self.fixed_generate_arguments}

    def encoder(self, model: Any) -> Any:
        """The image encoder module (what ``advise``'s probe reads)."""
        return model.get_encoder() if hasattr(model, "get_encoder") else model.encoder

    def generate_call(self) -> str:
        """The plain transformers call that writes the captions ``adaptkit predict`` writes (model card)."""
        return "model.generate(pixel_values=pixel_values)"


class BlipCaptioner(Captioner):
    """BLIP's captioner: a ViT-style image encoder (``vision_model``) and a BERT-style text decoder
    with cross-attention (``text_decoder``)."""

    model_type = "blip"
    model_class = "BlipForConditionalGeneration"
    vision_config = "vision_config"
    text_config = "text_config"
    # BlipForConditionalGeneration.generate passes these to its text decoder from the text config.
    fixed_generate_arguments = ("eos_token_id", "pad_token_id", "bos_token_id", "decoder_start_token_id")

    def prepare(self, config: Any) -> None:
        """Nothing: BLIP's text decoder is built as a decoder with cross-attention."""

    def configure(self, config: Any, start: int, end: Optional[int], pad: Optional[int],
                  vocabulary: Optional[int]) -> None:
        """BLIP starts a caption with the text config's ``bos_token_id`` and stops generating at its
        ``sep_token_id`` (transformers hard-codes both in ``generate``): both become the tokenizer's."""
        text = self.fitted_text(config, vocabulary)
        text.bos_token_id = start
        text.sep_token_id = end
        text.eos_token_id = end
        text.pad_token_id = pad

    def build(self, config: Any) -> Any:
        import transformers

        return transformers.AutoModelForImageTextToText.from_config(config)

    def batch(self, pixels: Any, labels: Optional[Any], start: int, pad: int) -> dict[str, Any]:
        """``input_ids`` = the start token and the caption; ``labels`` the same ids with the start and
        the padding ignored (BLIP shifts them: position i is predicted from the tokens before it)."""
        import torch

        rows = pixels.shape[0]
        starts = torch.full((rows, 1), start, dtype=torch.long)
        if labels is None:
            return {"pixel_values": pixels, "input_ids": starts, "attention_mask": torch.ones_like(starts)}
        ignored = torch.full((rows, 1), IGNORE, dtype=torch.long)
        shifted = torch.cat([ignored, labels], dim=1)
        inputs = torch.cat([starts, labels], dim=1)
        return {"pixel_values": pixels, "input_ids": inputs.masked_fill(inputs == IGNORE, pad),
                "attention_mask": (shifted != IGNORE).long().index_fill(1, torch.tensor([0]), 1), "labels": shifted}

    def scored(self, logits: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        return logits[:, :-1, :], batch["labels"][:, 1:]

    def encoder(self, model: Any) -> Any:
        return model.vision_model

    def generate_call(self) -> str:
        """BlipForConditionalGeneration.generate hands its text decoder the decoder's own generation
        settings, not the model's ``generation_config.json``: they must be passed."""
        return "model.generate(pixel_values=pixel_values, generation_config=model.generation_config)"


CAPTIONERS: dict[str, Captioner] = {c.model_type: c for c in (Captioner(), BlipCaptioner())}


def captioner_for(model_type: Optional[str]) -> Captioner:
    """The captioner of ``model_type``; any other family is refused with what is supported, and an
    image-text-to-text chat model is named as such."""
    if model_type in CAPTIONERS:
        return CAPTIONERS[model_type]
    from adaptkit import ModelSourceError

    supported = ", ".join(CAPTIONERS)
    why = ""
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES as mapping
    except ImportError:  # pragma: no cover - an older transformers
        mapping = {}
    if model_type in mapping:
        why = (f" ({mapping[model_type]} answers a text prompt about an image, with a chat template: "
               f"train it with a prompted task, not image captioning)")
    raise ModelSourceError(f"task image_to_text trains captioners whose model_type is one of {supported} (a ViT "
                           f"encoder with a GPT-2 or BERT decoder; BLIP's BlipForConditionalGeneration); this model "
                           f"is {model_type!r}{why}")
