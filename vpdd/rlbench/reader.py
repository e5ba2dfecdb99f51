"""RLBench demonstrations in PerAct's on-disk format, read without RLBench, PyRep or CoppeliaSim.

Layout (PerAct's pre-generated data; RLBench's ``dataset_generator`` with all variations mixed)::

    <root>/<task>/all_variations/episodes/episode<N>/
        front_rgb/0.png 1.png ...             one PNG per time step and camera (128x128 in PerAct's data)
        left_shoulder_rgb/  right_shoulder_rgb/  wrist_rgb/   (overhead_rgb/ in some datasets)
        low_dim_obs.pkl                       a pickled ``rlbench.demo.Demo``: a list of
                                              ``rlbench.backend.observation.Observation`` (gripper_pose
                                              (7: xyz + quaternion xyzw), gripper_open, joint_velocities,
                                              gripper_joint_positions, ...; the image fields are None)
        variation_descriptions.pkl            a list of instruction strings for the episode's variation
        variation_number.pkl                  the variation index (int)

**Safety.** A pickle can run any code when loaded. :class:`SafeUnpickler` overrides
``pickle.Unpickler.find_class`` with an allow-list: RLBench's ``Demo`` and ``Observation`` map to the plain
stand-ins below (attribute bags; nothing of RLBench is imported), numpy's array/scalar/dtype
reconstruction helpers map to the real numpy functions, and a few inert builtins are allowed. Any other
global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...) is refused with
:class:`UnsafePickleError` naming the file and the global *before* anything is called, and persistent
ids are refused too. Nothing from the file is executed.

**Validation.** :func:`load_episode` checks that every requested camera folder exists, that its PNGs are
named ``0.png .. (T-1).png`` with T equal to the number of observations, that all frames of a camera have
one size, and that each observation holds the low-dimensional fields the later stages read. Every error is
a :class:`PerActFormatError` naming the episode folder and what was expected.
"""

from __future__ import annotations

import importlib
import io
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpdd.data.episodes import DataFormatError

log = logging.getLogger(__name__)

CAMERAS = ("front", "left_shoulder", "right_shoulder", "wrist")  # the four views VPDD uses
ALL_CAMERAS = (*CAMERAS, "overhead")  # RLBench's cameras
EPISODES_SUBDIR = Path("all_variations") / "episodes"
LOW_DIM_PICKLE = "low_dim_obs.pkl"
DESCRIPTIONS_PICKLE = "variation_descriptions.pkl"
VARIATION_NUMBER_PICKLE = "variation_number.pkl"
IMAGE_NAME = re.compile(r"^(\d+)\.png$")
EPISODE_NAME = re.compile(r"^episode(\d+)$")
# the low-dimensional fields every observation must carry, with their per-step length (None: any length)
REQUIRED_FIELDS = {"gripper_pose": 7, "gripper_open": None, "joint_velocities": None, "gripper_joint_positions": None}


class PerActFormatError(DataFormatError):
    """An episode folder or file that is not in PerAct's format; the message names it."""


class UnsafePickleError(PerActFormatError):
    """A pickle that references a global outside the allow-list (it was not loaded)."""


# ------------------------------------------------------------------------------------------------------
# stand-ins for RLBench's classes


class Observation:
    """Stand-in for ``rlbench.backend.observation.Observation``: a plain bag of attributes."""

    RLBENCH_NAME = ("rlbench.backend.observation", "Observation")

    def __init__(self, **fields: Any):
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        keys = ", ".join(sorted(k for k, v in self.__dict__.items() if v is not None))
        return f"Observation({keys})"


class Demo:
    """Stand-in for ``rlbench.demo.Demo``: a sequence of observations plus the reset RNG state."""

    RLBENCH_NAME = ("rlbench.demo", "Demo")

    def __init__(self, observations: list[Observation], random_seed: Any = None, num_reset_attempts: Any = None):
        self._observations = observations
        self.random_seed = random_seed
        self.num_reset_attempts = num_reset_attempts

    def __len__(self) -> int:
        return len(self._observations)

    def __getitem__(self, i: int) -> Observation:
        return self._observations[i]

    def __iter__(self):
        return iter(self._observations)


