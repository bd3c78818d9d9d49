"""The recipe: one YAML file, validated by pydantic, with errors a person can act on.

Every error names the file, the line and the key path, and for a misspelt key or plugin
name suggests the closest valid one. Strategy and task sections are validated by the
options model of the plugin they name, so the schema grows with the installed plugins.
Nothing here imports torch: ``adaptkit validate`` answers in well under a second.
"""
from __future__ import annotations

import importlib.util
import os
import types
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional, Union, get_args, get_origin

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PositiveFloat, PrivateAttr, Tag, ValidationError,
                      create_model, field_validator, model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from adaptkit.plugin import registry as plugin_registry  # get_registry() looked up at call time (tests replace it)
from adaptkit.plugin.strategy import StrategyOptions
from adaptkit.plugin.task import TaskOptions


# The default step floor, chosen by measurement (README "Training budgets"): at 100 SST-2 rows
# LoRA and full fine-tuning of MiniLM sit at chance after 25 optimizer steps and learn by 100.
DEFAULT_MIN_STEPS = 100


# Bounds on numbers that validate but would crash a run later (issue 14, item 6). Counts (epochs,
# steps, batch sizes, rows, checkpoints) fit a signed 32-bit integer: epochs x batches then stays far
# inside what a float (the scheduler's warmup) and torch's samplers hold. A seed is what both
# torch.manual_seed and numpy.random.seed accept. More threads than any machine has cores only
# makes torch.set_num_threads fail (int32) or thrash. No recipe integer may exceed int64.
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024
MAX_INT = 2**63 - 1
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]  # pydantic's, bounded: a count a run can use
NonNegativeInt = Annotated[int, Field(ge=0, le=MAX_COUNT)]


def _accepts_bool(annotation: Any) -> bool:
    """Whether a field's type means true/false may be meant (not a number that YAML's true coerces to)."""
    if annotation is bool or annotation is Any:
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _accepts_bool(get_args(annotation)[0])
    if origin is Literal:
        return any(isinstance(arg, bool) for arg in get_args(annotation))
    if origin is Union or origin is types.UnionType:
        return any(_accepts_bool(arg) for arg in get_args(annotation) if arg is not type(None))
    return not (isinstance(annotation, type) and issubclass(annotation, (int, float)))


def _upper_bound(annotation: Any, metadata: tuple = ()) -> int:
    """The largest integer a field allows: its own ``le``/``lt`` bound, at most int64."""
    bound = MAX_INT
    for item in metadata:
        if isinstance(getattr(item, "metadata", None), list):  # a Field(...) inside Annotated[...]
            bound = min(bound, _upper_bound(Any, tuple(item.metadata)))
        for name, shift in (("le", 0), ("lt", 1)):
            limit = getattr(item, name, None)
            if isinstance(limit, int) and not isinstance(limit, bool):
                bound = min(bound, limit - shift)
    origin = get_origin(annotation)
    if origin is Annotated:
        inner, *extra = get_args(annotation)
        bound = min(bound, _upper_bound(inner, tuple(extra)))
    elif origin is Union or origin is types.UnionType:
        bound = min(bound, max(_upper_bound(arg) for arg in get_args(annotation) if arg is not type(None)))
    return bound


def number_problem(annotation: Any, value: Any, metadata: tuple = ()) -> Optional[str]:
    """Why ``value`` must not reach a field of type ``annotation``, or None.

    pydantic (lax) turns ``true`` into 1 for an int or float field, so ``epochs: true`` would run
    one epoch without a word; and an integer beyond int64 is accepted until torch or numpy
    overflow on it, mid-run.
    """
    if isinstance(value, bool):
        return None if _accepts_bool(annotation) else "expected a number, got a boolean"
    if isinstance(value, (int, float)) and abs(value) > MAX_INT:  # a float 1e300 becomes a 301-digit int too
        return f"number is too large: at most {_upper_bound(annotation, metadata):,}"
    return None


