"""The shared conformance suite on the MuJoCo backend, plus MuJoCo-specific behaviour."""

from __future__ import annotations

import importlib.util

import pytest
from conformance import SimFactory, SimulatorConformance

from crane_x7_vla.lift.registry import create_simulator

if importlib.util.find_spec("mujoco") is None:  # not importorskip: mujoco must be imported after GL selection
    pytest.skip("mujoco is not installed (pip install 'crane-x7-vla[mujoco]')", allow_module_level=True)


class TestMujocoConformance(SimulatorConformance):
    @pytest.fixture(scope="class")
    def make_sim(self) -> SimFactory:
        return lambda config: create_simulator("mujoco", config)
