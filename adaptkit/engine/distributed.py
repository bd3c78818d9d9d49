"""Many processes and many machines: accelerate's launcher and plugins, set from the recipe.

``adaptkit run recipe.yaml --num-processes N`` re-runs the same command under accelerate's own
launcher (``python -m accelerate.commands.launch ... -m adaptkit run recipe.yaml``), which starts
the processes through torch's elastic agent (torchrun): one per GPU, or gloo processes on a CPU.
Each launched process runs the ordinary in-process path, so ``accelerate launch -m adaptkit run``
works the same. Nothing here starts or watches processes itself.

Semantics that make N processes compute what one does:

* ``training.batch_size`` is the global batch. accelerate splits every batch across processes
  (``DataLoaderConfiguration(split_batches=True)``): all processes draw the same seeded batch
  order and each takes its own slice, so a batch is never seen twice and the optimizer steps
  match a one-process run. The batch must split evenly (``check_global_batch``).
* ``distributed.collective_timeout_seconds`` becomes the process group's timeout
  (``InitProcessGroupKwargs``): a process stuck on a dead peer fails instead of hanging, and
  the launcher stops the rest as soon as one process dies.
* A failed launch is reported with the rank that failed first (``DistributedRunError``).

torch, accelerate and the recipe and strategy types are imported inside the functions that use
them: the launching command (``adaptkit run --num-processes N``) asks this module whether and how
to launch before anything heavy is imported, and its worker processes do the importing.
"""
from __future__ import annotations

import collections
import copy
import importlib.util
import os
import re
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from adaptkit.errors import AdaptkitError, DistributedRunError  # noqa: F401 (defined in errors, importable here too)

if TYPE_CHECKING:
    from adaptkit.plugin.strategy import DistributedSetting
    from adaptkit.recipe.schema import DistributedSection, TrainingSection

DEFAULT_PORT = 29500


# ---------------------------------------------------------------------------- inside a process

def distributed_setting(recipe: Any, num_processes: int = 1) -> Optional["DistributedSetting"]:
    """The recipe's distributed setting as values (backend, FSDP version, processes); None for one
    process and no ``distributed`` section. Strategies test its fields (``WrapContext.distributed``);
    its ``str()`` is the text the plan shows.

    A recipe that names a backend (``distributed: {backend: fsdp}``) is planned for it even on
    one process: that is where it will run, and where an unsupported combination must be caught.
    """
    from adaptkit.plugin.strategy import DistributedSetting

    section = getattr(recipe, "distributed", None)
    explicit = "distributed" in getattr(recipe, "model_fields_set", ())
    if section is None or (not explicit and num_processes <= 1):
        return None
    backend = section if isinstance(section, str) else str(getattr(section, "backend", None) or "distributed")
    fsdp = getattr(section, "fsdp", None)
    if fsdp is not None and "fsdp" not in backend:
        backend += " fsdp"
    version = (2 if getattr(fsdp, "version", 1) == 2 else 1) if "fsdp" in backend.lower() else None
    return DistributedSetting(backend=backend, fsdp_version=version, num_processes=max(int(num_processes), 1))


