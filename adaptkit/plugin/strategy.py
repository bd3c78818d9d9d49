"""The base class every strategy plugin subclasses.

A strategy adapts a pretrained model without changing its architecture: ``wrap`` freezes,
injects or quantizes; ``unwrap`` merges what was learned back into the base weights (or
removes it), so the result has exactly the base model's signature. The core, not the
strategy, checks that promise (``adaptkit.plugin.contract``) on every run.

This module imports no torch: recipes are validated from the ``Options`` models alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Optional

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch


class StrategyOptions(BaseModel):
    """Base for a strategy's recipe section; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class DistributedSetting:
    """Where a run trains, as values a strategy can test; ``str()`` is the text people read (the
    plan's "quantization x distributed" column), never something to parse.

    ``backend`` is the recipe's ``distributed.backend`` (``ddp``, ``fsdp``, ``deepspeed``);
    ``fsdp_version`` is 1 or 2 when it shards with FSDP, else None; ``num_processes`` is the run's
    process count (1 for a recipe planned on one process and launched on several later).
    """

    backend: str
    fsdp_version: int | None = None
    num_processes: int = 1

    @property
    def fsdp(self) -> bool:
        """Whether the run shards the model with FSDP (either version)."""
        return self.fsdp_version is not None

    def __str__(self) -> str:
        backend = self.backend.replace("fsdp", "fsdp2", 1) if self.fsdp_version == 2 else self.backend
        if self.num_processes > 1:
            return f"{backend} x{self.num_processes} processes"
        return f"{backend} (launched on several processes)"


@dataclass
class WrapContext:
    """What a strategy may need to know about the model it wraps.

    ``head_modules`` are the qualified names of the task head (the classifier a new label
    set needs): the one part of the model whose shape follows the task. Strategies keep it
    trainable unless they have reason not to. ``distributed`` is the run's distributed setting
    (None: one process); ``extra["distributed"]`` keeps its text for plugins that read it there.
    ``total_steps`` is the number of optimizer steps the run will take (``adaptkit.engine.budget``,
    the count the training loop uses), for a method that schedules something over the run
    (AdaLoRA's rank budget); None where the wrap is not for a run of known length (the
    conformance kit, ``compare`` over several training-set sizes).
    """

    model_type: str
    task: str
    head_modules: list[str] = field(default_factory=list)
    peft_task_type: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    distributed: DistributedSetting | None = None
    total_steps: int | None = None