def _integer_field(annotation: Any) -> bool:
    """Whether a field's type is an integer (inside Annotated/Optional), not a float that takes ints too."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _integer_field(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return any(_integer_field(arg) for arg in get_args(annotation) if arg is not type(None))
    return annotation is int


def plugin_count_problem(annotation: Any, value: Any, metadata: tuple = ()) -> Optional[str]:
    """Why ``value`` must not reach a plugin's integer option that sets no upper bound of its own.

    A plugin declares counts with pydantic's ``PositiveInt``, which has no upper bound, while the
    README promises that counts above 2**31-1 are refused (``max_new_tokens: 2147483648`` reached
    ``generate`` and crashed in torch). An option that means more sets its own ``le=``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not _integer_field(annotation):
        return None
    if value > MAX_COUNT and _upper_bound(annotation, metadata) >= MAX_INT:
        return f"number is too large: at most {MAX_COUNT:,}"
    return None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _plain_numbers(cls, value: Any, info: Any) -> Any:
        field = cls.model_fields.get(info.field_name)
        problem = number_problem(field.annotation, value, tuple(field.metadata)) if field is not None else None
        if problem:
            raise ValueError(problem)
        return value


class ModelSection(_Section):
    """Which pretrained model to adapt (a Hub id, a local folder, or a config for tests)."""

    name: Optional[str] = Field(None, description="Hub id or local folder of the pretrained model.")
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="'random' keeps the architecture but draws fresh weights (the scratch baseline).")
    config: Optional[dict[str, Any]] = Field(
        None, description="Build from a config instead of a checkpoint: {model_type: bert, hidden_size: 32, ...}.")
    tokenizer: Optional[str] = Field(
        None, description="Tokenizer (or image processor) source; defaults to model.name.")
    revision: Optional[str] = None
    trust_remote_code: bool = Field(False, description="Run the model repository's own code. Off unless set here.")
    allow_pickle: bool = Field(False, description="Accept pickle (.bin) weights, which can run code.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "fp32", description="dtype the weights are loaded in: bf16/fp16 halve the model's memory; 'auto' keeps the "
                            "checkpoint's own dtype. fp32 (the default) trains exactly; mixed_precision is separate.")
    attn_implementation: Optional[Literal["sdpa", "eager", "flash_attention_2"]] = Field(
        None, description="Attention kernel: sdpa (torch's fused attention), eager (plain matmuls), or "
                          "flash_attention_2 (needs the flash-attn package and a CUDA GPU); default: transformers'.")
    device_map: Optional[Union[str, dict[str, Union[int, str]]]] = Field(
        None, description="Spread a model too large for one device over the GPUs (and CPU) of one process: 'auto', "
                          "'sequential', or {module: device}. Single process only; pretrained weights (model.name) only.")
    previous_adapter: Literal["merge", "keep"] = Field(
        "merge", description="When model.name is a finished adapter run: merge its adapter into the base before the "
                             "new strategy trains (merge), or load it frozen beside the new strategy's adapter (keep: "
                             "the same mergeable peft method, and no task head trained by both runs).")

    @field_validator("attn_implementation")
    @classmethod
    def _kernel_installed(cls, value: Optional[str]) -> Optional[str]:
        if value == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("flash_attention_2 needs the flash-attn package, which is not installed (pip install "
                             "flash-attn, CUDA GPUs only); use sdpa, torch's fused attention, instead")
        return value

    @model_validator(mode="after")
    def _needs_a_source(self) -> "ModelSection":
        if self.name is None and self.config is None:
            raise ValueError("give model.name (a Hub id or folder) or model.config (a config to build from)")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("model.config needs a 'model_type' key (e.g. bert, gpt2, llama, vit)")
        if self.device_map is not None and (self.config is not None or self.init == "random"):
            raise ValueError("model.device_map places pretrained weights as they load; a model built from "
                             "model.config or with init: random has none to place: remove device_map")
        return self


