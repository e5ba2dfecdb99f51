"""What a pre-training study is: arms x demonstrations per task x fine-tuning seeds, read from one YAML file.

A study (``conf/study/pretraining.yaml``, docs/study.md) names

* ``arms``: how the frozen video network the policy reads was made. ``pretrain: null`` is no pre-training
  (``finetune.init_from_pretrained=false``: a randomly initialised video network); otherwise the arm
  pre-trains once with the study's params plus ``pretrain.overrides`` on the pipeline's token cache, or, when
  ``pretrain.corpus`` names an ingested video corpus (``vpdd data ingest-videos``), on a cache of its own where
  that corpus is the actionless source;
* ``policy: bc`` instead makes an arm the behaviour-cloning baseline (``vpdd train bc``) on the same
  demonstrations, seeds and scenes: what a user compares with first;
* ``demos``: demonstrations per task for fine-tuning (``finetune.demos_per_task``) and ``seeds``: how many
  fine-tuning seeds (0..n-1) each demonstration count gets;
* ``finetune`` / ``eval``: dotted overrides of the base params applied to every cell (fewer steps and
  scenes than the pipeline's, so the grid fits the machine).

Every cell of one seed shares the fine-tuning seed (initialisation, batches) and the evaluation scenes and
sampler seeds with the same cell of the other arms, so arm differences are paired. Cells are run in
:func:`plan` order: seed by seed, smallest demonstration counts first, all arms of a (demos, seed) together,
so a study stopped early holds complete paired sets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpdd.config import ConfigError
from vpdd.config.base import Check, Validated, validate_tree

ARM_NAME = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_+-")


@dataclass
class PretrainArm(Validated):
    corpus: str = ""  # an ingested corpus (vpdd data ingest-videos) that becomes the actionless source; "": none
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted params keys -> values, e.g. pretrain.steps


@dataclass
class Arm(Validated):
    name: str
    pretrain: PretrainArm | None = None  # None: no pre-training
    policy: str = "vpdd"  # vpdd | bc (the behaviour-cloning baseline on the same demonstrations and scenes)

    def checks(self) -> list[Check]:
        return [Check("name", bool(self.name) and set(self.name) <= ARM_NAME,
                      "a non-empty name of lower-case letters, digits, '_', '+' or '-' (it names a folder)"),
                Check("policy", self.policy in ("vpdd", "bc"), "vpdd or bc"),
                Check("pretrain", self.policy == "vpdd" or self.pretrain is None,
                      "null for a bc arm (behaviour cloning has no video network to pre-train)")]


@dataclass
class ProbeSettings(Validated):
    """The held-out action probe of every cell (:mod:`vpdd.study.probe`): scripted-expert episodes on held-out
    scenes, collected once per study, and the states scored in each."""

    episodes_per_task: int = 4
    states_per_episode: int = 12
    seed: int = 0  # the held-out scenes (vpdd.eval.scenes.heldout_seed) and the policies' sampler seeds
    batch_size: int = 16
    keep_failures: bool = False  # keep held-out scripted episodes that did not succeed

    def checks(self) -> list[Check]:
        def count(v: Any, low: int) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        return [Check("episodes_per_task", count(self.episodes_per_task, 1), "an integer > 0"),
                Check("states_per_episode", count(self.states_per_episode, 1), "an integer > 0"),
                Check("seed", count(self.seed, 0), "an integer >= 0"),
                Check("batch_size", count(self.batch_size, 1), "an integer > 0"),
                Check("keep_failures", isinstance(self.keep_failures, bool), "true or false")]


@dataclass
class StudySpec(Validated):
    name: str
    arms: list[Arm]
    demos: list[int]
    seeds: dict[int, int]  # demonstrations per task -> number of fine-tuning seeds (0..n-1)
    params: str = "params.yaml"  # the base params every run starts from
    tokens: str = "build/tokens"
    tokenizer: str = "models/tokenizer"
    robot: str = "data/metaworld"
    task_video: str = "build/task_video"  # joins the robot source of an arm's own token cache
    finetune: dict[str, Any] = field(default_factory=dict)  # dotted overrides for every fine-tuning run
    bc: dict[str, Any] = field(default_factory=dict)  # dotted overrides for every behaviour-cloning run
    eval: dict[str, Any] = field(default_factory=dict)  # dotted overrides for every evaluation
    video: dict[str, Any] = field(default_factory=dict)  # vpdd eval video settings of each arm's pre-training
    probe: ProbeSettings = field(default_factory=ProbeSettings)  # every cell's held-out action error
    reference: str = ""  # the arm the others are compared with (default: the first arm)
    jobs: int = 2  # cells run at once
    threads_per_job: int = 1
    bootstrap: int = 4000  # hierarchical bootstrap resamples of the report

    def checks(self) -> list[Check]:
        names = [a.name for a in self.arms]
        return [
            Check("arms", len(names) >= 2 and len(set(names)) == len(names), "at least two arms, each name once"),
            Check("demos", bool(self.demos) and all(d > 0 for d in self.demos) and len(set(self.demos)) == len(
                self.demos), "a non-empty list of distinct demonstration counts > 0"),
            Check("seeds", set(self.seeds) == set(self.demos) and all(n > 0 for n in self.seeds.values()),
                  f"one seed count > 0 for each entry of demos {self.demos}"),
            Check("reference", not self.reference or self.reference in names, f"one of the arms {names}"),
            Check("jobs", self.jobs > 0, "a value > 0"),
            Check("threads_per_job", self.threads_per_job > 0, "a value > 0"),
            Check("bootstrap", self.bootstrap >= 100, "a value >= 100"),
        ]

    @property
    def reference_arm(self) -> str:
        return self.reference or self.arms[0].name

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(f"study {self.name}: no arm {name!r} (arms: {[a.name for a in self.arms]})")


@dataclass(frozen=True)
class Cell:
    arm: str
    demos: int
    seed: int

    @property
    def path(self) -> str:
        """Where the cell lives, relative to the study's output folder."""
        return f"cells/{self.arm}/demos{self.demos}/seed{self.seed}"


