"""Energy and carbon of a piece of work, from the work itself rather than from how long it waited.

Wall time x a fixed power measures how loaded the machine was: two identical runs took 278 s
and 76 s on a shared machine, and a comparison then "saved" negative energy. So the energy of
a run comes, in order, from:

1. ``power_watts`` when the caller gives one (``--power-watts``, ``ADAPTKIT_POWER_WATTS``):
   the whole machine's draw, times wall time. Right for a dedicated machine whose draw you know.
2. codecarbon, when it is installed (``pip install adaptkit[energy]``): its offline tracker,
   following this process (RAPL counters where readable, else CPU load x the CPU's TDP from its
   table, plus RAM from the memory the process uses, plus GPUs through NVML). It never touches
   the network (no location lookup, no Electricity Maps, no API) and writes no file.
3. Otherwise, or where codecarbon fails, this module's own reading of the counters: Intel RAPL
   package counters (``/sys/class/powercap/intel-rapl:N/energy_uj``) when the process can read
   them (measured, though they count every process on the package), else the process's own CPU
   time (user + system seconds of all its threads, which a busy neighbour does not inflate the
   way it inflates wall time) x ``CPU_WATTS_PER_CORE`` (15 W per busy core, a round figure for a
   server core under load). Work on a GPU adds the GPU's energy counter through NVML
   (``pynvml``) when it can be read, else the GPU's busy time (wall time) x ``GPU_WATTS`` (300 W).
   The method then says why codecarbon was not used.

Carbon is energy x grid intensity: the intensity the user states (``--grid-intensity``,
``ADAPTKIT_GRID_G_PER_KWH``), else codecarbon's figure for the country (3-letter ISO code) and
region given to the API or in ``ADAPTKIT_COUNTRY_ISO_CODE`` / ``ADAPTKIT_REGION``, else
``GRID_G_PER_KWH`` (475 gCO2e/kWh, the IEA world average, which is also codecarbon's default).
One function, ``grid_intensity``, decides it, so every figure in a report uses the same one.
"""
from __future__ import annotations

import inspect
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from adaptkit.errors import AdaptkitError

