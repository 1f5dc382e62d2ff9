"""Process-parallel simulation: one :class:`Simulator` whose envs are spread over worker processes.

``create_simulator(name, config, workers=W)`` with ``W > 1`` builds a :class:`ParallelSimulator`: the
``config.num_envs`` envs are split into ``min(W, num_envs)`` contiguous chunks, and worker ``k`` hosts an
in-process ``create_simulator(name, replace(config, num_envs=chunk_k))`` in its own process. A CPU backend
(MuJoCo) is bound by one Python process doing physics and rendering serially; W processes step their chunks at
the same time.

Semantics are those of one in-process simulator of ``num_envs`` envs: env ``i`` is seeded with ``seed + i``
(worker ``k`` owning envs ``[a, b)`` is reset with ``seed + a``), partial resets and ``set_qpos`` reach only the
owning workers, and every call returns the full batch. Actions are validated here before any worker sees them,
so a rejected action (:class:`~crane_x7_vla.lift.errors.ActionError`) leaves every env untouched.

Design: the ``spawn`` start method (a fresh interpreter, safe next to torch/CUDA/EGL in the parent), one
``Pipe`` per worker, and every call sends its command to all workers before collecting any reply, so the
workers run concurrently. The observation images (the bulk of every reply: 16 envs x 224 x 224 x 3 = 2.4 MB a
step) travel through one shared-memory block instead of the pipes: each worker copies its envs' frames into its
slice, and the parent copies the whole batch out once before its next command (16 envs in 8 workers on the
16-core H200 host, one run: ~1700 env-steps/s with the frames pickled through the pipes, ~2400 through shared
memory, ~1900 in one process; docs/performance.md). A worker's exception comes back pickled and is re-raised
with the same type, its message naming the worker; a worker that dies is a :class:`RuntimeError` (never a hang).
Workers are daemon processes, closed by :meth:`ParallelSimulator.close`, on garbage collection and at interpreter
exit; a worker also exits when the parent's end of its pipe closes. The split/merge rules are small pure
functions below.

The spawned workers import the parent's ``__main__`` module: scripts that build a ParallelSimulator need the
usual ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import pickle
import signal
import traceback
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from numbers import Number
from typing import Any, NoReturn

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crane_x7_vla.lift.actions import validate_action
from crane_x7_vla.lift.interface import Simulator
from crane_x7_vla.lift.types import Observation, SimulatorConfig, StepResult

POLL_SECONDS = 0.2  # how often a waiting parent checks that the worker it waits for is alive
CLOSE_SECONDS = 10.0  # a closing worker gets this long to close its simulator before it is terminated
# Simulator methods a worker runs on request (``reset`` is handled on its own).
_METHODS = frozenset({"step", "get_observation", "get_qpos", "get_qvel", "set_qpos", "gripper_pose", "render"})

Bounds = list[tuple[int, int]]


# ----------------------------------------------------------------------------------------------
# Pure helpers: how envs are split over workers and how the workers' results are merged.
# ----------------------------------------------------------------------------------------------
def split_counts(num_envs: int, workers: int) -> list[int]:
    """Env counts of ``min(workers, num_envs)`` contiguous chunks, as even as possible, the larger ones first."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = min(workers, num_envs)
    base, extra = divmod(num_envs, n)
    return [base + (k < extra) for k in range(n)]


def env_bounds(counts: Sequence[int]) -> Bounds:
    """[start, stop) global env range of each chunk."""
    stops = np.cumsum(counts).tolist()
    return [(stop - c, stop) for c, stop in zip(counts, stops, strict=True)]


def route_env_idx(env_idx: ArrayLike, bounds: Bounds) -> list[tuple[NDArray[np.bool_], NDArray[np.int64]]]:
    """For each chunk: (which entries of ``env_idx`` it owns, their local indices in ``env_idx``'s order).

    Raises ValueError for an index outside ``[0, num_envs)``.
    """
    idx = np.atleast_1d(np.asarray(env_idx, dtype=np.int64)).reshape(-1)
    num_envs = bounds[-1][1] if bounds else 0
    if idx.size and (idx.min() < 0 or idx.max() >= num_envs):
        raise ValueError(f"env_idx {idx.tolist()} out of range for num_envs={num_envs}")
    out = []
    for start, stop in bounds:
        mask = (idx >= start) & (idx < stop)
        out.append((mask, idx[mask] - start))
    return out