class DataSource(_Section):
    """One dataset of ``data.train``/``data.eval`` given as a mapping: a local file (``path``) or a dataset
    ``datasets.load_dataset`` takes by ``name`` (a Hub id, or a local dataset folder), with its weight in a mixture."""

    path: Optional[Path] = Field(None, description="Local data file (CSV, TSV, JSON, JSONL or Parquet) or image "
                                                   "folder, as a plain data.train path; relative to the recipe file.")
    name: Optional[str] = Field(None, description="A dataset datasets.load_dataset takes: a Hub id (owner/name), "
                                                  "read from the local cache when offline, or a local dataset folder "
                                                  "(data files, optionally a README.md with configs).")
    config: Optional[str] = Field(None, description="The dataset's configuration (subset), for name.")
    split: Optional[str] = Field(None, description="Split of name to read (slices such as train[:1000] too); "
                                                   "default 'train' in data.train, required in data.eval.")
    field: Optional[str] = Field(None, description="JSON key that holds the list of rows (nested JSON), for name or "
                                                   "a .json path.")
    revision: Optional[str] = Field(None, description="Hub branch, tag or commit of name.")
    weight: Optional[PositiveFloat] = Field(
        None, description="Share of the training rows drawn from this source in a mixture (weights are normalised; "
                          "without weights each source counts with its size).")
    columns: dict[str, str] = Field(default_factory=dict, description="Rename this source's columns before "
                                                                      "data.columns applies: {name_here: name_wanted}.")

    @model_validator(mode="after")
    def _one_place(self) -> "DataSource":
        if (self.path is None) == (self.name is None):
            raise ValueError("give either path (a local file or folder) or name (a dataset datasets can load: "
                             "a Hub id or a dataset folder), not both" if self.path is not None else
                             "give path (a local file or folder) or name (a dataset datasets can load: a Hub id "
                             "or a dataset folder)")
        if self.path is not None:
            given = [key for key in ("config", "split", "revision") if getattr(self, key) is not None]
            if given:
                raise ValueError(f"{', '.join(given)} only appl{'y' if len(given) > 1 else 'ies'} to a dataset given by name; a local file is one "
                                 f"split (give another file, or name a dataset folder)")
            if self.field is not None and self.path.suffix.lower() != ".json":
                raise ValueError(f"field picks the list of rows inside a .json file (or a named dataset), not a "
                                 f"{self.path.suffix or 'suffix-less'} file")
        return self

    def resolved(self, base: Path) -> dict[str, Any]:
        """This source as a run records it: a local path or dataset folder made absolute."""
        data = self.model_dump(mode="json")
        if self.path is not None:
            data["path"] = str(self.path if self.path.is_absolute() else base / self.path)
        elif local_dataset_dir(self.name, base) is not None:
            data["name"] = str(local_dataset_dir(self.name, base))
        return data


def local_dataset_dir(name: str, base: Path) -> Optional[Path]:
    """The folder a source's ``name`` means when one exists (relative to ``base``), else None: a Hub id.

    ``datasets.load_dataset`` itself prefers an existing local folder over a Hub id of the same spelling.
    """
    candidate = Path(name).expanduser()
    candidate = candidate if candidate.is_absolute() else base / candidate
    return candidate if candidate.is_dir() else None


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a folder (./x, /x, ~/x, a/b/c), never a Hub id (owner/name)."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name


def _data_kind(value: Any) -> str:
    return "mixture" if isinstance(value, list) else "source" if isinstance(value, (dict, DataSource)) else "path"


_DATA_TAGS = ("path", "source", "mixture")
TrainData = Annotated[Union[Annotated[Path, Tag("path")], Annotated[DataSource, Tag("source")],
                            Annotated[list[DataSource], Tag("mixture")]], Discriminator(_data_kind)]
EvalData = Annotated[Union[Annotated[Path, Tag("path")], Annotated[DataSource, Tag("source")]],
                     Discriminator(_data_kind)]


