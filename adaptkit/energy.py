"""Energy and carbon of a measured piece of work: measured time x power.

Power comes, in order, from:

1. Intel RAPL counters (``/sys/class/powercap/intel-rapl:N/energy_uj``) when the process can
   read them: the package energy actually used, measured rather than assumed. (The counters
   cover the whole CPU package, so other processes on the machine are counted too.)
2. Otherwise a documented default: ``CPU_WATTS_PER_CORE`` (15 W) for each CPU thread torch
   uses, plus ``GPU_WATTS`` (300 W) for each visible GPU when the work ran on a GPU. These are
   round figures for a server core and a data-centre GPU under load; pass ``power_watts``
   (``--power-watts`` on the command line, or ``ADAPTKIT_POWER_WATTS``) to use your own.

Carbon is ``energy x grid intensity``; the default ``GRID_G_PER_KWH`` (475 gCO2e/kWh) is the
IEA world-average electricity intensity, overridable with ``grid_g_per_kwh``
(``--grid-intensity``, ``ADAPTKIT_GRID_G_PER_KWH``). codecarbon is not required.
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


def default_power_watts(device: str = "cpu", threads: Optional[int] = None) -> float:
    """The assumed power draw when nothing is measured: per-core CPU power plus GPUs in use."""
    env = os.environ.get("ADAPTKIT_POWER_WATTS")
    if env:
        return float(env)
    if threads is None:
        try:
            import torch

            threads = torch.get_num_threads()
        except ImportError:  # pragma: no cover - torch is a dependency
            threads = os.cpu_count() or 1
    watts = CPU_WATTS_PER_CORE * threads
    if device.startswith("cuda"):
        import torch

        watts += GPU_WATTS * max(torch.cuda.device_count(), 1)
    return watts


def grid_intensity(grid_g_per_kwh: Optional[float] = None) -> float:
    if grid_g_per_kwh is not None:
        return grid_g_per_kwh
    env = os.environ.get("ADAPTKIT_GRID_G_PER_KWH")
    return float(env) if env else GRID_G_PER_KWH


@dataclass
class Energy:
    """What a meter measured: seconds, watt-hours, grams of CO2e, and how it knows."""

    seconds: float
    wh: float
    g_co2e: float
    method: str  # "rapl" or "time x N W (default|given)"
    watts: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def energy_of(seconds: float, watts: float, method: str, grid_g_per_kwh: Optional[float] = None) -> Energy:
    """Energy of ``seconds`` at ``watts``: the estimate used when no counter is read."""
    wh = seconds * watts / 3600.0
    return Energy(seconds, wh, wh / 1000.0 * grid_intensity(grid_g_per_kwh), method, watts)


@dataclass
class EnergyMeter:
    """Context manager: ``with EnergyMeter() as meter: work()`` then ``meter.result``.

    ``power_watts`` given: time x that power. Else RAPL when readable, else the default.
    """

    power_watts: Optional[float] = None
    device: str = "cpu"
    grid_g_per_kwh: Optional[float] = None
    result: Optional[Energy] = field(default=None, init=False)

    def __enter__(self) -> "EnergyMeter":
        self._domains = [] if self.power_watts is not None else _rapl_domains()
        self._start_uj = _rapl_read(self._domains) if self._domains else []
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        seconds = time.perf_counter() - self._start
        if self._domains:
            joules = 0.0
            for domain, before, after in zip(self._domains, self._start_uj, _rapl_read(self._domains)):
                if after < before:  # the counter wrapped around
                    top = int((domain / "max_energy_range_uj").read_text())
                    after += top
                joules += (after - before) / 1e6
            wh = joules / 3600.0
            self.result = Energy(seconds, wh, wh / 1000.0 * grid_intensity(self.grid_g_per_kwh), "rapl",
                                 joules / seconds if seconds else 0.0)
            return
        if self.power_watts is not None:
            watts, method = self.power_watts, f"time x {self.power_watts:g} W (given)"
        else:
            watts = default_power_watts(self.device)
            method = f"time x {watts:g} W (default: {CPU_WATTS_PER_CORE:g} W per CPU thread" + (
                f", {GPU_WATTS:g} W per GPU)" if self.device.startswith("cuda") else ")")
        self.result = energy_of(seconds, watts, method, self.grid_g_per_kwh)


def describe_power(power_watts: Optional[float], device: str = "cpu") -> str:
    """One line saying where power figures will come from, for reports."""
    if power_watts is not None:
        return f"time x {power_watts:g} W (given)"
    if _rapl_domains():
        return "Intel RAPL package counters (measured)"
    return (f"time x {default_power_watts(device):g} W (default: {CPU_WATTS_PER_CORE:g} W per CPU thread"
            + (f", {GPU_WATTS:g} W per GPU" if device.startswith("cuda") else "") + "; no readable RAPL counters)")
