"""``adaptkit plan``: what a run will train and roughly what it will cost, before any training.

The model is built on the meta device (no weights read or downloaded, no memory used), each
strategy wraps it there, and the plan reports trainable and total parameters, the modules
the strategy touches, and an estimate of peak training memory for the recipe's batch and
sequence length.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from adaptkit.engine.device import mixed_precision
from adaptkit.engine.distributed import distributed_setting  # noqa: F401 (decided there; the runner asks here)
from adaptkit.engine import models  # half_training_on_cpu_problem through the module: tests replace it there
from adaptkit.engine.models import check_device_map, gradient_checkpointing_problem
from adaptkit.engine.session import Session
from adaptkit.errors import AdaptkitError, PreflightError, RecipeError, exception_chain
from adaptkit.plugin.families import OUTPUT_LAYERS
from adaptkit.plugin.registry import recipe_plugins
from adaptkit.plugin.task import position_limit
from adaptkit.recipe.schema import Recipe

BYTES = {"torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2, "torch.uint8": 1, "torch.int8": 1}


@dataclass
class StrategyPlan:
    """One strategy on the recipe's model: sizes, touched modules, memory estimate, setup."""

    strategy: str
    trainable: int = 0
    total: int = 0
    touched: list[str] = field(default_factory=list)
    # Modules whose parameters stay frozen, blocks as ranges (``encoder.layers.0-1``): ``frozen_modules``.
    frozen: list[str] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    error: Optional[str] = None
    # The wrap needs weight values the meta device does not have (an SVD-initialised adapter): not a
    # refusal, a figure plan cannot give; a run wraps the real model and its pre-flight decides there.
    meta_limited: bool = False
    # What the libraries said while this strategy was wrapped (warnings, a progress bar): kept under its
    # name instead of scrolling past the table, where a plan of every strategy printed them unattributed.
    heard: list[str] = field(default_factory=list)
    setup: str = ""
    # The exception behind ``error``; an AdaptkitError on the recipe's own strategy stops the run.
    failure: Optional[BaseException] = field(default=None, repr=False, compare=False)


@dataclass
class Plan:
    model: str
    model_type: str
    batch_size: int
    sequence_length: int
    strategies: list[StrategyPlan]
    recipe_strategy: str = ""
    notes: list[str] = field(default_factory=list)  # the task's word on the recipe (Task.preflight)

    def raise_for_recipe_strategy(self) -> None:
        """Raise what stops the recipe's own strategy (with the recipe's options) from running."""
        for entry in self.strategies:
            if entry.strategy == self.recipe_strategy and entry.failure is not None:
                if isinstance(entry.failure, AdaptkitError):
                    raise entry.failure
                raise PreflightError(f"strategy {entry.strategy!r} cannot be planned: {entry.error}") \
                    from entry.failure


# ---------------------------------------------------------------------------- combination checks

def setup_line(strategy: Any, context: Any, precision: str) -> str:
    """The quantization x distributed setting a strategy runs under, as the plan table shows it.

    A strategy that quantizes says how through a ``quantization`` attribute (qlora: "nf4 4-bit").
    """
    quantization = strategy.quantization or (
        "no quantization, fp32" if precision in (None, "no") else f"no quantization, {precision} autocast")
    return f"{quantization} x {context.distributed or 'single process'}"






