"""``PickPlace-CRANE-X7`` as a ManiSkill3 environment (one class for CPU ``physx_cpu`` and batched ``physx_cuda``).

Design: the env only builds the scene and measures raw state; episodes arrive through ``reset(options=
{"episodes": ...})`` already sampled by the shared task (so the same seed gives the same episode on every backend)
and reward/success come from :meth:`crane_x7_vla.lift.tasks.PickPlaceTask.evaluate`. Everything stays a torch
tensor on the simulation device except the tiny (N, 3) task state, which crosses to numpy once per step for the
shared task math (cheap next to physics and rendering, and it keeps one definition of success).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import sapien
import torch
from mani_skill.envs.sapien_env import BaseEnv
from mani_skill.sensors.camera import CameraConfig
from mani_skill.utils.registration import register_env
from mani_skill.utils.structs.pose import Pose
from mani_skill.utils.structs.types import SimConfig
from transforms3d.euler import euler2quat

from crane_x7_vla.lift.maniskill.agent import AGENT_UID, CraneX7
from crane_x7_vla.lift.tasks import ENV_ID, PickPlaceTask, TaskState, get_task
from crane_x7_vla.lift.types import RewardMode
from crane_x7_vla.robot import GRIPPER_BASE_LINK, THIRD_PERSON_CAMERA, WRIST_CAMERA, CameraSpec

# Physics substeps per control tick. 30 Hz control x 20 = 600 Hz physics: close to MuJoCo's 500 Hz reference and
# stiff enough for the kp=1e3 servos on the light distal links.
SUBSTEPS = 20
CAMERA_UIDS = {"wrist": "wrist", "third_person": "third_person"}


def _camera_config(uid: str, spec: CameraSpec, size: tuple[int, int], mount: Any = None) -> CameraConfig:
    """SAPIEN cameras use the same body convention as :class:`CameraSpec` (x view, y left, z up)."""
    h, w = size
    if mount is not None:
        pose = sapien.Pose()  # the URDF carries the camera link at the spec's mount pose
    else:
        pose = sapien.Pose(p=list(spec.xyz), q=list(euler2quat(*spec.rpy)))  # sxyz = URDF rpy
    return CameraConfig(uid, pose, w, h, fov=math.radians(spec.fovy_deg), near=spec.near, far=spec.far, mount=mount)


@register_env(ENV_ID, max_episode_steps=200)
class PickPlaceCraneX7Env(BaseEnv):
    """Pick the red cube and put it on the green disc. ``agent`` is the CRANE-X7 (:class:`CraneX7`)."""

    SUPPORTED_ROBOTS: ClassVar[list[str]] = [AGENT_UID]
    SUPPORTED_REWARD_MODES = ("dense", "normalized_dense", "sparse", "none")
    agent: CraneX7

    def __init__(
        self,
        *args: Any,
        robot_uids: str = AGENT_UID,
        task: PickPlaceTask | None = None,
        lift_reward_mode: RewardMode = "binary",
        camera: str = "wrist",
        image_size: tuple[int, int] = (224, 224),
        control_freq: float = 30.0,
        **kwargs: Any,
    ) -> None:
        self.task: PickPlaceTask = task or get_task(ENV_ID)  # type: ignore[assignment]
        self.lift_reward_mode = lift_reward_mode
        if camera not in CAMERA_UIDS:
            raise ValueError(f"camera must be one of {sorted(CAMERA_UIDS)}, got {camera!r}")
        self.camera = camera
        self.image_size = image_size
        self._lift_control_freq = round(control_freq)
        super().__init__(*args, robot_uids=robot_uids, **kwargs)

    # ------------------------------------------------------------------ configuration
    @property
    def _default_sim_config(self) -> SimConfig:
        return SimConfig(sim_freq=self._lift_control_freq * SUBSTEPS, control_freq=self._lift_control_freq)

    @property
    def _default_sensor_configs(self) -> list[CameraConfig]:
        if self.camera == "wrist":
            return [_camera_config("wrist", WRIST_CAMERA, self.image_size, self.agent.camera_link)]
        return [_camera_config("third_person", THIRD_PERSON_CAMERA, self.image_size)]

    @property
    def _default_human_render_camera_configs(self) -> list[CameraConfig]:
        return [
            _camera_config("third_person", THIRD_PERSON_CAMERA, self.image_size),
            _camera_config("wrist", WRIST_CAMERA, self.image_size, self.agent.camera_link),
        ]

    # ------------------------------------------------------------------ scene
    def _load_agent(self, options: dict[str, Any]) -> None:
        super()._load_agent(options, sapien.Pose())  # base_link = world origin, standing on the table top (z = 0)

    def _load_scene(self, options: dict[str, Any]) -> None:
        t = self.task
        table = self.scene.create_actor_builder()
        table.add_box_collision(half_size=list(t.table_half))
        table.add_box_visual(half_size=list(t.table_half), material=sapien.render.RenderMaterial(base_color=list(t.table_rgba)))
        table.initial_pose = sapien.Pose(p=list(t.table_centre))
        self.table = table.build_static(name="table")

        h = t.cube_half_size
        cube = self.scene.create_actor_builder()
        density = t.cube_mass / (2 * h) ** 3
        cube.add_box_collision(half_size=[h] * 3, density=density)
        cube.add_box_visual(half_size=[h] * 3, material=sapien.render.RenderMaterial(base_color=list(t.cube_rgba)))
        cube.initial_pose = sapien.Pose(p=[0.27, 0.0, h])
        self.cube = cube.build(name="cube")

        goal = self.scene.create_actor_builder()
        # A flat disc drawn on the table (visual only). SAPIEN cylinders run along x: turn it upright.
        goal.add_cylinder_visual(
            radius=t.goal_radius, half_length=0.0005, pose=sapien.Pose(q=list(euler2quat(0, math.pi / 2, 0))),
            material=sapien.render.RenderMaterial(base_color=list(t.goal_rgba)),
        )
        goal.initial_pose = sapien.Pose(p=[0.27, 0.1, 0.0006])
        self.goal = goal.build_kinematic(name="goal")
        self.goal_pos = torch.zeros((self.num_envs, 3), device=self.device)  # (N, 3) goal centre, z = 0

    # ------------------------------------------------------------------ episodes
    def _initialize_episode(self, env_idx: torch.Tensor, options: dict[str, Any]) -> None:
        """``options["episodes"]``: dict of tensors for the envs in ``env_idx``: ``qpos`` (b, 8), ``cube_pose``
        (b, 7) p + wxyz, ``goal_pos`` (b, 3). Without it (direct gym use) episodes are sampled from the task."""
        episodes = options.get("episodes")
        if episodes is None:
            episodes = sample_episode_tensors(self.task, np.random.default_rng(), len(env_idx), 0.02)
        with torch.device(self.device):
            qpos = self.agent.articulation_qpos(torch.as_tensor(episodes["qpos"], dtype=torch.float32))  # (b, 9)
            self.agent.robot.set_qpos(qpos)
            self.agent.robot.set_qvel(torch.zeros_like(qpos))
            self.agent.set_drive_targets(qpos)
            cube = torch.as_tensor(episodes["cube_pose"], dtype=torch.float32)  # (b, 7)
            self.cube.set_pose(Pose.create_from_pq(cube[:, :3], cube[:, 3:]))
            self.cube.set_linear_velocity(torch.zeros((len(env_idx), 3)))
            self.cube.set_angular_velocity(torch.zeros((len(env_idx), 3)))
            goal = torch.as_tensor(episodes["goal_pos"], dtype=torch.float32)  # (b, 3)
            self.goal_pos[env_idx] = goal
            self.goal.set_pose(Pose.create_from_pq(goal + torch.tensor([0.0, 0.0, 0.0006])))

    # ------------------------------------------------------------------ measurements
    def task_state_tensors(self) -> dict[str, torch.Tensor]:
        """Raw task state on the sim device: tcp_pos, cube_pos, cube_quat (wxyz), goal_pos, gripper_q, is_grasped."""
        qpos = self.agent.robot.get_qpos()
        return {
            "tcp_pos": self.agent.tcp_pose.p,
            "cube_pos": self.cube.pose.p,
            "cube_quat": self.cube.pose.q,
            "goal_pos": self.goal_pos,
            "gripper_q": self.agent.lift_qpos(qpos)[:, 7],
            "is_grasped": self.agent.is_grasping(self.cube),
        }

    def evaluate(self) -> dict[str, Any]:
        raw = self.task_state_tensors()
        state = TaskState(**{k: raw[k].detach().cpu().numpy().astype(np.float64 if k != "is_grasped" else bool)
                             for k in ("tcp_pos", "cube_pos", "goal_pos", "gripper_q", "is_grasped")})
        reward, success, metrics = self.task.evaluate(state, self.lift_reward_mode)
        info: dict[str, Any] = {k: torch.as_tensor(np.asarray(v), device=self.device) for k, v in metrics.items()}
        info["success"] = torch.as_tensor(success, device=self.device)
        info["lift_reward"] = torch.as_tensor(reward, device=self.device)
        info["cube_quat"] = raw["cube_quat"]
        info["tcp_pos"] = raw["tcp_pos"]
        info["cube_pos"] = raw["cube_pos"]
        info["goal_pos"] = raw["goal_pos"]
        return info

    def _get_obs_extra(self, info: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"tcp_pos": info["tcp_pos"], "cube_pos": info["cube_pos"], "goal_pos": info["goal_pos"]}

    def compute_dense_reward(self, obs: Any, action: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        return info["lift_reward"]

    def compute_normalized_dense_reward(self, obs: Any, action: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
        return info["lift_reward"]  # the shared task's rewards are already in [0, 1]

    def gripper_pose_matrix(self) -> torch.Tensor:
        """(N, 4, 4) world pose of ``crane_x7_gripper_base_link``."""
        return self.agent.robot.links_map[GRIPPER_BASE_LINK].pose.to_transformation_matrix()


def sample_episode_tensors(task: PickPlaceTask, rng: np.random.Generator, n: int, noise: float) -> dict[str, np.ndarray]:
    """``n`` episodes from one generator (direct gym use only; the Lift adapter seeds env i with seed + i)."""
    return episodes_to_arrays(task, [task.sample_episode(rng, noise) for _ in range(n)])


def episodes_to_arrays(task: PickPlaceTask, specs: list[Any]) -> dict[str, np.ndarray]:
    """EpisodeSpecs -> ``qpos`` (b, 8), ``cube_pose`` (b, 7) and ``goal_pos`` (b, 3) arrays."""
    qpos = np.asarray([s.init_qpos for s in specs], dtype=np.float64)  # (b, 8)
    yaw = np.asarray([s.cube_yaw for s in specs])
    cube_xy = np.asarray([s.cube_xy for s in specs])
    cube_pose = np.concatenate(
        [cube_xy, np.full((len(specs), 1), task.cube_rest_z),
         np.stack([np.cos(yaw / 2), np.zeros_like(yaw), np.zeros_like(yaw), np.sin(yaw / 2)], axis=1)], axis=1)
    goal = np.concatenate([np.asarray([s.goal_xy for s in specs]), np.zeros((len(specs), 1))], axis=1)
    return {"qpos": qpos, "cube_pose": cube_pose, "goal_pos": goal}
