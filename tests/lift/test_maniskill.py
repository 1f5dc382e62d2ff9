"""The shared conformance suite and the scripted expert on the ManiSkill3 backend (CPU: physx_cpu + lavapipe)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conformance import SimFactory, SimulatorConformance

from crane_x7_vla.lift.registry import create_simulator
from crane_x7_vla.lift.types import SimulatorConfig

pytestmark = pytest.mark.maniskill

if importlib.util.find_spec("mani_skill") is None:
    pytest.skip("mani_skill is not installed (scripts/install.sh maniskill)", allow_module_level=True)


class TestManiSkillConformance(SimulatorConformance):
    @pytest.fixture(scope="class")
    def make_sim(self) -> SimFactory:
        return lambda config: create_simulator("maniskill", config)


def test_scripted_expert_succeeds_on_maniskill() -> None:
    """The backend-agnostic expert must pick and place in >= 80% of 20 seeded episodes (physics match MuJoCo)."""
    from crane_x7_vla.lift.expert import ScriptedExpert

    config = SimulatorConfig(num_envs=1, render_images=False, max_episode_steps=160)
    sim = create_simulator("maniskill", config)
    expert = ScriptedExpert(1, config.sim_rate)
    successes = []
    try:
        for seed in range(20):
            obs, _ = sim.reset(seed=seed)
            expert.reset()
            done = False
            ok = False
            while not done:
                result = sim.step(expert.act(obs))
                obs = result.observation
                ok = bool(result.terminated[0])
                done = ok or bool(result.truncated[0])
            successes.append(ok)
    finally:
        sim.close()
    rate = float(np.mean(successes))
    assert rate >= 0.8, f"expert success {rate:.0%} over 20 episodes: {successes}"
