"""Energy comes from the work done, not from how long the process waited."""
from __future__ import annotations

import socket
import sys
import time

import pytest

from adaptkit.errors import AdaptkitError
from adaptkit.judge import energy
from adaptkit.judge.energy import CPU_WATTS_PER_CORE, GRID_G_PER_KWH, EnergyMeter, describe_power, grid_intensity

ENERGY_ENV = ("ADAPTKIT_POWER_WATTS", "ADAPTKIT_GRID_G_PER_KWH", "ADAPTKIT_COUNTRY_ISO_CODE", "ADAPTKIT_REGION")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ENERGY_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def no_codecarbon(clean_env):
    """The import fails as it does where codecarbon is not installed."""
    clean_env.setitem(sys.modules, "codecarbon", None)
    return clean_env


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_waiting_costs_nothing_and_work_costs_its_cpu_time(no_codecarbon):
    no_codecarbon.setattr("adaptkit.judge.energy._rapl_domains", lambda: [])
    with EnergyMeter() as idle:
        time.sleep(0.3)
    with EnergyMeter() as work:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    assert idle.result.seconds >= 0.3 and idle.result.wh < 0.1 * work.result.wh
    assert work.result.wh == pytest.approx(work.result.cpu_seconds * CPU_WATTS_PER_CORE / 3600)
    assert "CPU time" in work.result.method and "(codecarbon not installed)" in work.result.method


def test_a_given_power_is_wall_time_times_that_power():
    with EnergyMeter(power_watts=36) as meter:
        time.sleep(0.1)
    assert meter.result.wh == pytest.approx(meter.result.seconds * 36 / 3600)
    assert meter.result.method == "wall time x 36 W (given)"


def test_codecarbon_measures_offline_and_writes_no_file(clean_env, tmp_path):
    pytest.importorskip("codecarbon")
    clean_env.chdir(tmp_path)
    # A user's codecarbon settings asking for a CSV and the online API must not win over adaptkit's.
    clean_env.setenv("CODECARBON_OUTPUT_METHODS", "csv,api")
    clean_env.setenv("CODECARBON_SAVE_TO_FILE", "true")
    tried = []

    def refuse(*args, **kwargs):
        tried.append(args)
        raise OSError("no network in this test")

    clean_env.setattr(socket.socket, "connect", refuse)
    clean_env.setattr(socket, "getaddrinfo", refuse)
    with EnergyMeter() as idle:
        time.sleep(0.4)
    with EnergyMeter() as work:
        busy(0.4)
    assert "codecarbon" in work.result.method and "codecarbon" in idle.result.method
    assert work.result.wh > idle.result.wh > 0  # RAM costs while waiting; the busy CPU adds to it
    assert work.result.g_co2e == pytest.approx(work.result.wh / 1000 * GRID_G_PER_KWH)
    assert tried == [] and list(tmp_path.iterdir()) == []


def test_a_codecarbon_that_fails_leaves_the_estimate_and_says_why(clean_env):
    class Broken:
        final_emissions_data = None

        def stop(self):
            raise PermissionError("/sys/class/powercap/intel-rapl:0/energy_uj")

    clean_env.setattr(energy, "_rapl_domains", lambda: [])
    clean_env.setattr(energy, "_start_codecarbon", lambda country, region: (Broken(), ""))
    with EnergyMeter() as meter:
        busy(0.2)
    assert meter.result.wh == pytest.approx(meter.result.cpu_seconds * CPU_WATTS_PER_CORE / 3600)
    assert meter.result.method.startswith("process CPU time")
    assert "codecarbon failed (PermissionError" in meter.result.method


def test_a_country_takes_codecarbons_intensity(clean_env):
    pytest.importorskip("codecarbon")
    france = grid_intensity(country_iso_code="fra")
    assert 10 < france < 150  # nuclear and hydro: far below the 475 world average
    assert grid_intensity(country_iso_code="USA", region="California") < grid_intensity(country_iso_code="USA")
    assert grid_intensity(36.0, country_iso_code="FRA") == 36.0  # a stated figure wins
    clean_env.setenv("ADAPTKIT_COUNTRY_ISO_CODE", "FRA")
    assert grid_intensity() == france
    assert "codecarbon's figure for France" in describe_power(None)
    with EnergyMeter() as meter:
        busy(0.1)
    assert meter.result.g_co2e == pytest.approx(meter.result.wh / 1000 * france)


def test_an_unknown_country_is_refused_before_the_work(clean_env):
    pytest.importorskip("codecarbon")
    ran = []
    with pytest.raises(AdaptkitError, match="country ISO code 'XYZ'.*no grid data"):
        with EnergyMeter(country_iso_code="XYZ"):
            ran.append(1)
    assert ran == []


def test_without_codecarbon_a_country_falls_back_to_the_world_average(no_codecarbon):
    assert grid_intensity(country_iso_code="FRA") == GRID_G_PER_KWH
    text = describe_power(None, country_iso_code="FRA")
    assert "codecarbon not installed" in text and "country FRA needs codecarbon" in text