def describe(name: str, model: Any, config: Any, recipe: Recipe, length: int, setup: str = "",
             quantization_bits: Optional[int] = None, task: Any = None) -> StrategyPlan:
    """Sizes, touched modules and the memory estimate of a wrapped model (meta or real), ``length`` tokens a row.

    ``setup`` is the text the plan shows; ``quantization_bits`` (the strategy's declared
    ``Strategy.quantization_bits``) is what the estimate reads: 4 counts the frozen linear
    weights at bitsandbytes' 4-bit size. ``task`` adjusts the estimate for what it adds
    (``Task.memory_estimate``: a preference task's second answer and reference copy).

    A ``training.gradient_checkpointing`` the wrapped model cannot do is refused here, as the run would,
    and float16 weights to train on a CPU, which diverge (``half_training_on_cpu_problem``).
    """
    if recipe.training.gradient_checkpointing:

        problem = gradient_checkpointing_problem(model)
        if problem:
            raise RecipeError(f"{recipe.where('training', 'gradient_checkpointing')}: with strategy {name!r}, "
                              f"{problem}")

    problem = models.half_training_on_cpu_problem(model, recipe)
    if problem:
        raise RecipeError(f"{recipe.where('model', 'dtype')}: with strategy {name!r}, {problem}")
    memory = estimate_memory(model, config, recipe.training.batch_size, length, mixed_precision(recipe.training),
                             quantized=quantization_bits == 4,
                             gradient_checkpointing=recipe.training.gradient_checkpointing,
                             optimizer=recipe.training.optimizer)
    if task is not None:
        memory = task.memory_estimate(model, {k: v for k, v in memory.items() if k != "total"})
        memory["total"] = sum(v for k, v in memory.items() if k != "total")
    return StrategyPlan(name, trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                        total=sum(p.numel() for p in model.parameters()), touched=touched_modules(model),
                        frozen=frozen_modules(model),
                        memory=memory, setup=setup)


def frozen_modules(model) -> list[str]:
    """Where the frozen parameters are, in model order: each block stack with the frozen blocks as
    ranges (``encoder.layers.0-1``), other modules by their first two names (``encoder.embeddings``),
    or more where those hold a block stack too (``decoder.transformer.wte``).

    The trained-module column folds block numbers away, so it cannot say that a partial freeze keeps
    the encoder's first blocks and trains its later ones and the decoder; this list can.
    """
    names = [(re.sub(r"^base_model\.model\.", "", name), param.requires_grad) for name, param in model.named_parameters()]
    paths = {found.group(1) for found in (re.match(r"^(.*?)\.(\d+)\.", name) for name, _ in names) if found}
    stacks: dict[str, list[int]] = {}
    for name, trained in names:
        if trained:
            continue
        block = re.match(r"^(.*?)\.(\d+)\.", name)
        if block:
            numbers = stacks.setdefault(block.group(1), [])
            if int(block.group(2)) not in numbers:
                numbers.append(int(block.group(2)))
            continue
        parts = name.split(".")
        depth = 2  # deeper where two names hold a block stack too (decoder.transformer: wte beside h)
        while depth < len(parts) - 1 and any(path.startswith(".".join(parts[:depth]) + ".") for path in paths):
            depth += 1
        stacks.setdefault(".".join(parts[:depth]), [])
    shown = []
    for path, numbers in stacks.items():
        runs: list[list[int]] = []
        for number in sorted(numbers):
            if runs and number == runs[-1][-1] + 1:
                runs[-1].append(number)
            else:
                runs.append([number])
        parts = [f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs]
        shown.append(f"{path}.{','.join(parts)}" if parts else path)
    return shown


def touched_modules(model) -> list[str]:
    """Trainable module paths with block numbers folded (``layer.*.query.lora_A``) and counted."""
    patterns: Counter[str] = Counter()
    for name, param in model.named_parameters():
        if param.requires_grad:
            module = name.rsplit(".", 1)[0]
            module = re.sub(r"^(base_model\.model\.)", "", module)
            patterns[re.sub(r"\.\d+\.", ".*.", module)] += 1
    return [f"{pattern} (x{count})" if count > 1 else pattern for pattern, count in sorted(patterns.items())]


# bitsandbytes 4-bit: half a byte per value, plus one 8-bit block scale per 64 values and, with
# double quantization, one fp32 scale per 256 of those (0.5 + 1/64 + 4/16384 bytes).
FOUR_BIT_BYTES = 0.5 + 1 / 64 + 4 / 16384
# Layers a 4-bit base leaves in full precision (the task head and the output layer): families.OUTPUT_LAYERS.
_KEPT_IN_FULL = OUTPUT_LAYERS