def _is_number(value: Any) -> bool:
    if not isinstance(value, Number | np.generic | np.ndarray):
        return False
    arr = np.asarray(value)
    return arr.ndim == 0 and arr.dtype.kind in "biufc"


def _same(values: Sequence[Any]) -> bool:
    first = values[0]
    try:
        return all(bool(np.all(v == first)) and type(v) is type(first) for v in values[1:])
    except Exception:  # values that do not compare (== raised or gave something odd)
        return False


def merge_values(values: Sequence[Any], counts: Sequence[int], key: str = "value") -> Any:
    """Merge one entry of every chunk's result into the value for the whole batch.

    Arrays (ndim >= 1) are per env: concatenated along axis 0. Lists and tuples are per-env sequences:
    concatenated into a list. Dicts merge key by key. Anything else is a batch-level value: kept when every
    chunk reports the same, otherwise spread to one entry per env (a numpy array for numbers, a list otherwise).
    """
    first = values[0]
    if isinstance(first, np.ndarray) and first.ndim >= 1:
        if not all(isinstance(v, np.ndarray) and v.ndim >= 1 for v in values):
            raise ValueError(f"{key!r}: some workers return an array, others {[type(v).__name__ for v in values]}")
        return np.concatenate(values, axis=0)
    if isinstance(first, list | tuple):
        return [item for v in values for item in v]
    if isinstance(first, dict):
        return merge_dicts(values, counts, key)
    if _same(values):
        return first
    if all(_is_number(v) for v in values):
        return np.repeat(np.asarray(values), counts)
    return [v for v, c in zip(values, counts, strict=True) for _ in range(c)]


def merge_dicts(dicts: Sequence[dict[str, Any]], counts: Sequence[int], where: str = "info") -> dict[str, Any]:
    """Key-by-key :func:`merge_values` of the chunks' dicts (which must have the same keys)."""
    keys = list(dicts[0])
    for k, d in enumerate(dicts[1:], start=1):
        if set(d) != set(keys):
            raise ValueError(f"{where}: worker {k} returns keys {sorted(d)}, worker 0 {sorted(keys)}")
    return {key: merge_values([d[key] for d in dicts], counts, f"{where}[{key!r}]") for key in keys}


def merge_observations(parts: Sequence[Observation], counts: Sequence[int]) -> Observation:
    """One batch :class:`Observation` from the chunks' (in env order)."""
    depths = [p.depth_image for p in parts]
    if any(d is None for d in depths) and not all(d is None for d in depths):
        raise ValueError("some workers return a depth image and others do not")
    return Observation(
        rgb_image=np.concatenate([p.rgb_image for p in parts], axis=0),
        qpos=np.concatenate([p.qpos for p in parts], axis=0),
        qvel=np.concatenate([p.qvel for p in parts], axis=0),
        depth_image=None if depths[0] is None else np.concatenate(depths, axis=0),  # type: ignore[arg-type]
        extra=merge_dicts([p.extra for p in parts], counts, "Observation.extra"),
    )


def merge_step_results(parts: Sequence[StepResult], counts: Sequence[int]) -> StepResult:
    """One batch :class:`StepResult` from the chunks' (in env order)."""
    return StepResult(
        observation=merge_observations([p.observation for p in parts], counts),
        reward=np.concatenate([p.reward for p in parts], axis=0),
        terminated=np.concatenate([p.terminated for p in parts], axis=0),
        truncated=np.concatenate([p.truncated for p in parts], axis=0),
        info=merge_dicts([p.info for p in parts], counts),
    )


def describe_envs(start: int, stop: int) -> str:
    return f"env {start}" if stop - start == 1 else f"envs {start}-{stop - 1}"


# ----------------------------------------------------------------------------------------------
# The worker process
# ----------------------------------------------------------------------------------------------
class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process (the ``__cause__`` of the re-raised one)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.tb}\"\"\""


def _send_error(conn: Connection, exc: BaseException) -> None:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        pickle.loads(pickle.dumps(exc))  # some exception types do not survive pickling
        payload: BaseException = exc
    except Exception:
        payload = RuntimeError(f"{type(exc).__name__}: {exc}")
    conn.send(("error", payload, tb))


