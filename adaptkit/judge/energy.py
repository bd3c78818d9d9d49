"""Energy and carbon of a piece of work, from the work itself rather than from how long it waited.

Wall time x a fixed power measures how loaded the machine was: two identical runs took 278 s
and 76 s on a shared machine, and a comparison then "saved" negative energy. So the energy of
a run comes, in order, from:

1. ``power_watts`` when the caller gives one (``--power-watts``, ``ADAPTKIT_POWER_WATTS``):
   the whole machine's draw, times wall time. Right for a dedicated machine whose draw you know.
2. Intel RAPL package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``) when the
   process can read them: measured, though they count every process on the package.
3. Otherwise the process's own CPU time (user + system seconds of all its threads, which a
   busy neighbour does not inflate the way it inflates wall time) x ``CPU_WATTS_PER_CORE``
   (15 W per busy core, a round figure for a server core under load).

Work on a GPU adds the GPU's energy counter through NVML (``pynvml``) when it can be read, else
the GPU's busy time (wall time) x ``GPU_WATTS`` (300 W). Carbon is energy x grid intensity
(``GRID_G_PER_KWH``, 475 gCO2e/kWh, the IEA world average; ``--grid-intensity``).

codecarbon (when installed) estimates the same quantities from the same counters plus regional
intensity; it is not required, so this module reads the counters itself.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

CPU_WATTS_PER_CORE = 15.0
GPU_WATTS = 300.0
GRID_G_PER_KWH = 475.0
RAPL_ROOT = Path("/sys/class/powercap")


def _rapl_domains() -> list[Path]:
    """Package-level RAPL domains (``intel-rapl:0``, not sub-domains like ``intel-rapl:0:0``)."""
    if not RAPL_ROOT.is_dir():
        return []
    domains = []
    for path in sorted(RAPL_ROOT.glob("intel-rapl:*")):
        if path.name.count(":") == 1 and (path / "energy_uj").is_file():
            try:
                int((path / "energy_uj").read_text())
            except (OSError, ValueError):  # present but unreadable (root-only on recent kernels)
                return []
            domains.append(path)
    return domains


def _rapl_read(domains: list[Path]) -> list[int]:
    return [int((d / "energy_uj").read_text()) for d in domains]


def _nvml_millijoules() -> Optional[list[int]]:
    """Each visible GPU's energy counter (mJ since driver load), or None where NVML cannot say."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return [int(pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # not installed, no driver, or a GPU without the counter
        return None


def grid_intensity(grid_g_per_kwh: Optional[float] = None) -> float:
    if grid_g_per_kwh is not None:
        return grid_g_per_kwh
    env = os.environ.get("ADAPTKIT_GRID_G_PER_KWH")
    return float(env) if env else GRID_G_PER_KWH


def given_power(power_watts: Optional[float] = None) -> Optional[float]:
    """The machine's draw the user stated (argument, else ``ADAPTKIT_POWER_WATTS``), or None."""
    if power_watts is not None:
        return power_watts
    env = os.environ.get("ADAPTKIT_POWER_WATTS")
    return float(env) if env else None


@dataclass
class Energy:
    """What a meter measured: seconds (wall and CPU), watt-hours, grams of CO2e, and how it knows."""

    seconds: float
    wh: float
    g_co2e: float
    method: str
    cpu_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def energy_of_cpu_seconds(cpu_seconds: float, grid_g_per_kwh: Optional[float] = None) -> Energy:
    """The default estimate for ``cpu_seconds`` of busy cores (used by advise for a projected epoch)."""
    wh = cpu_seconds * CPU_WATTS_PER_CORE / 3600.0
    return Energy(cpu_seconds, wh, wh / 1000.0 * grid_intensity(grid_g_per_kwh), cpu_method(), cpu_seconds)


def cpu_method() -> str:
    return f"process CPU time x {CPU_WATTS_PER_CORE:g} W per busy core"


@dataclass
class EnergyMeter:
    """Context manager: ``with EnergyMeter() as meter: work()`` then ``meter.result`` (an ``Energy``)."""

    power_watts: Optional[float] = None
    device: str = "cpu"
    grid_g_per_kwh: Optional[float] = None
    result: Optional[Energy] = field(default=None, init=False)

    def __enter__(self) -> "EnergyMeter":
        self._watts = given_power(self.power_watts)
        self._domains = [] if self._watts is not None else _rapl_domains()
        self._start_uj = _rapl_read(self._domains) if self._domains else []
        self._gpu = self.device.startswith("cuda")
        self._start_mj = _nvml_millijoules() if self._gpu and self._watts is None else None
        self._start_cpu = time.process_time()
        self._start = time.perf_counter()
        return self

    @property
    def seconds(self) -> float:
        return self.result.seconds if self.result else 0.0

    @property
    def cpu_seconds(self) -> float:
        return self.result.cpu_seconds if self.result else 0.0

    def __exit__(self, *exc: Any) -> None:
        if self._gpu:
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - self._start
        cpu = time.process_time() - self._start_cpu
        if self._watts is not None:
            joules, method = seconds * self._watts, f"wall time x {self._watts:g} W (given)"
        elif self._domains:
            joules, method = 0.0, "Intel RAPL package counters (measured)"
            for domain, before, after in zip(self._domains, self._start_uj, _rapl_read(self._domains)):
                if after < before:  # the counter wrapped around
                    after += int((domain / "max_energy_range_uj").read_text())
                joules += (after - before) / 1e6
        else:
            joules, method = cpu * CPU_WATTS_PER_CORE, cpu_method()
        if self._gpu and self._watts is None:
            end = _nvml_millijoules() if self._start_mj is not None else None
            if end is not None:
                joules += sum(b - a for a, b in zip(self._start_mj, end)) / 1000.0
                method += " + GPU energy counters (NVML)"
            else:
                import torch

                joules += seconds * GPU_WATTS * max(torch.cuda.device_count(), 1)
                method += f" + wall time x {GPU_WATTS:g} W per GPU (no NVML counter)"
        wh = joules / 3600.0
        self.result = Energy(seconds, wh, wh / 1000.0 * grid_intensity(self.grid_g_per_kwh), method, cpu)


def describe_power(power_watts: Optional[float], device: str = "cpu") -> str:
    """One line saying where energy figures come from, for reports."""
    watts = given_power(power_watts)
    if watts is not None:
        return f"wall time x {watts:g} W (given)"
    text = "Intel RAPL package counters (measured)" if _rapl_domains() else \
        f"{cpu_method()} (no readable RAPL counters)"
    if device.startswith("cuda"):
        text += " + GPU energy (NVML counters where readable, else wall time x 300 W per GPU)"
    return text