# pynvml, codecarbon and torch are imported inside the functions: optional or heavy, and only a
# measurement needs them.

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
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]

        pynvml.nvmlInit()
        return [int(pynvml.nvmlDeviceGetTotalEnergyConsumption(pynvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # not installed, no driver, or a GPU without the counter
        return None


# ---------------------------------------------------------------------------- codecarbon

def _codecarbon() -> tuple[Optional[Any], str]:
    """codecarbon's module, or None and why not (a plain import each time, so tests can hide it)."""
    try:
        import codecarbon  # type: ignore[import-not-found]
    except Exception as exc:  # ImportError, or a broken install that fails while importing
        return None, "codecarbon not installed" if isinstance(exc, ImportError) else \
            f"codecarbon cannot be imported ({type(exc).__name__}: {exc})"
    # Its logger prints INFO lines (and an 'unknown CPU' warning) before it reads log_level.
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    return codecarbon, ""


def _country(country_iso_code: Optional[str], region: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """The country and region asked for: the arguments, else ``ADAPTKIT_COUNTRY_ISO_CODE``/``ADAPTKIT_REGION``."""
    country = country_iso_code or os.environ.get("ADAPTKIT_COUNTRY_ISO_CODE") or None
    place = region or os.environ.get("ADAPTKIT_REGION") or None
    return (country.strip().upper() if country else None), (place.strip().lower() if place else None)


@lru_cache(maxsize=32)
def _codecarbon_intensity(country: str, region: Optional[str]) -> tuple[float, str]:
    """codecarbon's grid intensity (gCO2e/kWh) for a country and region, from its bundled tables.

    Asked through its own emissions engine with no Electricity Maps token, so it never goes to
    the network. An unknown country is an error (codecarbon would quietly use the world average);
    an unknown region falls back to the country's figure, and the label says so.
    """
    from codecarbon.core.emissions import Emissions  # type: ignore[import-not-found]
    from codecarbon.core.units import Energy as CCEnergy  # type: ignore[import-not-found]
    from codecarbon.external.geography import GeoMetadata  # type: ignore[import-not-found]
    from codecarbon.input import DataSource  # type: ignore[import-not-found]

    source = DataSource()
    mix = source.get_global_energy_mix_data()
    if country not in mix:
        near = ", ".join(code for code in sorted(mix) if code[:1] == country[:1])[:60]
        raise AdaptkitError(
            f"country ISO code {country!r} (ADAPTKIT_COUNTRY_ISO_CODE or country_iso_code): codecarbon has no grid "
            f"data for it; use a 3-letter code such as FRA, DEU or USA{f' (with {country[:1]}: {near})' if near else ''}")
    engine = Emissions(source)
    name = mix[country].get("country_name", country)
    national = engine.get_private_infra_emissions(CCEnergy.from_energy(kWh=1.0), GeoMetadata(country)) * 1000
    if region is None:
        return national, name
    log = logging.getLogger("codecarbon")
    level = log.level
    log.setLevel(logging.CRITICAL)  # an unknown region logs a traceback; the label says so instead
    try:
        regional = engine.get_private_infra_emissions(CCEnergy.from_energy(kWh=1.0),
                                                      GeoMetadata(country, name, region=region)) * 1000
    finally:
        log.setLevel(level)
    if regional == national:
        return national, f"{name}; it has no figure for region {region!r}, so the country's"
    return regional, f"{name}, {region}"


def _tracker_kwargs(module: Any, country: Optional[str], region: Optional[str]) -> dict[str, Any]:
    """Arguments that keep codecarbon offline, silent and file-free, for whichever version is installed.

    Everything that could reach the network or write a file is set explicitly, so that a user's
    ``.codecarbon.config`` or ``CODECARBON_*`` variables cannot turn it back on; arguments this
    version does not have are left out (3.x has ``output_methods``, 2.x the ``save_to_*`` flags).
    """
    wanted: dict[str, Any] = {
        "country_iso_code": country, "region": region, "cloud_provider": None, "cloud_region": None,
        "output_methods": [], "save_to_file": False, "save_to_api": False, "save_to_logger": False,
        "save_to_prometheus": False, "save_to_logfire": False, "emissions_endpoint": None,
        "electricitymaps_api_token": None, "output_dir": tempfile.gettempdir(), "log_level": "error",
        "tracking_mode": "process", "allow_multiple_runs": True, "force_carbon_intensity_g_co2e_kwh": None,
        "project_name": "adaptkit",
    }
    accepted = set(inspect.signature(module.emissions_tracker.BaseEmissionsTracker.__init__).parameters)
    accepted |= set(inspect.signature(module.OfflineEmissionsTracker.__init__).parameters)
    if "output_methods" in accepted:  # 3.x: the list decides, the deprecated flags would only warn
        accepted -= {"save_to_file", "save_to_api", "save_to_logger", "save_to_prometheus", "save_to_logfire"}
    elif "electricitymaps_api_token" not in accepted and "co2_signal_api_token" in accepted:
        wanted["co2_signal_api_token"] = None  # 2.x's name for the same online lookup
    return {key: value for key, value in wanted.items() if key in accepted}


def _start_codecarbon(country: Optional[str], region: Optional[str]) -> tuple[Optional[Any], str]:
    """A started offline tracker, or None and why not."""
    module, why = _codecarbon()
    if module is None:
        return None, why
    try:
        tracker = module.OfflineEmissionsTracker(**_tracker_kwargs(module, country, region))
        tracker.start()  # codecarbon swallows its own errors; a failed start shows at stop
        return tracker, ""
    except Exception as exc:
        return None, f"codecarbon failed to start ({type(exc).__name__}: {exc})"


def _stop_codecarbon(tracker: Any) -> tuple[Optional[float], str]:
    """kWh the tracker measured and how (its hardware list), or None and why not."""
    try:
        tracker.stop()
        data = getattr(tracker, "final_emissions_data", None)
        kwh = getattr(data, "energy_consumed", None)
        if kwh is None or not kwh >= 0:
            return None, "codecarbon measured nothing (it logs why at its own log level)"
        hardware = ", ".join(getattr(tracker, "_conf", {}).get("hardware") or []) or "its default hardware"
        version = getattr(data, "codecarbon_version", "") or ""
        # The split shows what dominates: on a short CPU run, RAM power x wall time often does.
        split = ", ".join(f"{part} {getattr(data, f'{part.lower()}_energy', 0.0) * 1000:.4g} Wh"
                          for part in ("CPU", "RAM", "GPU") if getattr(data, f"{part.lower()}_energy", None))
        return float(kwh), (f"codecarbon {version} offline tracker, this process: {hardware}"
                            + (f" ({split})" if split else "")).replace("  ", " ")
    except Exception as exc:
        return None, f"codecarbon failed ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------- intensity, power

def grid_intensity(grid_g_per_kwh: Optional[float] = None, country_iso_code: Optional[str] = None,
                   region: Optional[str] = None) -> float:
    """gCO2e per kWh: the stated figure, else codecarbon's for the country/region, else 475 (world)."""
    return _intensity(grid_g_per_kwh, country_iso_code, region)[0]


def _intensity(grid_g_per_kwh: Optional[float], country_iso_code: Optional[str],
               region: Optional[str]) -> tuple[float, str]:
    """The intensity and where it comes from, in words."""
    if grid_g_per_kwh is not None:
        return grid_g_per_kwh, f"{grid_g_per_kwh:g} gCO2e/kWh (given)"
    env = os.environ.get("ADAPTKIT_GRID_G_PER_KWH")
    if env:
        return float(env), f"{float(env):g} gCO2e/kWh (given)"
    country, place = _country(country_iso_code, region)
    if country is not None:
        if _codecarbon()[0] is not None:
            value, name = _codecarbon_intensity(country, place)
            return value, f"{value:.0f} gCO2e/kWh (codecarbon's figure for {name})"
        return GRID_G_PER_KWH, f"{GRID_G_PER_KWH:g} gCO2e/kWh (world average; country {country} needs codecarbon)"
    return GRID_G_PER_KWH, f"{GRID_G_PER_KWH:g} gCO2e/kWh (world average)"


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


def energy_of_cpu_seconds(cpu_seconds: float, grid_g_per_kwh: Optional[float] = None,
                          country_iso_code: Optional[str] = None, region: Optional[str] = None) -> Energy:
    """The default estimate for ``cpu_seconds`` of busy cores (used by advise for a projected epoch).

    A projection has no work to meter, so codecarbon cannot measure it; only the carbon uses its
    intensity when a country is configured.
    """
    wh = cpu_seconds * CPU_WATTS_PER_CORE / 3600.0
    intensity = grid_intensity(grid_g_per_kwh, country_iso_code, region)
    return Energy(cpu_seconds, wh, wh / 1000.0 * intensity, cpu_method(), cpu_seconds)


def cpu_method() -> str:
    return f"process CPU time x {CPU_WATTS_PER_CORE:g} W per busy core"


@dataclass
class EnergyMeter:
    """Context manager: ``with EnergyMeter() as meter: work()`` then ``meter.result`` (an ``Energy``).

    codecarbon measures when it is installed and works; the counters below are read as well, so
    that a codecarbon that fails at the end still leaves a figure (the method says which).
    """

    power_watts: Optional[float] = None
    device: str = "cpu"
    grid_g_per_kwh: Optional[float] = None
    result: Optional[Energy] = field(default=None, init=False)
    country_iso_code: Optional[str] = None
    region: Optional[str] = None

    def __enter__(self) -> "EnergyMeter":
        self._watts = given_power(self.power_watts)
        self._intensity = grid_intensity(self.grid_g_per_kwh, self.country_iso_code, self.region)  # fails before work
        self._domains = [] if self._watts is not None else _rapl_domains()
        self._start_uj = _rapl_read(self._domains) if self._domains else []
        self._gpu = self.device.startswith("cuda")
        self._start_mj = _nvml_millijoules() if self._gpu and self._watts is None else None
        # Started last, so that nothing above can fail and leave its threads running.
        self._tracker, self._why_not = (None, "") if self._watts is not None else \
            _start_codecarbon(*_country(self.country_iso_code, self.region))
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
        kwh, how = _stop_codecarbon(self._tracker) if self._tracker is not None else (None, self._why_not)
        if kwh is not None:
            joules, method = kwh * 3.6e6, how
        else:
            joules, method = self._own_reading(seconds, cpu)
            if how:
                method += f" ({how})"
        wh = joules / 3600.0  # the carbon's source is in describe_power, said once per report
        self.result = Energy(seconds, wh, wh / 1000.0 * self._intensity, method, cpu)

    def _own_reading(self, seconds: float, cpu: float) -> tuple[float, str]:
        """Joules from the given power, RAPL or CPU time, plus the GPU: the estimate without codecarbon."""
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
            if end is not None and self._start_mj is not None:
                joules += sum(after - before for before, after in zip(self._start_mj, end)) / 1000.0
                method += " + GPU energy counters (NVML)"
            else:
                import torch

                joules += seconds * GPU_WATTS * max(torch.cuda.device_count(), 1)
                method += f" + wall time x {GPU_WATTS:g} W per GPU (no NVML counter)"
        return joules, method


def describe_power(power_watts: Optional[float], device: str = "cpu", grid_g_per_kwh: Optional[float] = None,
                   country_iso_code: Optional[str] = None, region: Optional[str] = None) -> str:
    """One line saying where energy and carbon figures come from, for reports (starts no tracker)."""
    watts = given_power(power_watts)
    if watts is not None:
        text = f"wall time x {watts:g} W (given)"
    else:
        text = "Intel RAPL package counters (measured)" if _rapl_domains() else \
            f"{cpu_method()} (no readable RAPL counters)"
        if device.startswith("cuda"):
            text += " + GPU energy (NVML counters where readable, else wall time x 300 W per GPU)"
        module, why = _codecarbon()
        if module is not None:
            version = getattr(module, "__version__", "")
            text = (f"codecarbon {version} offline tracker for this process (RAPL where readable, else CPU load "
                    f"x TDP; RAM; GPUs through NVML) on measured runs; {text} on projections and where it fails")
        else:
            text += f" ({why})"
    return f"{text}; carbon at {_intensity(grid_g_per_kwh, country_iso_code, region)[1]}"