class DataSection(_Section):
    """Where the examples are; paths are relative to the recipe file."""

    train: TrainData = Field(
        description="Training file (CSV, TSV, JSON, JSONL or Parquet), or a folder of images with one sub-folder per "
                    "class; or a dataset {name, config, split, field}; or a list of them with weights (a mixture).")
    eval: Optional[EvalData] = Field(None, description="Evaluation file or folder, or a dataset {name, split, ...}; "
                                                       "when absent, split from train.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of train held out when no eval file is given.")
    validation_fraction: Optional[float] = Field(
        None, gt=0, lt=1, description="Carve this share of the training rows (stratified, seeded) into a validation "
                                      "split that picks the best epoch and drives early stopping; the eval set is "
                                      "then only scored once, at the end, never used to choose.")
    max_train_samples: Optional[PositiveInt] = Field(None, description="Use only this many training rows (seeded).")
    max_eval_samples: Optional[PositiveInt] = None
    columns: dict[str, str] = Field(default_factory=dict, description="Rename columns: {name_in_file: name_task_expects}.")

    @model_validator(mode="wrap")
    @classmethod
    def _untagged_errors(cls, data: Any, handler: Any) -> "DataSection":
        """Errors inside train/eval name the key as written (data.train.0.weight), not the union member tried."""
        try:
            section = handler(data)
        except ValidationError as exc:
            errors = []
            for error in exc.errors():
                loc = error["loc"]
                if len(loc) > 1 and loc[0] in ("train", "eval") and loc[1] in _DATA_TAGS:
                    loc = loc[:1] + loc[2:]
                errors.append(InitErrorDetails(type=PydanticCustomError(error["type"], error["msg"]), loc=loc,
                                               input=error.get("input")))
            raise ValidationError.from_exception_data(exc.title, errors) from None
        problems = section._source_problems()
        if problems:
            raise ValidationError.from_exception_data(cls.__name__, [
                InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input={})
                for loc, message in problems])
        return section

    def _source_problems(self) -> list[tuple[tuple[Any, ...], str]]:
        """(key path, why) of weights and splits that cannot mean what the recipe says."""
        problems: list[tuple[tuple[Any, ...], str]] = []
        if isinstance(self.train, DataSource) and self.train.weight is not None:
            problems.append((("train", "weight"), "weight only means something in a mixture (a list of sources)"))
        if isinstance(self.train, list):
            if not self.train:
                problems.append((("train",), "a mixture lists at least one source"))
            missing = [index for index, source in enumerate(self.train) if source.weight is None]
            if missing and len(missing) < len(self.train):
                problems.append((("train", missing[0]), "give every source of the mixture a weight, or none (then "
                                                        "each counts with its size)"))
        if isinstance(self.eval, DataSource):
            if self.eval.weight is not None:
                problems.append((("eval", "weight"), "weight only applies to the sources of a data.train mixture"))
            if self.eval.name is not None and self.eval.split is None:
                problems.append((("eval",), f"give the split of {self.eval.name!r} to evaluate on (e.g. validation "
                                            f"or test); it is never guessed, so training rows cannot become eval rows"))
        return problems

    def sources(self, key: str) -> list[DataSource]:
        """``data.train`` or ``data.eval`` as a list of sources (a plain path is one ``path`` source)."""
        value = getattr(self, key)
        if value is None:
            return []
        if isinstance(value, Path):
            return [DataSource(path=value)]
        return list(value) if isinstance(value, list) else [value]

    def resolved(self, key: str, base: Path) -> Any:
        """``data.train``/``data.eval`` as a run records it: paths absolute, the shape as written."""
        value = getattr(self, key)
        if value is None:
            return None
        if isinstance(value, Path):
            return str(value if value.is_absolute() else base / value)
        if isinstance(value, list):
            return [source.resolved(base) for source in value]
        return value.resolved(base)