def estimate_memory(model, config, batch_size: int, sequence_length: int, precision: str, *,
                    quantized: bool = False, gradient_checkpointing: bool = False,
                    optimizer: str = "adamw_torch", shards: int = 1) -> dict[str, int]:
    """Peak training memory, by part, in bytes.

    Why each part is what it is:

    - weights: every parameter at its own dtype, so ``model.dtype`` counts (the plan builds its
      meta model in the load dtype; peft keeps adapters in fp32 on a 16-bit base). ``quantized``
      (qlora) counts frozen ``nn.Linear`` weights outside the head at 4 bits with their block
      scales (``FOUR_BIT_BYTES``); a real 4-bit model's packed uint8 weights count the same way.
    - gradients: one per trainable parameter, at its dtype (torch keeps gradients in it).
    - optimizer: AdamW's two moments at the parameter's dtype (torch's AdamW allocates them
      ``zeros_like(param)``), or 1 byte each with bitsandbytes' 8-bit AdamW.
    - activations: Korthikanti et al. 2022, s*b*h*(34 + 5*a*s/h) bytes per layer at 16-bit, doubled
      in fp32; with ``gradient_checkpointing`` only each layer's input (2*s*b*h at 16-bit) is kept,
      plus one layer's full activations while it is recomputed.
    - logits: a language-model head's b*s*vocab fp32 logits and their gradient (the loss upcasts).
    - step: torch's default (foreach) AdamW computes sqrt(v) for every trainable tensor at once into
      new tensors, one more copy of the trainable parameters during each optimizer step (measured on
      the CPU: an 11M-parameter full fine-tune peaks ~44 MB above weights + gradients + moments in
      fp32); the fused and 8-bit optimizers update in place.
    - ``shards``: FSDP full sharding / ZeRO-3 split weights, gradients and optimizer state over
      that many processes (activations are per process); 1 = no sharding.
    """

    weights = gradients = states = step = 0.0
    half = precision in ("fp16", "bf16")
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            size = BYTES.get(str(param.dtype), 4)
            if param.dtype in (torch.float16, torch.bfloat16):  # a 16-bit model computes in 16 bits
                half = True
            if param.dtype == torch.uint8 and type(param).__name__ == "Params4bit":  # already 4-bit (a run's model)
                weights += param.numel() * 2 * FOUR_BIT_BYTES  # two 4-bit values per stored byte
                continue
            if (quantized and not param.requires_grad and isinstance(module, torch.nn.Linear) and param.ndim == 2
                    and param.is_floating_point() and not any(k in module_name.split(".") for k in _KEPT_IN_FULL)):
                weights += param.numel() * FOUR_BIT_BYTES
                continue
            weights += param.numel() * size
            if param.requires_grad:
                gradients += param.numel() * size
                states += param.numel() * (2 if optimizer.endswith("_8bit") else 2 * size)
                step += param.numel() * size if optimizer == "adamw_torch" else 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0) or 0
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0) or 0
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 1) or 1
    s, b = sequence_length, batch_size
    scale = 1 if half else 2
    per_layer = s * b * hidden * (34 + 5 * heads * s / max(hidden, 1)) * scale
    if gradient_checkpointing:
        activations = layers * 2 * s * b * hidden * scale + per_layer
    else:
        activations = per_layer * layers
    logits = 0
    try:
        output = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        output = None
    vocab = getattr(output, "out_features", None) or getattr(output, "num_embeddings", None)
    if vocab:
        logits = 2 * b * s * vocab * 4
    shards = max(int(shards), 1)
    parts = {"weights": int(weights / shards), "gradients": int(gradients / shards),
             "optimizer": int(states / shards), "step": int(step / shards), "activations": int(activations),
             "logits": int(logits)}
    parts["total"] = sum(parts.values())
    return parts


def check_sequence_length(session: Any, strategy: Any, config: Any) -> None:
    """Refuse a task's sequence length longer than the model's position table (``task.position_limit``).

    Past it, the first long batch fails deep in the forward pass with a tensor-size error, after
    data loading and model building, or an epoch into the run. Positions a strategy prepends
    (prompt tuning's virtual tokens, ``Strategy.positions_added``) count too. Checked by
    ``adaptkit plan`` and again when a run starts.
    """

    length = session.task.sequence_length()
    limit = position_limit(config)
    if not isinstance(length, int) or limit is None:
        return
    added = strategy.positions_added()
    if length + added > limit:
        extra = f" plus {added} positions strategy {strategy.name!r} prepends" if added else ""
        raise RecipeError(f"{session.recipe.where('task', 'max_length')}: {length}{extra} tokens are more than this "
                          f"{getattr(config, 'model_type', 'model')} model's {limit} positions; set task.max_length "
                          f"to at most {limit - added}")


