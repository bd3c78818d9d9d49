"""Energy comes from the work done, not from how long the process waited."""
from __future__ import annotations

import time

import pytest

from adaptkit.judge.energy import CPU_WATTS_PER_CORE, EnergyMeter


def test_waiting_costs_nothing_and_work_costs_its_cpu_time(monkeypatch):
    monkeypatch.delenv("ADAPTKIT_POWER_WATTS", raising=False)
    monkeypatch.setattr("adaptkit.judge.energy._rapl_domains", lambda: [])
    with EnergyMeter() as idle:
        time.sleep(0.3)
    with EnergyMeter() as busy:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    assert idle.result.seconds >= 0.3 and idle.result.wh < 0.1 * busy.result.wh
    assert busy.result.wh == pytest.approx(busy.result.cpu_seconds * CPU_WATTS_PER_CORE / 3600)
    assert "CPU time" in busy.result.method


def test_a_given_power_is_wall_time_times_that_power():
    with EnergyMeter(power_watts=36) as meter:
        time.sleep(0.1)
    assert meter.result.wh == pytest.approx(meter.result.seconds * 36 / 3600)
    assert meter.result.method == "wall time x 36 W (given)"