class TrainingSection(_Section):
    """How to train; accelerate applies devices, precision and accumulation."""

    epochs: PositiveInt = 3
    max_steps: Optional[PositiveInt] = Field(None, description="Train exactly this many optimizer steps (overrides "
                                                              "epochs and min_steps).")
    min_steps: NonNegativeInt = Field(
        DEFAULT_MIN_STEPS, description="Small-data floor: when epochs x batches per epoch gives fewer optimizer steps "
                                       "than this, epochs are raised until it does not (0 turns the floor off).")
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt = 64
    learning_rate: Optional[PositiveFloat] = Field(None, description="Defaults to the strategy's suggestion.")
    weight_decay: float = Field(0.01, ge=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    gradient_accumulation_steps: PositiveInt = 1
    max_grad_norm: Optional[PositiveFloat] = 1.0
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = Field(
        "no", description="no (fp32), fp16 (GPU only), bf16, or auto: bf16 where the device computes it natively "
                          "(Ampere+ GPUs, CPUs with AMX), else fp32.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Seeds data order, initialisation and dropout; "
                                                        "0 to 2**32 - 1 (what torch and numpy accept).")
    group_by_length: bool = Field(True, description="Batch rows of similar length: far less padding.")
    device: Literal["auto", "cpu"] = "auto"
    num_threads: Optional[PositiveInt] = Field(None, le=MAX_THREADS,
                                               description="torch intra-op threads; default: all cores.")
    checkpoint_every_steps: Optional[NonNegativeInt] = Field(
        None, description="Write a resumable checkpoint every N optimizer steps (and at the end); "
                          "default: at the end of every epoch; 0: only at the end of the run.")
    keep_checkpoints: PositiveInt = Field(2, description="How many of the newest checkpoints to keep.")
    metric_for_best: Optional[str] = Field(
        None, description="Eval metric that picks the best epoch (e.g. accuracy, loss); default: the task's primary metric.")
    greater_is_better: Optional[bool] = Field(
        None, description="Whether a larger metric_for_best is better; default: the task says (lower for losses).")
    early_stopping_patience: Optional[PositiveInt] = Field(
        None, description="Stop after this many evaluations without improving metric_for_best.")
    load_best_at_end: bool = Field(False, description="Export the best epoch's weights instead of the last epoch's.")
    compile: bool = Field(
        False, description="torch.compile the training forward (dynamic shapes): pays on long runs only. Measured on a "
                           "2-core AMX CPU (benchmarks/step_variants.py): 128-149 s of compilation, then 1.01x eager in "
                           "fp32 and 1.17x bf16 eager; evaluation and the contract checks stay eager.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of keeping them: "
                           "activation memory drops to about one layer's, for ~30% more compute.")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw_torch", description="AdamW from torch (fused: one kernel for all parameters), or bitsandbytes' 8-bit "
                                   "AdamW (moments in 8 bits: a quarter of the optimizer memory) and its paged form.")

    @field_validator("optimizer")
    @classmethod
    def _optimizer_installed(cls, value: str) -> str:
        if value.endswith("_8bit") and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"{value} is bitsandbytes' optimizer, which is not installed: pip install "
                             f"bitsandbytes, or use adamw_torch")
        return value
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "trackio",
                            "swanlab"]] = Field(
        default_factory=list, description="accelerate trackers that get the losses, learning rate, eval metrics and "
                                          "the recipe as hyper-parameters (each must be installed); tensorboard and "
                                          "mlflow (without MLFLOW_TRACKING_URI) write into the run's logs/.")

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, value: list[str]) -> list[str]:
        modules = {"tensorboard": ("tensorboard", "tensorboardX"), "comet_ml": ("comet_ml",)}
        missing = [name for name in value
                   if not any(importlib.util.find_spec(m) for m in modules.get(name, (name,)))]
        if missing:  # accelerate would drop them with a log line nobody reads
            raise ValueError(f"tracker{'s' if len(missing) > 1 else ''} {', '.join(missing)} not installed: "
                             f"pip install {' '.join(missing)}, or remove {'them' if len(missing) > 1 else 'it'} "
                             f"from report_to")
        return value


class OutputSection(_Section):
    """Where results go; relative paths are relative to the working directory."""

    dir: Path
    merge: bool = Field(False, description="Also save the merged model (for mergeable strategies).")
    verify_export: bool = Field(True, description="Reload what was saved with peft/transformers and compare outputs.")
    push_to_hub: Optional[str] = Field(
        None, description="Hugging Face Hub repo id (owner/name) to upload the finished run to (adaptkit.engine.publish.push; "
                          "token from HF_TOKEN or `hf auth login`).")
    hub_private: bool = Field(False, description="Create the push_to_hub repo as private.")

    @field_validator("dir", mode="before")
    @classmethod
    def _writable_place(cls, value: Any) -> Any:
        if isinstance(value, (str, Path)) and str(value).startswith("~"):
            # "~/x" is the home folder's x, as a shell reads it; kept as is it became ./~/x
            expanded = os.path.expanduser(str(value))
            if expanded.startswith("~"):
                raise ValueError(f"{value!r}: cannot tell whose home folder {str(value).split('/')[0]!r} is")
            value = expanded
        if isinstance(value, (str, Path)):
            problem = output_dir_problem(str(value))
            if problem:
                raise ValueError(problem)
        return value


# Room left in a file name for what adaptkit puts beside output.dir (".adaptkit-partial-<name>-XXXXXXXX",
# ".adaptkit-old-<name>-xxxxxxxx", "<name>.checkpoints", "<name>-advice.json") within NAME_MAX (255 bytes).
_SIBLING_ROOM = 32
_VIRTUAL_FILESYSTEMS = ("/proc", "/sys", "/dev")


