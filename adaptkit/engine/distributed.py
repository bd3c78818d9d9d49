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
"""
from __future__ import annotations

import collections
import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from adaptkit.errors import AdaptkitError, DistributedRunError  # noqa: F401 (defined in errors, importable here too)

if TYPE_CHECKING:
    from adaptkit.recipe.schema import DistributedSection, TrainingSection

DEFAULT_PORT = 29500


# ---------------------------------------------------------------------------- inside a process

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
        "use_orig_params": options.use_orig_params,
        "sync_module_states": options.sync_module_states,
        "forward_prefetch": options.forward_prefetch,
        "activation_checkpointing": options.activation_checkpointing,
        "state_dict_type": options.state_dict_type,
    }
    if options.version == 1:
        kwargs["sharding_strategy"] = options.sharding_strategy
    else:
        if options.sharding_strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
            raise AdaptkitError(f"distributed.fsdp.sharding_strategy: {options.sharding_strategy} needs FSDP "
                                "version 1; FSDP2 supports FULL_SHARD and SHARD_GRAD_OP")
        kwargs["reshard_after_forward"] = options.sharding_strategy == "FULL_SHARD"
    if options.backward_prefetch is not None:
        kwargs["backward_prefetch"] = options.backward_prefetch
    if options.transformer_layer_cls_to_wrap:
        kwargs["transformer_cls_names_to_wrap"] = list(options.transformer_layer_cls_to_wrap)
    if options.min_num_params is not None:
        kwargs["min_num_params"] = options.min_num_params
    try:
        return FullyShardedDataParallelPlugin(**kwargs)
    except RuntimeError as exc:  # accelerate's FSDP wants an accelerator device (CUDA, XPU, ...)
        raise AdaptkitError(f"distributed.backend: fsdp cannot run here: {exc} "
                            "(accelerate's FSDP needs GPUs; on CPUs use distributed.backend: ddp)") from None


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
    from datetime import timedelta

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
    """Whether ``adaptkit run`` must go through accelerate's launcher (else: in-process, as ever)."""
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