def world_size() -> int:
    """Processes in this run, as the launcher set them (1 when not launched)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def launched() -> bool:
    """True inside a process started by accelerate launch / torchrun."""
    return "LOCAL_RANK" in os.environ and world_size() > 1


def check_global_batch(training: "TrainingSection", num_processes: int) -> None:
    """``training.batch_size`` is the global batch: it must split evenly over the processes."""
    if num_processes > 1 and training.batch_size % num_processes:
        multiple = -(-training.batch_size // num_processes) * num_processes
        raise AdaptkitError(
            f"training.batch_size: {training.batch_size} is the global batch and must split evenly over "
            f"{num_processes} processes (each process gets batch_size / {num_processes} rows); "
            f"use a multiple of {num_processes}, e.g. {multiple}")


def check_backend_available(distributed: "DistributedSection") -> None:
    """A clear error, before anything starts, for a backend whose package is missing."""
    if distributed.backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise AdaptkitError("distributed.backend: deepspeed needs the deepspeed package, which is not installed; "
                            "install it with: pip install deepspeed (or set distributed.backend: ddp or fsdp)")


def fsdp_plugin(distributed: "DistributedSection"):
    """accelerate's ``FullyShardedDataParallelPlugin`` from ``distributed.fsdp``."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from adaptkit.recipe.schema import FSDPSection

    options = distributed.fsdp or FSDPSection()
    kwargs: dict[str, Any] = {
        "fsdp_version": options.version,
        "auto_wrap_policy": options.auto_wrap_policy,
        "cpu_offload": options.cpu_offload,
        "activation_checkpointing": options.activation_checkpointing,
        "state_dict_type": options.state_dict_type,
    }
    if options.version == 1:
        kwargs.update(sharding_strategy=options.sharding_strategy, use_orig_params=options.use_orig_params,
                      sync_module_states=options.sync_module_states, forward_prefetch=options.forward_prefetch)
        if options.backward_prefetch is not None:
            kwargs["backward_prefetch"] = options.backward_prefetch
    else:
        # FSDP2 (fully_shard) has no flat parameters, prefetch flags or module-state broadcast:
        # accelerate raises on forward_prefetch and warns on the others, so they are not passed.
        if options.sharding_strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise AdaptkitError(f"distributed.fsdp.sharding_strategy: {options.sharding_strategy} needs FSDP "
                                "version 1; FSDP2 supports FULL_SHARD and SHARD_GRAD_OP")
        for name in ("forward_prefetch", "backward_prefetch"):
            if getattr(options, name):
                raise AdaptkitError(f"distributed.fsdp.{name} applies to FSDP version 1 only (fully_shard in "
                                    "version 2 prefetches on its own); remove it or set version: 1")
        kwargs["reshard_after_forward"] = options.sharding_strategy == "FULL_SHARD"
    if options.transformer_layer_cls_to_wrap:
        kwargs["transformer_cls_names_to_wrap"] = list(options.transformer_layer_cls_to_wrap)
    if options.min_num_params is not None:
        kwargs["min_num_params"] = options.min_num_params
    if kwargs.get("sync_module_states") and not _has_accelerator_device():
        # The plugin's __post_init__ asks the accelerator for its current device when
        # sync_module_states is set and raises "no available devices" on a CPU-only machine; the
        # device is only used for param_init_fn (to_empty), so on CPUs it is the CPU.
        kwargs["sync_module_states"] = False
        plugin = FullyShardedDataParallelPlugin(**kwargs)
        plugin.sync_module_states = True
        import torch

        plugin.param_init_fn = lambda module: module.to_empty(device=torch.device("cpu"), recurse=False)
    else:
        plugin = FullyShardedDataParallelPlugin(**kwargs)
    if options.version == 2:
        original = plugin.set_auto_wrap_policy
        plugin.set_auto_wrap_policy = lambda model: original(_embedding_free_wrap(plugin, model))
    return plugin


def _embedding_free_wrap(plugin: Any, model: Any) -> Any:
    """FSDP2: leave out of the per-layer wrap any class that holds the input embeddings.

    accelerate 1.15's ``fsdp2_prepare_model`` always gives the input embedding its own
    ``fully_shard`` after the per-layer ones; when a wrapped class contains it (transformers 5
    lists ``BertEmbeddings`` in BERT's ``_no_split_modules``), that second ``fully_shard`` meets
    parameters that are already DTensors and torch fails with "Invariant encountered: value was
    None when it should not be" (``_init_sharding_spec_tp``), on GPUs and CPUs alike. The
    embedding is still its own FSDP unit (accelerate's), so nothing is left unsharded.
    """
    embed = getattr(model, "get_input_embeddings", lambda: None)()
    if embed is None:
        return model
    names = plugin.transformer_cls_names_to_wrap
    if names is None:
        names = list(getattr(model, "_no_split_modules", None) or [])
    holders = {type(module).__name__ for module in model.modules()
               if module is not embed and any(child is embed for child in module.modules())}
    plugin.transformer_cls_names_to_wrap = [name for name in names if name not in holders]
    return model