def load_spec(path: str | Path) -> StudySpec:
    """The study of ``path``; refused with the file, key and what was expected when it is malformed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping (name, arms, demos, seeds, ...)")
    known = set(StudySpec.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; expected some of {sorted(known)}")
    missing = [k for k in ("name", "arms", "demos", "seeds") if k not in raw]
    if missing:
        raise ConfigError(f"{path}: missing keys {missing}")
    arms = []
    for i, a in enumerate(raw["arms"] or []):
        if not isinstance(a, dict) or set(a) - {"name", "pretrain", "policy"} or "name" not in a:
            raise ConfigError(f"{path}: arms[{i}]={a!r}: expected a mapping with name, pretrain (null or a mapping "
                              "of corpus and overrides) and optionally policy (vpdd or bc)")
        pre = a.get("pretrain")
        if pre is not None and (not isinstance(pre, dict) or set(pre) - {"corpus", "overrides"}):
            raise ConfigError(f"{path}: arms[{i}].pretrain={pre!r}: expected null or a mapping of corpus, overrides")
        arms.append(Arm(str(a["name"]), None if pre is None else PretrainArm(str(pre.get("corpus") or ""),
                                                                            dict(pre.get("overrides") or {})),
                        str(a.get("policy", "vpdd"))))
    probe = raw.get("probe") or {}
    if not isinstance(probe, dict) or set(probe) - set(ProbeSettings.__dataclass_fields__):
        raise ConfigError(f"{path}: probe={probe!r}: expected a mapping of some of "
                          f"{sorted(ProbeSettings.__dataclass_fields__)}")
    try:
        seeds = {int(k): int(v) for k, v in (raw["seeds"] or {}).items()}
        spec = StudySpec(**{**raw, "arms": arms, "seeds": seeds, "demos": [int(d) for d in raw["demos"]],
                            "probe": ProbeSettings(**probe)})
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{path}: {err}") from None
    from vpdd.eval.video_quality import VideoEvalSettings

    bad = sorted(set(spec.video) - set(VideoEvalSettings.__dataclass_fields__))
    if bad:
        raise ConfigError(f"{path}: video: unknown keys {bad}; expected some of "
                          f"{sorted(VideoEvalSettings.__dataclass_fields__)}")
    problems = validate_tree(spec) + [p for i, a in enumerate(spec.arms) for p in validate_tree(a, f"arms[{i}].")]
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return spec


def plan(spec: StudySpec) -> list[Cell]:
    """Every cell, in the order they run: seed-major, small demonstration counts first, arms together."""
    demos = sorted(spec.demos)
    return [Cell(a.name, d, s) for s in range(max(spec.seeds.values())) for d in demos if s < spec.seeds[d]
            for a in spec.arms]


def set_dotted(tree: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """``tree[a][b][c] = value`` for ``a.b.c``; a key the base params lack is refused (a typo would be ignored)."""
    node = tree
    *head, last = dotted.split(".")
    for part in head:
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{where}: override {dotted}: no key {part!r} in the base params")
        node = node[part]
    if not isinstance(node, dict) or last not in node:
        raise ConfigError(f"{where}: override {dotted}: no key {last!r} in the base params")
    node[last] = value


def with_overrides(base: dict[str, Any], overrides: dict[str, Any], where: str) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for k, v in overrides.items():
        set_dotted(out, k, v, where)
    return out


def fingerprint(data: Any) -> str:
    """A short hash of a JSON-able value: what a cell or pre-training was run with."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