def output_dir_problem(text: str) -> Optional[str]:
    """Why ``text`` cannot be a run's output folder, or None; checked when the recipe is read.

    Each case used to validate and then fail or do harm at the end of a run: "" and "." are the
    working directory (the output is replaced as a whole on --overwrite), a NUL byte or an
    over-long name fails in the operating system, and /proc, /sys and /dev are kernel file
    systems where the run's files cannot be written.
    """
    if not text.strip():
        return "is empty; name a folder for the run's outputs (e.g. runs/my-run)"
    if "\x00" in text:
        return "contains a NUL character, which no file name can hold"
    encoded = os.fsencode(text)
    if len(encoded) > 4000:
        return f"is {len(encoded):,} bytes long; a path may be at most 4,000 bytes here"
    parts = Path(text).parts
    for part in parts:
        if len(os.fsencode(part)) > 255:
            return f"has a folder name of {len(os.fsencode(part)):,} bytes; at most 255 are allowed"
    if parts and len(os.fsencode(parts[-1])) > 255 - _SIBLING_ROOM:
        return (f"ends in a name of {len(os.fsencode(parts[-1])):,} bytes; at most {255 - _SIBLING_ROOM} "
                f"(adaptkit writes '<name>.checkpoints' and similar beside it)")
    resolved = Path(os.path.realpath(os.path.expanduser(text)))
    here = Path(os.path.realpath(os.getcwd()))
    if resolved == Path.home().resolve():
        return f"is your home folder ({resolved}); name a new sub-folder for the run (e.g. ~/runs/my-run)"
    if resolved == here or resolved in here.parents:
        return (f"is {'the working directory' if resolved == here else 'a folder that holds the working directory'} "
                f"({resolved}); a run writes and replaces its output folder as a whole, so name a new "
                f"sub-folder (e.g. runs/my-run)")
    for root in _VIRTUAL_FILESYSTEMS:
        if resolved == Path(root) or Path(root) in resolved.parents:
            return f"lies under {root} ({resolved}), a kernel file system where a run's files cannot be written"
    return None


class FSDPSection(_Section):
    """FSDP settings, passed to accelerate's ``FullyShardedDataParallelPlugin``."""

    version: Literal[1, 2] = Field(1, description="FSDP1 (torch FullyShardedDataParallel) or FSDP2 (fully_shard).")
    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"] = Field(
        "FULL_SHARD", description="What is sharded: parameters+gradients+optimizer (FULL_SHARD), gradients+optimizer "
                                  "(SHARD_GRAD_OP), nothing (NO_SHARD, like DDP), or full sharding within a machine (HYBRID_*).")
    auto_wrap_policy: Literal["transformer_based_wrap", "size_based_wrap", "no_wrap"] = Field(
        "transformer_based_wrap", description="How the model is split into FSDP units: per transformer layer, per "
                                              "min_num_params parameters, or one unit.")
    transformer_layer_cls_to_wrap: Optional[list[str]] = Field(
        None, description="Layer classes that become FSDP units (e.g. [BertLayer]); default: the model's _no_split_modules.")
    min_num_params: Optional[PositiveInt] = Field(
        None, description="size_based_wrap: parameters per FSDP unit (default 100,000,000).")
    cpu_offload: bool = Field(False, description="Keep parameters and gradients in CPU memory between uses.")
    backward_prefetch: Optional[Literal["BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"]] = None
    forward_prefetch: bool = False
    use_orig_params: bool = Field(True, description="Needed when some parameters are frozen (every strategy but full).")
    sync_module_states: bool = Field(True, description="Broadcast rank 0's weights to every process at the start.")
    activation_checkpointing: bool = Field(False, description="Recompute activations in backward: less memory, more time.")
    state_dict_type: Literal["FULL_STATE_DICT", "SHARDED_STATE_DICT"] = "FULL_STATE_DICT"

    @model_validator(mode="after")
    def _wrap_options_match(self) -> "FSDPSection":
        if self.min_num_params is not None and self.auto_wrap_policy != "size_based_wrap":
            raise ValueError("min_num_params applies to auto_wrap_policy: size_based_wrap only")
        if self.transformer_layer_cls_to_wrap and self.auto_wrap_policy != "transformer_based_wrap":
            raise ValueError("transformer_layer_cls_to_wrap applies to auto_wrap_policy: transformer_based_wrap only")
        return self