def _has_accelerator_device() -> bool:
    """Whether accelerate finds a device for FSDP (CUDA, XPU, NPU, ...); False on a CPU-only machine."""
    from accelerate.utils import (is_cuda_available, is_hpu_available, is_mlu_available, is_musa_available,
                                  is_npu_available, is_xpu_available)

    return any(check() for check in (is_cuda_available, is_xpu_available, is_npu_available, is_mlu_available,
                                     is_musa_available, is_hpu_available))


def shard_on_cpus(accelerator: Any, options: dict[str, Any]) -> bool:
    """Turn a gloo (CPU) run with an FSDP plugin into the FSDP run accelerate would make on GPUs.

    accelerate (1.15, ``AcceleratorState.__init__`` in accelerate/state.py) switches a launched run
    to ``DistributedType.FSDP`` only from the accelerator types (MULTI_GPU, MULTI_XPU, ...): a CPU
    run (``Accelerator(cpu=True)``, ``MULTI_CPU``) keeps DDP and silently drops ``fsdp_plugin``.
    accelerate's FSDP code itself (``fsdp2_prepare_model`` / ``FullyShardedDataParallel`` in
    ``prepare``, ``save_fsdp_model``/``load_fsdp_model`` in ``save_state``/``load_state``,
    ``get_state_dict``, ``clip_grad_norm_``) only calls torch, whose ``fully_shard`` and
    ``FullyShardedDataParallel`` run over gloo on CPUs. So, after construction, the state is set
    the way ``AcceleratorState`` sets it on GPUs (type, plugin, mixed precision), and every later
    step runs accelerate's own FSDP path. Returns whether it switched.
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    plugin = options.get("fsdp_plugin")
    if plugin is None or accelerator.distributed_type != DistributedType.MULTI_CPU:
        return False
    state = accelerator.state
    state.distributed_type = DistributedType.FSDP
    # as AcceleratorState.__init__ does: every later AcceleratorState() copies PartialState's
    # shared state over its own, so the type must be set there too
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    return True


def sharded(accelerator: Any) -> bool:
    """Whether the model is sharded over the processes (FSDP or DeepSpeed): its weights must be
    gathered (a collective: every process calls) before they are saved or exported."""
    from accelerate.utils import DistributedType

    return accelerator is not None and accelerator.distributed_type in (DistributedType.FSDP,
                                                                         DistributedType.DEEPSPEED)


def meta_skeleton(model: Any) -> Any:
    """A copy of ``model``'s modules with every parameter on the meta device (no memory) and the
    buffers copied (small, and non-persistent ones are not in a state dict): what a gathered full
    state dict is loaded into after sharded training (``materialize``). Taken before sharding,
    because FSDP changes the modules in place and refuses ``deepcopy`` afterwards."""
    import torch

    memo: dict[int, Any] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) not in memo:
            memo[id(parameter)] = torch.nn.Parameter(torch.empty_like(parameter, device="meta"),
                                                     requires_grad=parameter.requires_grad)
    return copy.deepcopy(model, memo)


def materialize(skeleton: Any, state: dict[str, Any]) -> Any:
    """``skeleton`` with the gathered full ``state`` in place of its meta parameters (same tensors, no copy)."""
    import torch

    missing = [name for name, p in skeleton.named_parameters(remove_duplicate=False)
               if p.is_meta and name not in state]
    if missing:
        raise AdaptkitError(f"the gathered state dict lacks {len(missing)} parameters (e.g. {missing[:3]})")
    flags = {name: p.requires_grad for name, p in skeleton.named_parameters(remove_duplicate=False)}
    skeleton.load_state_dict(state, strict=False, assign=True)
    if hasattr(skeleton, "tie_weights"):
        skeleton.tie_weights()
    with torch.no_grad():
        for name, parameter in skeleton.named_parameters(remove_duplicate=False):
            parameter.requires_grad_(flags[name])
    return skeleton


def become_unsharded(accelerator: Any, model: Any, skeleton: Any) -> None:
    """After sharded training, turn ``model`` (the very object the caller holds) into a plain module
    with the full trained weights on every process, so that export, merge and the contract checks
    run on ordinary tensors and no process waits in a collective for the others.

    The full state dict is gathered with ``accelerator.get_state_dict`` (a collective: FSDP2
    ``get_model_state_dict(full_state_dict=True)``, FSDP1 ``FULL_STATE_DICT``), broadcast from
    rank 0, loaded into the meta skeleton taken before sharding, and ``model`` takes the
    skeleton's class and attributes. Every process then holds one full CPU copy, as an
    unsharded export must.
    """
    import torch.distributed as dist

    state = accelerator.get_state_dict(model)
    box = [state if accelerator.is_main_process else None]
    dist.broadcast_object_list(box, src=0)
    plain = materialize(skeleton, {k: v.cpu() for k, v in box[0].items()})
    model.__class__ = plain.__class__
    model.__dict__ = plain.__dict__


def deepspeed_plugin(distributed: "DistributedSection", base_dir: Optional[Path] = None):
    """accelerate's ``DeepSpeedPlugin`` from ``distributed.deepspeed`` or ``distributed.deepspeed_config``."""
    check_backend_available(distributed)
    from accelerate.utils import DeepSpeedPlugin

    config: Any = distributed.deepspeed
    if distributed.deepspeed_config is not None:
        path = distributed.deepspeed_config
        path = path if path.is_absolute() or base_dir is None else base_dir / path
        if not path.is_file():
            raise AdaptkitError(f"distributed.deepspeed_config: file not found: {path}")
        config = str(path)
    return DeepSpeedPlugin(hf_ds_config=config) if config is not None else DeepSpeedPlugin()