STANDINS = {Observation.RLBENCH_NAME: Observation, Demo.RLBENCH_NAME: Demo}


def _numpy_helper(name: str) -> Any:
    """numpy's reconstruction helper ``name`` from numpy._core (numpy 2) or numpy.core (numpy 1)."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray", "numpy._core.numeric", "numpy.core.numeric"):
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if obj is not None:
            return obj
    raise ImportError(f"numpy has no reconstruction helper {name!r}")


def _allowed() -> dict[tuple[str, str], Any]:
    import codecs
    import collections
    import copyreg

    table: dict[tuple[str, str], Any] = dict(STANDINS)
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = _numpy_helper("_reconstruct")
        table[(f"{prefix}.multiarray", "scalar")] = _numpy_helper("scalar")
        table[(f"{prefix}.numeric", "_frombuffer")] = _numpy_helper("_frombuffer")
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    # inert builtins that pickles of plain data reference by name (protocols 0-3)
    table[("_codecs", "encode")] = codecs.encode  # bytes in protocol <= 2 pickles
    table[("copyreg", "_reconstructor")] = copyreg._reconstructor  # objects in protocol 0/1 pickles
    table[("builtins", "object")] = object
    for name in ("set", "frozenset", "complex", "bytearray", "slice", "range"):
        table[("builtins", name)] = getattr(__import__("builtins"), name)
    table[("collections", "OrderedDict")] = collections.OrderedDict
    return table


_ALLOWED: dict[tuple[str, str], Any] | None = None


# Callables of the allow-list that allocate memory from their arguments alone (``bytearray(10**9)``,
# ``ndarray((10**9,))``): a pickle's own data bounds what a real one needs, so larger requests are refused
# before anything is allocated.
_ALLOCATING = {("builtins", "bytearray"), ("numpy", "ndarray"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}


def _bounded(fn: Any, budget: int, source: str) -> Any:
    def requested(args: tuple) -> int:
        if fn is bytearray:
            return args[0] if args and isinstance(args[0], int) else 0
        shape_at = 1 if fn is not np.ndarray else 0  # _reconstruct(subtype, shape, dtype)
        shape = args[shape_at] if len(args) > shape_at else ()
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = np.dtype(args[shape_at + 1]) if len(args) > shape_at + 1 else np.dtype(float)
        n = dtype.itemsize
        for d in dims:
            n *= int(d)
        return n

    def call(*args: Any, **kwargs: Any) -> Any:
        args = tuple(getattr(a, "unbounded", a) for a in args)  # _reconstruct(ndarray, ...) wants the class
        try:
            size = requested(args)
        except (TypeError, ValueError) as err:
            raise PerActFormatError(f"{source}: bad arguments to {getattr(fn, '__name__', fn)} ({err})") from None
        if size > budget or size < 0:
            raise PerActFormatError(f"{source}: the pickle asks {getattr(fn, '__name__', fn)} for {size} bytes, "
                                    f"more than its {budget}-byte budget (refused before allocating)")
        return fn(*args, **kwargs)

    call.unbounded = fn
    return call


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` restricted to RLBench's data classes (as stand-ins), numpy and plain data.

    ``budget`` bounds the bytes one allocating call may request (default: 1 MiB + 4x the pickle's size)."""

    def __init__(self, file: io.BufferedIOBase, source: str | Path, budget: int | None = None):
        super().__init__(file)
        self.source = str(source)
        if budget is None:
            size = len(file.getbuffer()) if isinstance(file, io.BytesIO) else 0
            budget = (1 << 20) + 4 * size
        self.budget = budget

    def find_class(self, module: str, name: str) -> Any:
        import _compat_pickle

        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed()
        # protocols 0-2 write Python 2 names (copy_reg, __builtin__); map them as pickle itself does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global {module}.{name}: a PerAct pickle may only reference "
                "rlbench.demo.Demo, rlbench.backend.observation.Observation, numpy arrays and plain Python "
                "data (nothing was executed)"
            )
        if (module, name) in _ALLOCATING:
            return _bounded(obj, self.budget, self.source)
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: refusing a persistent id in the pickle (nothing was executed)")