class Strategy:
    """Subclass me, set ``name`` and ``Options``, implement ``wrap`` and ``unwrap``.

    ``mergeable`` says whether ``unwrap`` folds the learned change into base weights
    (LoRA, full fine-tune) or only removes it (prompt tuning, bottleneck adapters): the
    contract checks equal outputs after a merge and exact base outputs after a removal.
    ``export_kind`` is ``"model"`` (a transformers folder) or ``"adapter"`` (a peft folder).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    mergeable: ClassVar[bool] = True
    export_kind: ClassVar[str] = "model"
    # What loads the export back, as the run's contract line and model card say it.
    export_loader: ClassVar[str] = ""
    # Absolute tolerance for "merged computes what wrapped computed"; 4-bit bases need more.
    merge_tolerance: ClassVar[float] = 1e-4
    # The learning rate used when the recipe gives none: LoRA wants ~10x full fine-tuning's.
    # A strategy whose best rate depends on the model overrides ``suggest_learning_rate``.
    default_learning_rate: ClassVar[float] = 5e-5
    # True for a strategy that trains every weight of the model (full fine-tuning): ``compare``
    # trains such a strategy from random weights as its from-scratch baseline.
    trains_every_weight: ClassVar[bool] = False
    # How the strategy stores the frozen base when it quantizes it ("nf4 4-bit"), else None: the
    # plan shows it, and the contract re-quantizes a fresh base before comparing with the export.
    quantization: ClassVar[str | None] = None
    # Bits per stored value of the frozen base when the strategy quantizes it (qlora: 4), else None:
    # what the plan's memory estimate reads (``quantization`` is text for people, never parsed).
    quantization_bits: ClassVar[int | None] = None
    # Options that only mean something when the task has a head (e.g. train the head whole):
    # the pre-flight refuses them, naming the option, for a task without one (a language model).
    head_options: ClassVar[tuple[str, ...]] = ()
    # The library and version the method comes from when a plugin wraps one ("peft 0.21.2"), else "":
    # ``adaptkit plugins`` shows it beside the strategy's name.
    upstream: ClassVar[str] = ""
    # Options the conformance kit uses when its caller gives none (``check_strategy``, ``adaptkit plugins
    # --check``): for a method whose defaults need more than the kit's 32-wide, 2-layer models (peft's
    # C3A blocks of 256) or that cannot run without a value (AdaLoRA's total_step). None: the defaults.
    conformance_options: ClassVar[Optional[dict[str, Any]]] = None

    def __init__(self, options: StrategyOptions | dict[str, Any] | None = None):
        if options is None:
            options = self.Options()
        elif isinstance(options, dict):
            options = self.Options.model_validate(options)
        self.options = options
        if not self.export_loader:
            self.export_loader = "peft" if self.export_kind == "adapter" else "transformers"

    def suggest_learning_rate(self, context: WrapContext) -> float:
        """The learning rate for this model when the recipe gives none (asked before ``wrap``).

        ``default_learning_rate`` unless overridden: a trained head on frozen features wants a
        rate that depends on the model's feature scale, so such a strategy answers per model type.
        """
        return self.default_learning_rate

    def load_kwargs(self, head_modules: list[str], dtype: Any, model: Any = None) -> dict[str, Any]:
        """Extra ``from_pretrained`` arguments for loading the base (a 4-bit ``BitsAndBytesConfig``, so
        a quantizing strategy never holds the full-precision model). ``model`` is the task model on the
        meta device, ``head_modules`` the modules to keep in full precision. None by default."""
        return {}

    def positions_added(self) -> int:
        """Positions the strategy prepends to every input (prompt tuning's virtual tokens): they count
        against the model's position table with the task's own tokens."""
        return 0

    def preflight(self, context: WrapContext) -> None:
        """Refuse, before any weight is read, a setting this strategy cannot run.

        Called by ``adaptkit plan`` and at the start of every run, before ``wrap``; raise
        ``adaptkit.plugin.targets.PreflightError`` with the reason (qlora refuses FSDP, for example).
        ``context.distributed`` holds the recipe's distributed setting (a ``DistributedSetting``:
        backend, FSDP version, processes; None for one process).
        """

    def wrap(self, model: "torch.nn.Module", context: WrapContext) -> "torch.nn.Module":
        """Prepare ``model`` for training: set ``requires_grad``, inject modules, quantize."""
        raise NotImplementedError

    def before_training(self, model: "torch.nn.Module", batches: Iterable[dict[str, Any]]) -> None:
        """Called once before the first training step (also after a resume), single process only.

        ``batches`` yields every training row once, sorted by length, on the model's device
        (run them under ``torch.no_grad``); it is lazy, so a strategy that ignores it costs nothing.
        ``frozen_head`` fills its feature cache here. The time counts as training time.
        """

    def after_step(self, model: "torch.nn.Module", step: int) -> None:
        """Called after every optimizer step, before the gradients are cleared; does nothing by default.

        ``model`` is the wrapped model (unwrapped from accelerate's wrapper), ``step`` the index of the
        optimizer step just taken, from 0. For methods that change their own structure while training:
        AdaLoRA reallocates its ranks here from the step's gradients (peft's ``update_and_allocate``).
        """

    def unwrap(self, model: "torch.nn.Module") -> "torch.nn.Module":
        """Merge or remove what ``wrap`` added; return a model with the base architecture."""
        raise NotImplementedError

    def no_weight_decay(self, name: str, param: "torch.nn.Parameter") -> bool:
        """Whether parameter ``name`` trains without weight decay: biases and every other vector, and
        normalisation weights (a name containing "norm"). The one rule every ``parameter_groups``
        asks (this default, LoRA+'s, layer-wise decay's); override it to change which parameters."""
        return param.ndim < 2 or "norm" in name.lower()

    def parameter_groups(self, model: "torch.nn.Module", learning_rate: float,
                         weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; override for per-layer or per-matrix learning rates (and ask
        ``no_weight_decay`` which parameters get no weight decay)."""
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            (no_decay if self.no_weight_decay(name, param) else decay).append(param)
        groups = [{"params": decay, "weight_decay": weight_decay, "lr": learning_rate}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0, "lr": learning_rate})
        return groups

    def save(self, model: "torch.nn.Module", directory: Path) -> Path:
        """Write what the run produced, as safetensors, in a folder the standard tools load.

        The default saves a transformers folder (``from_pretrained`` loads it); strategies
        whose wrapped model is not a plain transformers model override this.
        """
        model.save_pretrained(directory, safe_serialization=True)
        return directory

    def load(self, base_model: "torch.nn.Module", directory: Path) -> "torch.nn.Module":
        """Load what ``save`` wrote onto a freshly loaded base model, ready for inference."""
        return type(base_model).from_pretrained(directory)

    @classmethod
    def summary(cls) -> str:
        """One line for listings: ``description`` or the docstring's first line."""
        if cls.description:
            return cls.description
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


class PeftStrategy(Strategy):
    """A strategy that peft builds: set ``peft_config(context)``; wrap, merge, save and load are peft's.

    ``wrap`` is ``get_peft_model``, ``unwrap`` is ``merge_and_unload`` (override it for methods
    peft cannot merge), and the export is a peft adapter folder that ``PeftModel.from_pretrained``
    loads. LoRA, QLoRA, IA3 and prompt tuning are built on it; so can a third party's method.
    """

    export_kind: ClassVar[str] = "adapter"

    def peft_config(self, context: WrapContext) -> Any:
        """The ``peft.PeftConfig`` for this model and task."""
        raise NotImplementedError

    def wrap(self, model: "torch.nn.Module", context: WrapContext) -> "torch.nn.Module":
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config(context))

    def unwrap(self, model: "torch.nn.Module") -> "torch.nn.Module":
        return model.merge_and_unload()

    def save(self, model: "torch.nn.Module", directory: Path) -> Path:
        model.save_pretrained(directory, safe_serialization=True)
        return directory

    def load(self, base_model: "torch.nn.Module", directory: Path) -> "torch.nn.Module":
        from peft import PeftModel

        return PeftModel.from_pretrained(base_model, directory)