def accelerator_options(distributed: Optional["DistributedSection"], num_processes: int,
                        base_dir: Optional[Path] = None, log=print) -> dict[str, Any]:
    """Keyword arguments for ``Accelerator``: batch splitting, collective timeout, backend plugin.

    ``num_processes`` is the launched world size: with one process the backend plugins are left
    out (there is nothing to shard), so a distributed recipe still runs on a laptop as is.
    """
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs

    from adaptkit.recipe.schema import DistributedSection

    distributed = distributed or DistributedSection()
    handlers: list[Any] = [InitProcessGroupKwargs(timeout=timedelta(seconds=distributed.collective_timeout_seconds))]
    options: dict[str, Any] = {"dataloader_config": DataLoaderConfiguration(split_batches=True)}
    if distributed.backend == "ddp":
        if distributed.find_unused_parameters:
            handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    elif num_processes <= 1:
        check_backend_available(distributed)
        log(f"distributed.backend: {distributed.backend} applies to runs of several processes; "
            "this one-process run trains unsharded")
    elif distributed.backend == "fsdp":
        options["fsdp_plugin"] = fsdp_plugin(distributed)
    else:
        options["deepspeed_plugin"] = deepspeed_plugin(distributed, base_dir)
    options["kwargs_handlers"] = handlers
    return options


# ---------------------------------------------------------------------------- the launcher

def launch_requested(num_processes: Optional[int], num_machines: Optional[int]) -> bool:
    """Whether ``adaptkit run`` must go through accelerate's launcher (else: in-process, as ever).

    A count given below 1 is refused here, first: ``--num-processes 0`` (or ``-2``) used to be read
    as "not given" and ran one process without a word.
    """
    for option, value in (("--num-processes", num_processes), ("--num-machines", num_machines)):
        if value is not None and value < 1:
            raise AdaptkitError(f"{option}: {value} is not a count of processes or machines; give 1 or more")
    return (num_processes or 1) > 1 or (num_machines or 1) > 1