def _reset(sim: Simulator, seed: int, env_idx: NDArray[np.int64] | None,
           last_info: dict[str, Any]) -> tuple[Observation, dict[str, Any]]:
    if env_idx is None or env_idx.size:
        return sim.reset(seed=seed, env_idx=env_idx)
    # A partial reset that touches none of this worker's envs: the batch still needs their observation and
    # info. Resetting "no env" does exactly that on MuJoCo; backends that reject an empty env_idx report their
    # current observation and the info of their last reset or step.
    try:
        return sim.reset(seed=seed, env_idx=env_idx)
    except ValueError:
        return sim.get_observation(), last_info


def image_shape(config: SimulatorConfig) -> tuple[int, int, int, int]:
    """(N, H, W, 3): the observation images of ``config`` (what the shared-memory block holds)."""
    return (config.num_envs, *config.image_size, 3)


def observation_of(result: Any) -> Observation | None:
    """The observation in a worker's result: a StepResult's, an Observation, or a reset's (obs, info)."""
    if isinstance(result, StepResult):
        return result.observation
    if isinstance(result, Observation):
        return result
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Observation):
        return result[0]
    return None


def with_images(result: Any, images: NDArray[np.uint8]) -> Any:
    """``result`` (see :func:`observation_of`) with its observation's ``rgb_image`` replaced by ``images``."""
    obs = observation_of(result)
    assert obs is not None
    new = dataclasses.replace(obs, rgb_image=images)
    if isinstance(result, StepResult):
        return dataclasses.replace(result, observation=new)
    return new if isinstance(result, Observation) else (new, result[1])


def _frames_to_shared(result: Any, frames: NDArray[np.uint8] | None) -> tuple[Any, bool]:
    """Copy the observation images of ``result`` into ``frames`` (this worker's slice of the shared block).

    Returns the result with an empty placeholder image, and True; or the result as it is, and False, when it holds
    no observation or its images are not the configured ones.
    """
    obs = observation_of(result)
    if frames is None or obs is None or obs.rgb_image.shape != frames.shape or obs.rgb_image.dtype != np.uint8:
        return result, False
    frames[...] = obs.rgb_image
    return with_images(result, np.zeros((0,), dtype=np.uint8)), True