def plan_of_model(session: Any, strategy: Any, model: Any, config: Any, setup: str = "") -> Plan:
    """The plan of a model a run has already built and wrapped: no second load, no meta copy.
    ``setup`` is ``setup_line``'s text, shown as is."""
    recipe = session.recipe
    check_sequence_length(session, strategy, config)
    model_type = getattr(config, "model_type", "unknown")
    return Plan(model=recipe.model.name or f"config:{model_type}", model_type=model_type,
                batch_size=recipe.training.batch_size, sequence_length=session.sequence_length,
                strategies=[describe(strategy.name, model, config, recipe, session.sequence_length, setup,
                                     quantization_bits=strategy.quantization_bits, task=session.task)],
                recipe_strategy=strategy.name)


def plan(recipe: Recipe, strategies: Optional[list[str]] = None, strict: bool = True) -> Plan:
    """Plan the recipe's strategy (or each of ``strategies``) on the meta device.

    Each entry runs the combination checks and the strategy's own target resolution; an entry
    that cannot be planned keeps its error so the others still show. ``strict`` then raises
    what stops the recipe's own strategy (``Plan.raise_for_recipe_strategy``), as a run would.
    """

    with recipe_plugins(recipe):
        return _plan(recipe, strategies, strict)


# torch's words for an operation the meta device cannot do: a copy of values it has not got, or
# torch.nonzero (peft's SHiRA builds its sparse mask from the weights with it)
META_VALUES = re.compile(r"\bmeta (tensor|device)|\bis_meta\b|out of meta|register_meta|meta_nonzero", re.IGNORECASE)


def needs_weight_values(exc: BaseException) -> bool:
    """Whether a wrap on the meta device failed for the values it has not got (an adapter initialised
    from an SVD of the weights: peft's AdaMSS, FRoD, HiRA, PEANuT; SHiRA's mask from torch.nonzero),
    judged by the message of the error or of what caused it. Such a strategy is not refused at
    ``plan``: it may well run."""
    return any(META_VALUES.search(str(cause)) for cause in exception_chain(exc))


def _plan(recipe: Recipe, strategies: Optional[list[str]], strict: bool) -> Plan:
    """``plan`` under the recipe's plugin allow-list."""

    session = Session(recipe, log=lambda _: None)
    section = recipe.model
    notes = session.task.preflight(recipe, session.source)
    names = strategies or [recipe.strategy.name]
    distributed = distributed_setting(recipe)

    check_device_map(recipe)  # the run asks the same rule, with its processes
    results: list[StrategyPlan] = []
    config = session.config
    check_sequence_length(session, session.strategy(), config)
    model_type = getattr(config, "model_type", "unknown")
    for name in names:
        entry = StrategyPlan(name)
        with libraries_said() as heard:
            entry = _plan_one(session, name, entry, distributed, config, recipe)
        entry.heard = heard
        results.append(entry)
    result = Plan(model=section.name or f"config:{model_type}", model_type=model_type,
                  batch_size=recipe.training.batch_size, sequence_length=session.sequence_length, strategies=results,
                  recipe_strategy=recipe.strategy.name, notes=notes)
    if strict:
        result.raise_for_recipe_strategy()
    return result


HEARD_LINES = 3  # per strategy: the first distinct lines are the news, the rest repeats


@contextlib.contextmanager
def libraries_said() -> Iterator[list[str]]:
    """Collect the warnings and stderr lines of the block (distinct, first lines, at most ``HEARD_LINES``)
    into the list it yields, filled when the block ends."""
    heard: list[str] = []
    stream = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stderr(stream):
        yield heard  # the filters in force stay: what the user would have seen, now under a name
    lines = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()
             and not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]  # for developers
    lines += [line.strip() for line in stream.getvalue().replace("\r", "\n").splitlines() if line.strip()]
    for line in lines:
        if line not in heard and len(heard) < HEARD_LINES:
            heard.append(line)