def safe_load_pickle(path: str | Path, what: str = "pickle") -> Any:
    """Load ``path`` with :class:`SafeUnpickler`; every failure is a :class:`PerActFormatError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PerActFormatError(f"{path}: missing; expected the {what}") from None
    except OSError as err:
        raise PerActFormatError(f"{path}: unreadable {what} ({err})") from None
    try:
        return SafeUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # UnpicklingError, EOFError, TypeError from a bad REDUCE, ...
        raise PerActFormatError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------------------------------
# writing pickles with RLBench's class names (for generated data; RLBench need not be importable)


class _StandinPickler(pickle._Pickler):  # the pure-Python pickler: save_global can be overridden
    def save_global(self, obj: Any, name: str | None = None) -> None:
        rl_name = getattr(obj, "RLBENCH_NAME", None) if isinstance(obj, type) else None
        if rl_name is None or STANDINS.get(rl_name) is not obj:
            return super().save_global(obj, name)
        module, qualname = rl_name
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
        self.memoize(obj)


def dumps_as_rlbench(obj: Any, protocol: int = 4) -> bytes:
    """Pickle ``obj`` with the stand-ins written under RLBench's module/class names, as RLBench would."""
    buf = io.BytesIO()
    _StandinPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------------
# episodes


@dataclass(frozen=True)
class EpisodeRef:
    """One episode folder of a PerAct dataset."""

    task: str
    index: int  # N of episode<N>
    path: Path  # the episode folder
    rel: str  # the folder relative to the dataset root (the episode's key)


@dataclass
class PerActEpisode:
    ref: EpisodeRef
    variation: int
    descriptions: list[str]
    demo: Demo
    frames: dict[str, np.ndarray] = field(default_factory=dict)  # camera -> (T, H, W, 3) uint8

    def __len__(self) -> int:
        return len(self.demo)

    @property
    def task(self) -> str:
        return self.ref.task

    @property
    def instruction(self) -> str:
        """The language condition: the first variation description (as VPDD's released code)."""
        return self.descriptions[0]

    def low_dim(self, name: str) -> np.ndarray:
        """The field ``name`` of every observation, stacked: (T, ...) float64; a :class:`PerActFormatError`
        naming the episode when the observations disagree on its shape."""
        values = [np.asarray(getattr(o, name), dtype=np.float64) for o in self.demo]
        shapes = sorted({v.shape for v in values})
        if len(shapes) > 1:
            bad = next(i for i, v in enumerate(values) if v.shape != values[0].shape)
            raise PerActFormatError(f"{self.ref.path / LOW_DIM_PICKLE}: "
                                    f"{name} has shape {values[0].shape} in observation 0 but {values[bad].shape} "
                                    f"in observation {bad} (ragged); every observation needs the same shape")
        return np.stack(values)

    @property
    def gripper_pose(self) -> np.ndarray:
        return self.low_dim("gripper_pose")  # (T, 7)

    @property
    def gripper_open(self) -> np.ndarray:
        return self.low_dim("gripper_open").reshape(len(self))  # (T,)

    @property
    def joint_velocities(self) -> np.ndarray:
        return self.low_dim("joint_velocities")  # (T, J)


def list_episodes(root: str | Path, tasks: list[str] | None = None) -> list[EpisodeRef]:
    """Every episode folder under ``root`` (tasks sorted by name, episodes by number); ``tasks`` filters."""
    root = Path(root)
    if not root.is_dir():
        raise PerActFormatError(f"{root}: no such RLBench data folder (PerAct layout <task>/{EPISODES_SUBDIR}/)")
    found = sorted(p.name for p in root.iterdir() if (p / EPISODES_SUBDIR).is_dir())
    wanted = list(tasks) if tasks is not None else found
    missing = [t for t in wanted if t not in found]
    if missing:
        raise PerActFormatError(
            f"{root}: no {EPISODES_SUBDIR}/ folder for tasks {missing}; the data holds tasks {found}"
        )
    refs = []
    for task in wanted:
        folder = root / task / EPISODES_SUBDIR
        eps = []
        for p in folder.iterdir():
            m = EPISODE_NAME.match(p.name)
            if m and p.is_dir():
                eps.append((int(m.group(1)), p))
        if not eps:
            raise PerActFormatError(f"{folder}: no episode<N> folders")
        for n, p in sorted(eps):
            refs.append(EpisodeRef(task, n, p, p.relative_to(root).as_posix()))
    if not refs:
        raise PerActFormatError(f"{root}: no tasks with {EPISODES_SUBDIR}/ folders")
    return refs


