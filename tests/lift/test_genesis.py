"""The shared conformance suite on the Genesis backend (CPU). Kernels are cached under $CRANE_X7_CACHE/genesis:
the first run compiles for minutes, later runs reuse the cache."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conformance import SimFactory, SimulatorConformance

from crane_x7_vla.lift.registry import create_simulator

pytestmark = pytest.mark.genesis

if importlib.util.find_spec("genesis") is None:
    pytest.skip("genesis-world is not installed (scripts/install.sh genesis)", allow_module_level=True)


class TestGenesisConformance(SimulatorConformance):
    @pytest.fixture(scope="class")
    def make_sim(self) -> SimFactory:
        return lambda config: create_simulator("genesis", config)


def test_camera_offset_looks_along_the_spec_view_axis() -> None:
    """Genesis cameras look along their -z: the offset must turn the spec's +x view axis into that -z."""
    from crane_x7_vla.lift.genesis.simulator import camera_offset
    from crane_x7_vla.robot import WRIST_CAMERA, rpy_to_matrix

    t = camera_offset(WRIST_CAMERA)
    view_in_parent = rpy_to_matrix(WRIST_CAMERA.rpy)[:, 0]
    np.testing.assert_allclose(-t[:3, 2], view_in_parent, atol=1e-9)
    np.testing.assert_allclose(t[:3, 1], rpy_to_matrix(WRIST_CAMERA.rpy)[:, 2], atol=1e-9)  # up = body z
    np.testing.assert_allclose(t[:3, 3], WRIST_CAMERA.xyz)