def _worker_main(conn: Connection, name: str, config: SimulatorConfig, shm_name: str | None, offset: int) -> None:
    """Host one in-process simulator and serve the parent's requests until "close" or the pipe closes.

    Replies: ("ok", result, images_in_shared_memory) or ("error", exception, traceback text).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the workers
    from crane_x7_vla.lift.registry import create_simulator

    shm = SharedMemory(name=shm_name) if shm_name is not None else None
    frames = (np.ndarray(image_shape(config), dtype=np.uint8, buffer=shm.buf, offset=offset)
              if shm is not None else None)
    try:
        sim = create_simulator(name, config)
    except Exception as exc:
        _send_error(conn, exc)
        conn.close()
        return
    conn.send(("ok", None, False))
    last_info: dict[str, Any] = {}
    try:
        while True:
            try:
                command, args, kwargs = conn.recv()
            except (EOFError, OSError):  # the parent is gone
                break
            if command == "close":
                break
            try:
                if command == "reset":
                    seed, env_idx = args
                    result: Any = _reset(sim, seed, env_idx, last_info)
                    last_info = result[1]
                elif command in _METHODS:
                    result = getattr(sim, command)(*args, **kwargs)
                    if command == "step":
                        last_info = result.info
                else:
                    raise ValueError(f"unknown simulator worker command {command!r}")
            except Exception as exc:
                _send_error(conn, exc)
                continue
            try:
                conn.send(("ok", *_frames_to_shared(result, frames)))
            except (pickle.PicklingError, TypeError, AttributeError) as exc:  # raised before anything is sent
                _send_error(conn, exc)
    finally:
        try:
            sim.close()
        finally:
            conn.close()
            del frames  # a buffer still exported would keep the block from closing
            if shm is not None:
                shm.close()


def _shutdown(conns: list[Connection], procs: list[BaseProcess], shm: SharedMemory | None) -> None:
    """Ask every worker to close, wait a little, terminate the ones still running, free the shared block."""
    for conn in conns:
        try:
            conn.send(("close", (), {}))
        except (OSError, ValueError):  # already dead or closed
            pass
    for proc in procs:
        proc.join(CLOSE_SECONDS)
        if proc.is_alive():
            proc.terminate()
            proc.join(1.0)
    for conn in conns:
        conn.close()
    if shm is not None:
        try:
            shm.close()
        except BufferError:  # a view of it is still alive somewhere: the mapping goes with the last one
            pass
        shm.unlink()


# ----------------------------------------------------------------------------------------------
# The parent side
# ----------------------------------------------------------------------------------------------
class ParallelSimulator(Simulator):
    """``config.num_envs`` envs of backend ``name`` spread over ``min(workers, num_envs)`` processes.

    See the module docstring; build it with ``create_simulator(name, config, workers=W)``.
    """

    def __init__(self, name: str, config: SimulatorConfig, workers: int) -> None:
        super().__init__(config)
        self.name = name
        self.counts = split_counts(config.num_envs, workers)
        self.bounds = env_bounds(self.counts)
        self._seed_rng = np.random.default_rng()
        self._closed = False
        ctx = mp.get_context("spawn")
        self._conns: list[Connection] = []
        self._procs: list[BaseProcess] = []
        shape = image_shape(config)
        # The batch of observation images the workers write (read only between a reply and the next command).
        self._shm = (SharedMemory(create=True, size=int(np.prod(shape)))
                     if config.render_images and np.prod(shape) > 0 else None)
        # Registered before any worker starts: whatever happens next, the workers are closed with this object.
        self._finalizer = weakref.finalize(self, _shutdown, self._conns, self._procs, self._shm)
        try:
            frame_bytes = int(np.prod(shape[1:]))
            for k, count in enumerate(self.counts):
                parent_end, child_end = ctx.Pipe(duplex=True)
                sub_config = dataclasses.replace(config, num_envs=count)
                shm_name = self._shm.name if self._shm is not None else None
                proc = ctx.Process(target=_worker_main,
                                   args=(child_end, name, sub_config, shm_name, self.bounds[k][0] * frame_bytes),
                                   name=f"crane-x7-sim-{name}-{k}", daemon=True)
                proc.start()
                child_end.close()  # the worker's end lives in the worker: EOF here once it dies
                self._conns.append(parent_end)
                self._procs.append(proc)
            self._collect(list(range(len(self.counts))))  # every worker built its simulator
        except BaseException:
            self.close()
            raise

    @property
    def workers(self) -> int:
        return len(self.counts)

    # ------------------------------------------------------------------------------------------
    # Messaging
    # ------------------------------------------------------------------------------------------
    def _where(self, k: int) -> str:
        return f"simulator worker {k} ({describe_envs(*self.bounds[k])}) of {self.name!r}"

    def _dead(self, k: int) -> NoReturn:
        code = self._procs[k].exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        self.close()
        raise RuntimeError(f"{self._where(k)} {how} (out of memory? a crash in the backend?); the parallel "
                           "simulator is closed, build a new one")

    def _send(self, k: int, command: str, *args: Any, **kwargs: Any) -> None:
        try:
            self._conns[k].send((command, args, kwargs))
        except (OSError, ValueError):  # BrokenPipeError: the worker is gone
            self._dead(k)

    def _receive(self, k: int) -> tuple[Any, ...]:
        conn, proc = self._conns[k], self._procs[k]
        while not conn.poll(POLL_SECONDS):
            if not proc.is_alive() and not conn.poll(0):
                self._dead(k)
        try:
            reply: tuple[Any, ...] = conn.recv()
        except (EOFError, OSError):
            self._dead(k)
        return reply

    def _collect(self, workers: Sequence[int]) -> list[Any]:
        """Every listed worker's reply (all are read, keeping the pipes in step); the first error is raised."""
        replies = [self._receive(k) for k in workers]
        for k, reply in zip(workers, replies, strict=True):
            if reply[0] == "error":
                self._reraise(k, reply[1], reply[2])
        return [self._frames_from_shared(k, reply[1]) if reply[2] else reply[1]
                for k, reply in zip(workers, replies, strict=True)]

    def _frames_from_shared(self, k: int, result: Any) -> Any:
        """Put worker ``k``'s slice of the shared images (a view; merging copies it) back into ``result``."""
        assert self._shm is not None
        frames = np.ndarray(image_shape(self.config), dtype=np.uint8, buffer=self._shm.buf)
        start, stop = self.bounds[k]
        return with_images(result, frames[start:stop])

    def _reraise(self, k: int, exc: BaseException, tb: str) -> NoReturn:
        message = f"{self._where(k)}: {exc}"
        try:
            again = type(exc)(message)
        except Exception:  # an exception type that is not built from one message
            again = RuntimeError(f"{self._where(k)} raised {type(exc).__name__}: {exc}")
        raise again from RemoteTraceback(tb)

    def _call(self, command: str, per_worker: Sequence[tuple[Any, ...]] | None = None,
              workers: Sequence[int] | None = None, **kwargs: Any) -> list[Any]:
        """Send ``command`` (with each worker's own args) to ``workers`` (default all), then collect."""
        self._check_open()
        ks = list(range(self.workers)) if workers is None else list(workers)
        for j, k in enumerate(ks):
            self._send(k, command, *(per_worker[j] if per_worker is not None else ()), **kwargs)
        return self._collect(ks)

    # ------------------------------------------------------------------------------------------
    # The Simulator interface
    # ------------------------------------------------------------------------------------------
    def reset(
        self, seed: int | None = None, env_idx: NDArray[np.int64] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        self._check_open()
        if seed is None:  # one base seed per reset, as in-process: env i still gets base + i
            seed = int(self._seed_rng.integers(0, 2**31 - 1))
        seed = int(seed)
        if env_idx is None:
            local: list[NDArray[np.int64] | None] = [None] * self.workers
        else:
            local = [np.unique(idx) for _, idx in route_env_idx(env_idx, self.bounds)]
        starts = [start for start, _ in self.bounds]
        replies = self._call("reset", [(seed + start, idx) for start, idx in zip(starts, local, strict=True)])
        obs = merge_observations([r[0] for r in replies], self.counts)
        return obs, merge_dicts([r[1] for r in replies], self.counts)

    def step(self, action: ArrayLike) -> StepResult:
        self._check_open()
        n = self.num_envs
        # Validate the whole batch first: a bad row must not let the other workers step.
        qpos = np.zeros((n, 8)) if self.config.control_mode == "pd_joint_delta_pos" else None
        validate_action(action, n, self.config.control_mode, qpos)
        a = np.asarray(action, dtype=np.float64)
        if a.ndim == 1:
            a = a[None]
        replies = self._call("step", [(a[start:stop],) for start, stop in self.bounds])
        return merge_step_results(replies, self.counts)

    def get_observation(self) -> Observation:
        return merge_observations(self._call("get_observation"), self.counts)

    def get_qpos(self) -> NDArray[np.float32]:
        return np.concatenate(self._call("get_qpos"), axis=0)

    def get_qvel(self) -> NDArray[np.float32]:
        return np.concatenate(self._call("get_qvel"), axis=0)

    def set_qpos(self, qpos: ArrayLike, env_idx: NDArray[np.int64] | None = None) -> None:
        self._check_open()
        idx = np.arange(self.num_envs) if env_idx is None else np.atleast_1d(np.asarray(env_idx, dtype=np.int64))
        routes = route_env_idx(idx, self.bounds)
        q = np.asarray(qpos, dtype=np.float64)
        if q.ndim == 1:
            q = np.broadcast_to(q, (len(idx), q.shape[0]))
        if q.shape != (len(idx), 8) or not np.isfinite(q).all():
            raise ValueError(f"set_qpos needs finite ({len(idx)}, 8) joint positions, got shape {q.shape}")
        owners = [k for k, (mask, _) in enumerate(routes) if mask.any()]
        self._call("set_qpos", [(q[routes[k][0]], routes[k][1]) for k in owners], workers=owners)

    def gripper_pose(self) -> NDArray[np.float64]:
        return np.concatenate(self._call("gripper_pose"), axis=0)

    def render(self, camera: str = "third_person", **kwargs: Any) -> NDArray[np.uint8]:
        """(N, H, W, 3) uint8 image of ``camera`` (keyword options, e.g. MuJoCo's height/width, pass through)."""
        return np.concatenate(self._call("render", [(camera,)] * self.workers, **kwargs), axis=0)

    def close(self) -> None:
        """Close every worker's simulator and end the workers (idempotent)."""
        self._closed = True
        self._finalizer()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the simulator is closed")