def _plan_one(session: Session, name: str, entry: StrategyPlan, distributed: Any, config: Any,
              recipe: Recipe) -> StrategyPlan:
    """One strategy's entry: its figures, or why it cannot plan (never raised: one must not hide the others)."""
    try:
        strategy = session.strategy(name)
        with session.on_meta_device():  # model.dtype's weight bytes, no weights read or allocated
            base = session.build_meta()
            # the raw training rows (plan reads no tokenizer): a task that windows rows trains more
            # steps, which shifts a strategy's schedule (AdaLoRA's total_step), never a size
            steps = session.planned_steps(len(session.splits.train))
            context = session.context(base, distributed, total_steps=steps)
            setup = setup_line(strategy, context, mixed_precision(recipe.training))
            entry.setup = setup
            model = session.wrap(strategy, base, context)
        entry = describe(name, model, config, recipe, session.sequence_length, setup,
                         quantization_bits=strategy.quantization_bits, task=session.task)
    except Exception as exc:  # one strategy that cannot be planned must not hide the others
        entry.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if needs_weight_values(exc):
            entry.meta_limited = True
            entry.error = (f"not planned on the meta device: its wrap reads the weights' values ({entry.error}); "
                           f"a run wraps the real model and checks it there")
        else:
            entry.failure = exc
    return entry


def render(result: Plan) -> Any:
    """A rich table of the plan's figures, and under it how each strategy runs (quantization x distributed),
    what it trains and keeps frozen, or why it cannot plan.

    Those are lines under the table, not columns: a plan of every installed
    strategy (``--all``) has long refusals, and as a column they squeezed the figures to "23,052,6…"
    on an 80-column terminal. The figures never wrap or shorten.
    """

    table = Table(title=f"{result.model} ({result.model_type}), batch {result.batch_size} x "
                        f"{result.sequence_length} tokens")
    table.add_column("strategy", no_wrap=True)
    for figure in ("trainable", "total", "% trainable", "est. peak memory"):
        table.add_column(figure, no_wrap=True, justify="right")
    notes: list[Any] = list(result.notes)  # a line, or (line, style)
    for entry in result.strategies:
        notes += [(f"{entry.strategy}: a library said: {line}", "dim") for line in entry.heard]
        if entry.setup:
            notes.append(f"{entry.strategy} runs as: {entry.setup} (quantization x distributed)")
        if entry.error:
            table.add_row(entry.strategy, "-", "-", "-", "-")
            notes.append((f"{entry.strategy}: {entry.error}", "yellow") if entry.meta_limited
                         else (f"{entry.strategy} cannot plan: {entry.error}", "red"))
            continue
        leaves = sorted({".".join(t.split(" ")[0].replace(".default", "").split(".")[-2:]) for t in entry.touched})
        shown = ", ".join(leaves[:8]) + (f", ... ({len(leaves)} kinds)" if len(leaves) > 8 else "")
        table.add_row(entry.strategy, f"{entry.trainable:,}", f"{entry.total:,}",
                      f"{100 * entry.trainable / max(entry.total, 1):.2f}",
                      f"{entry.memory['total'] / 2**20:,.0f} MiB")
        notes.append(f"{entry.strategy} trains: {shown}")
        if entry.frozen and 0 < entry.trainable < entry.total:
            more = f", ... ({len(entry.frozen)} in all)" if len(entry.frozen) > 6 else ""
            notes.append(f"{entry.strategy} keeps frozen: {', '.join(entry.frozen[:6])}{more}")
    if notes:

        lines = [(line, "") if isinstance(line, str) else line for line in notes]  # wrapped at the terminal's width
        return Group(table, *(Text(text, style=style) for text, style in lines))
    return table


def render_text(result: Plan, width: int = 160) -> str:
    """The plan table as plain text, for a run's log function."""

    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(render(result))
    return buffer.getvalue().rstrip()