def episode_ref(path: str | Path) -> EpisodeRef:
    """The :class:`EpisodeRef` of an episode folder given directly (``<task>/all_variations/episodes/episodeN``)."""
    path = Path(path)
    m = EPISODE_NAME.match(path.name)
    if not m or path.parent.name != "episodes" or path.parent.parent.name != "all_variations":
        raise PerActFormatError(f"{path}: expected an episode folder <task>/{EPISODES_SUBDIR}/episode<N>")
    task = path.parents[2].name
    return EpisodeRef(task, int(m.group(1)), path, f"{task}/{EPISODES_SUBDIR.as_posix()}/{path.name}")


def _check_observations(demo: Any, path: Path) -> Demo:
    if isinstance(demo, list):  # a bare list of observations is accepted too
        demo = Demo(demo)
    if not isinstance(demo, Demo):
        raise PerActFormatError(f"{path}: expected a pickled rlbench.demo.Demo, got {type(demo).__name__}")
    if len(demo) == 0:
        raise PerActFormatError(f"{path}: the demo holds no observations")
    first: dict[str, tuple] = {}
    for i, obs in enumerate(demo):
        if not isinstance(obs, Observation):
            raise PerActFormatError(f"{path}: observation {i} is a {type(obs).__name__}, expected an Observation")
        for name, size in REQUIRED_FIELDS.items():
            value = getattr(obs, name, None)
            if value is None:
                raise PerActFormatError(f"{path}: observation {i} has no {name} (needed for keyframes and actions)")
            arr = np.asarray(value)
            if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
                raise PerActFormatError(f"{path}: observation {i}: {name} is not numeric ({arr.dtype})")
            if size is not None and arr.shape != (size,):
                raise PerActFormatError(f"{path}: observation {i}: {name} has shape {arr.shape}, expected ({size},)")
            if first.setdefault(name, arr.shape) != arr.shape:
                raise PerActFormatError(f"{path}: observation {i}: {name} has shape {arr.shape}, but "
                                        f"{first[name]} in observation 0 (ragged); every observation needs one shape")
    return demo


def _read_frames(folder: Path, n: int, resolution: int | None, episode: Path) -> np.ndarray:
    from PIL import Image

    if not folder.is_dir():
        raise PerActFormatError(f"{episode}: missing camera folder {folder.name}/ (expected {n} PNGs 0.png ..)")
    numbers = sorted(int(m.group(1)) for p in folder.iterdir() if (m := IMAGE_NAME.match(p.name)))
    if numbers != list(range(n)):
        have = f"{len(numbers)} PNGs" + (f" numbered {numbers[0]}..{numbers[-1]}" if numbers else "")
        raise PerActFormatError(
            f"{episode}: {folder.name}/ holds {have}, expected {n} (0.png .. {n - 1}.png, one per observation "
            f"in {LOW_DIM_PICKLE})"
        )
    frames, size = [], None
    for i in range(n):
        p = folder / f"{i}.png"
        try:
            with Image.open(p) as img:
                img = img.convert("RGB")
                if size is None:
                    size = img.size
                elif img.size != size:
                    raise PerActFormatError(f"{p}: {img.size[0]}x{img.size[1]}, but 0.png is {size[0]}x{size[1]}")
                if resolution is not None and img.size != (resolution, resolution):
                    img = _square(img).resize((resolution, resolution), Image.BILINEAR)
                frames.append(np.asarray(img, dtype=np.uint8))
        except PerActFormatError:
            raise
        except Exception as err:  # PIL.UnidentifiedImageError, truncated files
            raise PerActFormatError(f"{p}: unreadable PNG ({type(err).__name__}: {err})") from None
    return np.stack(frames)


def _square(img):
    w, h = img.size
    s = min(w, h)
    return img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)) if w != h else img