class DistributedSection(_Section):
    """How a run with several processes (``adaptkit run --num-processes N``) shares the work.

    ``training.batch_size`` stays the global batch: each of N processes gets batch_size / N rows
    of every batch, so N processes compute what one does.
    """

    backend: Literal["ddp", "fsdp", "deepspeed"] = Field(
        "ddp", description="ddp: a full model copy per process; fsdp: parameters sharded across processes; "
                           "deepspeed: ZeRO through DeepSpeed (pip install deepspeed).")
    fsdp: Optional[FSDPSection] = Field(None, description="FSDP options (backend: fsdp).")
    deepspeed: Optional[dict[str, Any]] = Field(
        None, description="A DeepSpeed config, inline (backend: deepspeed); 'auto' values are filled by accelerate.")
    deepspeed_config: Optional[Path] = Field(
        None, description="A DeepSpeed JSON config file, relative to the recipe (backend: deepspeed).")
    collective_timeout_seconds: PositiveInt = Field(
        300, description="A collective (all-reduce, barrier) waiting longer than this fails the run instead of "
                         "hanging on a dead process.")
    find_unused_parameters: bool = Field(
        False, description="ddp: allow trainable parameters that get no gradient in a step (slower).")

    @model_validator(mode="after")
    def _options_match_backend(self) -> "DistributedSection":
        if self.fsdp is not None and self.backend != "fsdp":
            raise ValueError(f"distributed.fsdp is set but backend is {self.backend!r}; set backend: fsdp")
        if (self.deepspeed is not None or self.deepspeed_config is not None) and self.backend != "deepspeed":
            raise ValueError(f"distributed.deepspeed settings are set but backend is {self.backend!r}; "
                             "set backend: deepspeed")
        if self.deepspeed is not None and self.deepspeed_config is not None:
            raise ValueError("give distributed.deepspeed (inline) or distributed.deepspeed_config (a file), not both")
        return self


class PluginSection(BaseModel):
    """A section whose keys belong to a plugin's options model (validated in a second pass)."""

    model_config = ConfigDict(extra="allow")

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# Which installed distribution provides the name, when more than one registers it (see adaptkit.plugin.registry).
_DISTRIBUTION = dict(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$",
                     description="The distribution that provides it (e.g. adaptkit), needed only when two "
                                 "installed distributions register the same name; see `adaptkit plugins`.")


class StrategySection(PluginSection):
    name: str = Field(description="A strategy from `adaptkit plugins`.")
    distribution: Optional[str] = Field(**_DISTRIBUTION)


def default_task_type() -> str:
    """The task a recipe without ``task.type`` means: the installed task that declares ``is_default``
    (the core names none; "" when no installed task does, which validation then reports)."""
    defaults = sorted(name for name, cls in plugin_registry.get_registry().tasks.items() if getattr(cls, "is_default", False))
    return defaults[0] if defaults else ""


class TaskSection(PluginSection):
    type: str = Field(default_factory=default_task_type,
                      description="A task from `adaptkit plugins` (default: the installed task that declares "
                                  "itself the default; first-party: text classification).")
    distribution: Optional[str] = Field(**_DISTRIBUTION)