def launch_command(recipe: str, run_args: Sequence[str], num_processes: int, num_machines: int = 1,
                   machine_rank: int = 0, main_process_ip: Optional[str] = None,
                   main_process_port: Optional[int] = None, mixed_precision: str = "no") -> list[str]:
    """``python -m accelerate.commands.launch ... -m adaptkit run RECIPE ...``.

    ``num_processes`` counts every process on every machine, as accelerate's does. ``--multi_gpu``
    selects torch's elastic launcher; on a machine without GPUs each process then runs on the CPU
    over gloo (``adaptkit.engine.train.make_accelerator`` asks for that).
    """
    if num_processes < 1 or num_machines < 1:
        raise AdaptkitError("--num-processes and --num-machines must be at least 1")
    if num_processes % num_machines:
        raise AdaptkitError(f"--num-processes counts processes on all machines together: {num_processes} does not "
                            f"split evenly over {num_machines} machines")
    if not 0 <= machine_rank < num_machines:
        raise AdaptkitError(f"--machine-rank must be between 0 and {num_machines - 1}, got {machine_rank}")
    if num_machines > 1 and not main_process_ip:
        raise AdaptkitError("--num-machines > 1 needs --main-process-ip (the address of the machine with rank 0)")
    if main_process_port is None:
        main_process_port = DEFAULT_PORT if num_machines > 1 else 0  # 0: accelerate picks a free port
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(num_processes), "--num_machines", str(num_machines),
               "--machine_rank", str(machine_rank), "--main_process_port", str(main_process_port),
               "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if main_process_ip:
        command += ["--main_process_ip", main_process_ip]
    return command + ["-m", "adaptkit", "run", recipe, *run_args]


_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(?P<body>.*?)(?:={10,}|\Z)", re.S)


def failure_summary(lines: Sequence[str]) -> dict[str, str]:
    """The first failure torch's elastic agent reports: rank, local rank, host, exit code, cause."""
    text = "".join(lines)
    match = _ROOT_CAUSE.search(text)
    if not match:
        return {}
    found: dict[str, str] = {}
    for line in match.group("body").splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key.strip() in ("rank", "exitcode", "host", "traceback"):
            found.setdefault(key.strip(), value.strip())
    return found


def launch(recipe: str, run_args: Sequence[str], num_processes: int, num_machines: int = 1,
           machine_rank: int = 0, main_process_ip: Optional[str] = None, main_process_port: Optional[int] = None,
           mixed_precision: str = "no") -> int:
    """Run the recipe under accelerate's launcher; stream its output; a failure names the rank.

    Returns 0 when every process finished; raises ``DistributedRunError`` otherwise. When one
    process dies the elastic agent stops the others at once; one stuck in a collective fails
    after ``distributed.collective_timeout_seconds``.
    """
    if launched():
        raise AdaptkitError("this process was already started by a launcher (WORLD_SIZE is set); "
                            "drop --num-processes/--num-machines")
    command = launch_command(recipe, run_args, num_processes, num_machines, machine_rank, main_process_ip,
                             main_process_port, mixed_precision)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
    try:
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line)
        code = process.wait()
    except KeyboardInterrupt:  # the launcher and its processes got the same SIGINT: let them stop
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)
            process.wait()
        raise
    if code == 0:
        return 0
    failure = failure_summary(list(tail))
    reported = next((line.strip() for line in tail if line.startswith("error: ")), None)
    said = f" First error reported by a process: {reported[len('error: '):]}" if reported else ""
    resume = f"adaptkit run {recipe} --resume (with any --num-processes)"
    if not failure:
        raise DistributedRunError(f"distributed run failed: accelerate launch exited with status {code} "
                                  f"(see the messages above). Continue from the last complete checkpoint with: "
                                  f"{resume}.{said}", exit_code=code if code > 0 else 1)
    rank_text = failure.get("rank", "?")
    rank_match = re.match(r"(\d+)", rank_text)
    rank = int(rank_match.group(1)) if rank_match else None
    exit_text = " ".join(failure.get("exitcode", "?").split())
    exit_match = re.match(r"(-?\d+)", exit_text)
    worker_code = int(exit_match.group(1)) if exit_match else code
    cause = failure.get("traceback", "")
    cause = "" if cause.startswith("To enable traceback") else f": {cause}"
    raise DistributedRunError(
        f"distributed run failed: process rank {rank_text} on host {failure.get('host', '?')} exited with code "
        f"{exit_text}{cause}; the other processes were stopped. Continue from the last complete checkpoint with: "
        f"{resume}.{said}", exit_code=worker_code if worker_code > 0 else 1, rank=rank)
