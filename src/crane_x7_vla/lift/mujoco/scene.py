"""The PickPlace scene as MJCF (pure string building): the generated robot + table, cube and goal disc.

The goal disc is a mocap body so each MjData (one per env) can place its own goal on one shared MjModel.
"""

from __future__ import annotations

from crane_x7_vla.lift.tasks import PickPlaceTask
from crane_x7_vla.robot import model

CUBE_BODY = "cube"
CUBE_GEOM = "cube"
GOAL_BODY = "goal"
TABLE_GEOM = "table"
SCENE_FRICTION = 1.0


def _f(values: tuple[float, ...]) -> str:
    return " ".join(f"{v:.9g}" for v in values)


def scene_xml(task: PickPlaceTask, timestep: float) -> str:
    """Full MJCF of robot + task scene with the given physics ``timestep``."""
    col = f'contype="{model.SCENE_CONTYPE}" conaffinity="{model.SCENE_CONAFFINITY}"'
    h = task.cube_half_size
    worldbody = f"""
    <light name="key" pos="0.3 -0.3 1.2" dir="-0.2 0.25 -1" directional="true" diffuse="0.7 0.7 0.7" castshadow="false"/>
    <light name="fill" pos="0.8 0.4 1.0" dir="-0.5 -0.3 -1" directional="true" diffuse="0.3 0.3 0.3" castshadow="false"/>
    <geom name="{TABLE_GEOM}" type="box" size="{_f(task.table_half)}" pos="{_f(task.table_centre)}"
          rgba="{_f(task.table_rgba)}" {col} friction="{SCENE_FRICTION} 0.005 0.0001"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" rgba="0.35 0.35 0.38 1" {col}/>
    <body name="{CUBE_BODY}" pos="0.3 0 {h:.9g}">
      <freejoint name="cube_joint"/>
      <geom name="{CUBE_GEOM}" type="box" size="{h:.9g} {h:.9g} {h:.9g}" mass="{task.cube_mass:.9g}"
            rgba="{_f(task.cube_rgba)}" {col} friction="{SCENE_FRICTION} 0.005 0.0001" condim="4"/>
    </body>
    <body name="{GOAL_BODY}" mocap="true" pos="0.3 0.1 0.0005">
      <geom name="goal" type="cylinder" size="{task.goal_radius:.9g} 0.0005" rgba="{_f(task.goal_rgba)}"
            contype="0" conaffinity="0"/>
    </body>"""
    return model.mjcf(worldbody=worldbody, timestep=timestep, model_name="crane_x7_pick_place")