class Recipe(_Section):
    """A whole recipe. Build one with ``load_recipe(path)`` or ``Recipe.from_dict(data)``."""

    model: ModelSection
    task: TaskSection = Field(default_factory=TaskSection)
    data: DataSection
    strategy: StrategySection
    training: TrainingSection = Field(default_factory=TrainingSection)
    output: OutputSection
    distributed: DistributedSection = Field(default_factory=DistributedSection,
                                            description="Several processes or machines: ddp, fsdp or deepspeed.")
    requires: list[str] = Field(default_factory=list, description="Plugin distributions this recipe needs.")
    plugins: Optional[list[str]] = Field(
        None, description="Allow-list: load only these plugin distributions (adaptkit's own always load); "
                          "default: every installed one (or those in ADAPTKIT_PLUGINS).")

    # What loading learnt, set through read_from and set_options (never assigned from outside).
    _source: Optional[Path] = PrivateAttr(None)
    _lines: Any = PrivateAttr(None)  # loading's line finder of the file read, for errors found after loading
    _strategy_options: Optional[StrategyOptions] = PrivateAttr(None)
    _task_options: Optional[TaskOptions] = PrivateAttr(None)

    #: How ``from_dict`` validates a dict: ``adaptkit.recipe.loading.recipe_from_dict``, set by that module,
    #: which builds on this schema (so the schema never imports it back).
    dict_validator: ClassVar[Optional[Callable[..., "Recipe"]]] = None

    @property
    def source(self) -> Optional[Path]:
        return self._source

    @property
    def strategy_options(self) -> StrategyOptions:
        """The strategy section validated by its plugin's ``Options`` model."""
        return self._strategy_options

    @property
    def task_options(self) -> TaskOptions:
        """The task section validated by its plugin's ``Options`` model."""
        return self._task_options

    def read_from(self, source: Optional[Path], lines: Any) -> None:
        """Record the file this recipe was read from (None: a dict) and where its keys are (``lines.line(path)``)."""
        self._source = source
        self._lines = lines

    def set_options(self, section: Literal["strategy", "task"], options: Union[StrategyOptions, TaskOptions]) -> None:
        """The ``strategy`` or ``task`` section's options, as its plugin's ``Options`` model validated them."""
        if section == "strategy":
            self._strategy_options = options
        elif section == "task":
            self._task_options = options
        else:
            raise ValueError(f"no plugin section {section!r}")

    def where(self, *path: Any) -> str:
        """``file:line: dotted.key`` of a key path, for an error found after loading (plan, run start)."""
        line = self._lines.line(path) if self._lines is not None else None
        return f"{where_in_file(self._source, line)}: {'.'.join(str(p) for p in path)}"

    def base_dir(self) -> Path:
        return self._source.parent if self._source else Path.cwd()

    def resolve_path(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir() / path)

    def resolved_dict(self) -> dict[str, Any]:
        """The recipe with every default filled in, as saved beside a run's outputs."""
        data = self.model_dump(mode="json")
        data["strategy"] = {"name": self.strategy.name, **self._strategy_options.model_dump(mode="json")}
        data["task"] = {"type": self.task.type, **self._task_options.model_dump(mode="json")}
        for section in ("strategy", "task"):  # a chosen distribution goes with the run, so reloading picks it too
            if getattr(self, section).distribution is not None:
                data[section]["distribution"] = getattr(self, section).distribution
        for key in ("name", "tokenizer"):
            name = getattr(self.model, key)
            if name and not os.path.isabs(os.path.expanduser(name)) and Path(name).expanduser().is_dir():
                # a local folder (a model, a finished run as the base, a tokenizer) is found from the working
                # folder: recorded absolute, so `adaptkit predict` of this run finds it again from anywhere
                data["model"][key] = str(Path(name).expanduser().resolve())
        data["data"]["train"] = self.data.resolved("train", self.base_dir())
        if self.data.eval is not None:
            data["data"]["eval"] = self.data.resolved("eval", self.base_dir())
        if self.distributed.deepspeed_config is not None:
            data["distributed"]["deepspeed_config"] = str(self.resolve_path(self.distributed.deepspeed_config))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Optional[Path] = None,
                  check_files: bool = True) -> "Recipe":
        """A recipe validated as ``load_recipe`` validates a file (``source``: where relative paths start)."""
        return cls.dict_validator(data, source, check_files)


# ---------------------------------------------------------------------------- schema

def json_schema() -> dict[str, Any]:
    """The JSON Schema of a recipe with the installed strategies and tasks, for editors."""
    registry = plugin_registry.get_registry()

    def union(table: dict[str, type], key: str, suffix: str) -> Any:
        variants = [
            create_model(f"{name}_{suffix}", __base__=cls.Options,
                         **{key: (Literal[name], Field(description=cls.summary() if hasattr(cls, "summary") else "")),
                            "distribution": (Optional[str], Field(**_DISTRIBUTION))})
            for name, cls in sorted(table.items())
        ]
        if not variants:
            return dict
        if len(variants) == 1:
            return variants[0]
        return Union[tuple(variants)]

    strategy_type = union(registry.strategies, "name", "strategy")
    task_type = union(registry.tasks, "type", "task")
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in Recipe.model_fields.items()
        if name not in ("strategy", "task")
    }
    fields["strategy"] = (strategy_type, Field(discriminator="name") if registry.strategies and len(registry.strategies) > 1 else ...)
    fields["task"] = (task_type, Field(discriminator="type") if len(registry.tasks) > 1 else ...)
    schema_model = create_model("Recipe", __config__=ConfigDict(extra="forbid"), **fields)
    return schema_model.model_json_schema()


def where_in_file(source: Optional[Path], line: Optional[int]) -> str:
    """``file:line`` for an error message (``<recipe>`` for a recipe given as a dict)."""
    name = str(source) if source else "<recipe>"
    return f"{name}:{line}" if line else name