def resize_frame(frame: np.ndarray, resolution: int) -> np.ndarray:
    """A uint8 (H, W, 3) image as the reader resizes it: centre square crop, bilinear to ``resolution``."""
    from PIL import Image

    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise PerActFormatError(f"expected a uint8 (H, W, 3) image, got {frame.dtype} {frame.shape}")
    if frame.shape[:2] == (resolution, resolution):
        return frame
    img = _square(Image.fromarray(frame)).resize((resolution, resolution), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def load_episode(
    ref: EpisodeRef | str | Path,
    cameras: tuple[str, ...] | list[str] = CAMERAS,
    resolution: int | None = None,
    images: bool = True,
) -> PerActEpisode:
    """Read and validate one episode; frames of ``cameras`` are resized to ``resolution`` (square, centre
    crop first) when given. ``images=False`` reads only the pickles (keyframes, actions)."""
    if not isinstance(ref, EpisodeRef):
        ref = episode_ref(ref)
    path = ref.path
    if not path.is_dir():
        raise PerActFormatError(f"{path}: no such episode folder")
    unknown = [c for c in cameras if c not in ALL_CAMERAS]
    if unknown:
        raise PerActFormatError(f"cameras {unknown}: expected names from {list(ALL_CAMERAS)}")
    demo = _check_observations(safe_load_pickle(path / LOW_DIM_PICKLE, "low-dimensional observations"), path)
    desc = safe_load_pickle(path / DESCRIPTIONS_PICKLE, "variation descriptions")
    if not isinstance(desc, (list, tuple)) or not desc or not all(isinstance(d, str) for d in desc):
        raise PerActFormatError(f"{path / DESCRIPTIONS_PICKLE}: expected a non-empty list of strings, got {desc!r:.80}")
    var = safe_load_pickle(path / VARIATION_NUMBER_PICKLE, "variation number")
    if isinstance(var, (np.integer, np.ndarray)) and np.ndim(var) == 0:
        var = int(var)
    if not isinstance(var, int) or isinstance(var, bool) or var < 0:
        raise PerActFormatError(f"{path / VARIATION_NUMBER_PICKLE}: expected a variation index >= 0, got {var!r:.80}")
    frames = {}
    if images:
        for cam in cameras:
            frames[cam] = _read_frames(path / f"{cam}_rgb", len(demo), resolution, path)
        sizes = {c: f.shape[1:3] for c, f in frames.items()}
        if len(set(sizes.values())) > 1:
            raise PerActFormatError(f"{path}: cameras have different frame sizes {sizes}; pass a resolution")
    return PerActEpisode(ref, var, [str(d) for d in desc], demo, frames)


def summarize(root: str | Path, tasks: list[str] | None = None, cameras=CAMERAS, images: bool = True,
              stopping_delta: float = 0.1, stop_buffer: int = 4) -> dict[str, Any]:
    """Validate every episode under ``root`` and summarise it (the ``vpdd rlbench inspect`` report)."""
    from vpdd.rlbench.keyframes import discover_keyframes

    out: dict[str, Any] = {"root": str(root), "cameras": list(cameras), "tasks": {}}
    total = 0
    for ref in list_episodes(root, tasks):
        ep = load_episode(ref, cameras, images=images)
        keys = discover_keyframes(ep.gripper_open, ep.joint_velocities, stopping_delta, stop_buffer)
        t = out["tasks"].setdefault(ref.task, {"episodes": 0, "variations": [], "lengths": [], "keyframes": [],
                                               "instructions": [], "frame_size": None})
        t["episodes"] += 1
        t["lengths"].append(len(ep))
        t["keyframes"].append(len(keys))
        if ep.variation not in t["variations"]:
            t["variations"].append(ep.variation)
        if ep.instruction not in t["instructions"]:
            t["instructions"].append(ep.instruction)
        if images:
            t["frame_size"] = list(next(iter(ep.frames.values())).shape[1:3])
        total += 1
    for t in out["tasks"].values():
        t["variations"].sort()
        t["mean_length"] = float(np.mean(t["lengths"]))
        t["mean_keyframes"] = float(np.mean(t["keyframes"]))
    out["episodes"] = total
    return out
