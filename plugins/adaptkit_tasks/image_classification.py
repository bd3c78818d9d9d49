"""Image classification: one label per image, from an image folder or an image column.

``data.train`` may be a folder with one sub-folder per class (datasets' ``imagefolder``)
or a table whose image column holds file paths (absolute, or relative to the working
directory) or decoded images. Pixels go through the model folder's image processor when it
has one; a model built from a config has none, so a plain resize/rescale/normalize from the
config's ``image_size`` stands in (the same steps, written as a ViT processor config, so the
saved run reloads it with ``AutoImageProcessor``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from pydantic import Field

from adaptkit import Task, TaskOptions, write_label_maps
from adaptkit_tasks.metrics import macro_f1


class ImageClassificationOptions(TaskOptions):
    image_column: str = Field("image", description="Column holding the image (a decoded image or a file path).")
    label_column: str = Field("label", description="Column holding the class (a name, or a folder's class).")
    labels: Optional[list[Union[str, int]]] = Field(
        None, description="The class set, in order; from the folder names or the sorted training labels when absent.")
    image_size: Optional[int] = Field(
        None, gt=0, description="Side of the square model input when the model has no image processor; "
                                "defaults to the model config's image_size.")


def open_image(value: Any):
    """An RGB PIL image from whatever a datasets image column holds."""
    from PIL import Image

    if isinstance(value, dict):  # datasets' undecoded form: {"bytes": ..., "path": ...}
        if value.get("bytes"):
            import io

            value = Image.open(io.BytesIO(value["bytes"]))
        else:
            value = value["path"]
    if isinstance(value, (str, Path)):
        value = Image.open(Path(value))
    return value.convert("RGB")


def simple_processor(image_size: int):
    """Resize to a square, rescale to [0, 1], normalize to [-1, 1]: what ViT checkpoints use."""
    try:  # transformers without torchvision offers the PIL backend under this name
        from transformers import ViTImageProcessorPil as Processor
    except ImportError:  # pragma: no cover - older transformers
        from transformers import ViTImageProcessor as Processor
    return Processor(do_resize=True, size={"height": image_size, "width": image_size}, do_rescale=True,
                     do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


class ImageClassification(Task):
    """Classify each image into one of the labels (top-1 accuracy and macro-F1)."""

    name = "image_classification"
    model_class = "AutoModelForImageClassification"
    head_names = ("classifier", "head")
    Options = ImageClassificationOptions
    peft_task_type = None  # peft has no image task type; a plain PeftModel forwards pixel_values
    primary_metric = "accuracy"
    metric_names = ("loss", "accuracy", "macro_f1")
    greater_is_better = True
    needs_tokenizer = False
    pipeline_tag = "image-classification"

    def __init__(self, options=None):
        super().__init__(options)
        self.labels: list[str] = [str(label) for label in self.options.labels] if self.options.labels else []

    # ------------------------------------------------------------------ data
    def label_column(self) -> Optional[str]:
        return self.options.label_column

    def declared_labels(self) -> Optional[list[str]]:
        return [str(label) for label in self.options.labels] if self.options.labels else None

    def required_columns(self) -> list[str]:
        return [self.options.image_column, self.options.label_column]

    def _names(self, dataset) -> Optional[list[str]]:
        """Class names a ClassLabel column carries (imagefolder's sub-folder names)."""
        feature = dataset.features.get(self.options.label_column)
        return list(feature.names) if hasattr(feature, "names") else None

    def setup(self, train) -> None:
        from adaptkit import DataError

        if self.labels:
            return
        names = self._names(train)
        if names is not None:
            self.labels = names
        else:
            self.labels = sorted({str(v) for v in train[self.options.label_column] if v is not None})
        if len(self.labels) < 2:
            raise DataError(f"column {self.options.label_column!r} has {len(self.labels)} class(es); "
                            f"classification needs at least two")

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = list(state["labels"])

    def load_processor(self, recipe, source):
        """The model folder's image processor, else a plain one sized from the model config."""
        from transformers import AutoImageProcessor

        from adaptkit import load_config, resolve_model_source

        section = recipe.model
        if section.tokenizer is not None and Path(section.tokenizer).is_dir():
            found: Optional[tuple[str, bool]] = (section.tokenizer, True)  # e.g. a saved run's processor
        elif section.tokenizer is not None:
            resolved = resolve_model_source(section.tokenizer, section.revision, section.allow_pickle)
            found = (resolved.location, resolved.local_files_only)
        else:
            found = (source.location, source.local_files_only) if source else None
        if found is not None:
            try:
                return AutoImageProcessor.from_pretrained(found[0], revision=section.revision,
                                                          trust_remote_code=section.trust_remote_code,
                                                          local_files_only=found[1])
            except (OSError, ValueError):
                pass  # no preprocessor_config.json: fall back to the config's size
        size = self.options.image_size or getattr(load_config(recipe, source), "image_size", None)
        if not size:
            from adaptkit import ModelSourceError

            raise ModelSourceError("the model has no image processor and its config no image_size; "
                                   "set task.image_size")
        return simple_processor(int(size[0] if isinstance(size, (list, tuple)) else size))

    def preprocess(self, dataset, processor):
        """Pixel values per image (stored by datasets' cache), and the class index when known."""
        from adaptkit import DataError

        opts = self.options
        index = {label: i for i, label in enumerate(self.labels)}
        names = self._names(dataset)
        has_labels = opts.label_column in dataset.column_names

        def encode(batch, indices):
            try:
                images = [open_image(value) for value in batch[opts.image_column]]
            except (OSError, ValueError) as exc:
                raise DataError(f"rows {indices[0] + 1}-{indices[-1] + 1}: cannot open an image: {exc}") from None
            encoded = {"pixel_values": processor(images, return_tensors="np")["pixel_values"]}
            if has_labels:
                labels = []
                for row, value in zip(indices, batch[opts.label_column]):
                    name = names[value] if names is not None and isinstance(value, int) else str(value)
                    if name not in index:
                        raise DataError(f"row {row + 1}: label {name!r} is not in the label set {self.labels}")
                    labels.append(index[name])
                encoded["labels"] = labels
            return encoded

        return dataset.map(encode, batched=True, batch_size=64, with_indices=True,
                           remove_columns=dataset.column_names, desc="preparing images")

    def collate(self, processor):
        import torch

        def collate(rows):
            batch = {"pixel_values": torch.stack([torch.as_tensor(row["pixel_values"], dtype=torch.float32)
                                                  for row in rows])}
            if all("labels" in row for row in rows):
                batch["labels"] = torch.tensor([row["labels"] for row in rows], dtype=torch.long)
            return batch

        return collate

    # ------------------------------------------------------------------ model
    def configure_model(self, config: Any) -> None:
        write_label_maps(config, self.labels, "single_label_classification")

    def load_arguments(self) -> dict[str, Any]:
        """A checkpoint trained on another label set (ImageNet's 1000) gets a fresh head."""
        return {"ignore_mismatched_sizes": True}

    # ------------------------------------------------------------------ metrics
    def compute_metrics(self, logits, labels) -> dict[str, float]:
        import torch

        predicted = logits.argmax(dim=-1)
        return {"loss": float(torch.nn.functional.cross_entropy(logits.float(), labels.long())),
                "accuracy": float((predicted == labels).float().mean()),
                "macro_f1": macro_f1(predicted, labels, len(self.labels))}

    def predict_rows(self, logits) -> list[dict[str, Any]]:
        import torch

        probabilities = torch.softmax(logits, dim=-1)
        return [{"label": self.labels[i], "score": round(float(probabilities[r, i]), 6)}
                for r, i in enumerate(logits.argmax(dim=-1).tolist())]
