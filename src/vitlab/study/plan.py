"""A study's plan: its preset read, overridden and expanded into points, each an ordinary training
run with a fully resolved TrainConfig.

A study preset (`configs/studies/NAME-PRESET.yaml`) is data, not code:

- `train`: TrainConfig keys every point shares;
- `families`: name -> TrainConfig keys of a model family (`label:` is its name in the report; for
  `model-scaling`, `models:` maps each model's name to the keys that size it);
- the study's axis: `sizes` (data-scaling: training images, or `all`), `shots` (transfer: images
  per class, or `all`), the models (model-scaling);
- `seeds`: every point is trained once per seed (the report shows mean and spread); a transfer
  study pre-trains once per protocol and family (with the first seed), and every seed's
  target runs start from that;
- transfer only: `protocols` (name -> `source` and `target` keys: where pre-training and the
  target task take their data; a `shots` there replaces the study's for that protocol),
  `pretrain` (keys of the pre-training runs), `target` (keys of every target run) and
  `finetune` (keys of the target runs that start from the pre-trained weights).

A point's config is the layers in this order: `train`, the family, the stage (`pretrain`,
`target`, `finetune`), the protocol, the axis value and seed, then `--set` keys that are not study
keys (they apply to every point). `study.yaml` holds the whole plan; each point's run directory
holds `point.yaml`, the config `vitlab train --config` runs it with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vitlab.errors import ConfigError, VitlabError
from vitlab.train.config import TrainConfig, build_config, configs_dir, merge, read_yaml

StudyName = Literal["data-scaling", "transfer", "model-scaling"]
STUDIES: tuple[StudyName, ...] = ("data-scaling", "transfer", "model-scaling")
PRESETS = ("quick", "full")
# Top-level keys of a study preset; any other --set key is a TrainConfig key for every point.
STUDY_KEYS = {"study", "description", "train", "families", "seeds", "sizes", "shots"}
STUDY_KEYS |= {"protocols", "pretrain", "target", "finetune"}
ALL = "all"
POINT_FILE = "point.yaml"
PLAN_FILE = "study.yaml"


@dataclass
class Point:
    """One training run of a study and where it sits in the report."""

    id: str  # also its run directory under OUT/points/
    family: str
    label: str  # the family's name in the report
    seed: int
    x: int | str  # data-scaling: images (int or "all"); transfer: k; model-scaling: model name
    config: dict[str, Any]  # the TrainConfig, resolved
    variant: str = ""  # transfer: "pretrain", "pretrained" or "scratch"
    protocol: str = ""  # transfer: the protocol's name
    needs: tuple[str, ...] = ()  # ids of the points whose weights this one starts from

    @property
    def run_dir(self) -> Path:
        return Path(self.config["out"])

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("id", "family", "label", "seed", "x", "variant")}
        d.update(protocol=self.protocol, needs=list(self.needs), config=self.config)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        return cls(**{**d, "needs": tuple(d.get("needs", ()))})


@dataclass
class Plan:
    study: str
    preset: str
    out: Path
    spec: dict[str, Any]  # the preset after --set
    points: list[Point] = field(default_factory=list)

    def families(self) -> dict[str, str]:
        """Family name -> label, in the preset's order (the first is the reference)."""
        return {k: _label(k, v) for k, v in self.spec["families"].items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "preset": self.preset,
            "spec": self.spec,
            "points": [p.to_dict() for p in self.points],
        }


# ------------------------------------------------------------------------------ the preset
def studies_dir() -> Path:
    return configs_dir() / "studies"


def preset_file(study: str, preset: str) -> Path:
    """`quick`/`full` (configs/studies/STUDY-PRESET.yaml) or a path to a study YAML."""
    if study not in STUDIES:
        raise ConfigError(f"unknown study {study!r}; choose one of {', '.join(STUDIES)}")
    path = Path(preset)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"--preset {preset}: no such file")
        return path
    path = studies_dir() / f"{study}-{preset}.yaml"
    if not path.is_file():
        have = sorted(
            p.stem.removeprefix(f"{study}-") for p in studies_dir().glob(f"{study}-*.yaml")
        )
        raise ConfigError(
            f"no {study} preset named {preset!r}; presets: {', '.join(have) or 'none'} (or a "
            "path to a study YAML file)"
        )
    return path


def deep_set(spec: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (`families.vit.lr`) in nested mappings, creating levels as needed."""
    *heads, last = key.split(".")
    node = spec
    for h in heads:
        if not isinstance(node.get(h, {}), dict):
            raise ConfigError(f"--set {key}: {h!r} is not a mapping in the preset")
        node = node.setdefault(h, {})
    node[last] = value


def read_spec(study: str, preset: str, sets: dict[str, Any]) -> dict[str, Any]:
    """The preset with `sets` (dotted key -> value) applied: study keys in place, any other key
    into `everywhere` (TrainConfig keys for every point)."""
    path = preset_file(study, preset)
    spec = read_yaml(path)
    if spec.get("study") != study:
        raise ConfigError(f"{path} is a {spec.get('study')!r} study, not {study!r}")
    spec = copy.deepcopy(spec)
    spec.setdefault("everywhere", {})
    for key, value in sets.items():
        head = key.split(".", 1)[0]
        deep_set(spec if head in STUDY_KEYS else spec["everywhere"], key, value)
    _check_spec(spec, path)
    return spec


def _check_spec(spec: dict[str, Any], path: Path) -> None:
    families = spec.get("families")
    if not isinstance(families, dict) or not families:
        raise ConfigError(f"{path}: `families` must map at least one family name to its keys")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"seeds must be a list of whole numbers, got {seeds!r}")
    axis = {"data-scaling": "sizes", "transfer": "shots"}.get(spec["study"])
    if axis:
        _check_axis(axis, spec.get(axis))
    if spec["study"] == "transfer":
        if not isinstance(spec.get("protocols"), dict) or not spec["protocols"]:
            raise ConfigError(
                f"{path}: a transfer study needs `protocols` (name -> source, target)"
            )
        for name, sides in spec["protocols"].items():
            if "shots" in (sides or {}):
                _check_axis(f"protocols.{name}.shots", sides["shots"])


def _check_axis(name: str, values: Any) -> None:
    ok = isinstance(values, list) and bool(values)
    if not ok or not all(v == ALL or (isinstance(v, int) and v >= 1) for v in values):
        raise ConfigError(f"{name} must be a list of whole numbers >= 1 (or 'all'), got {values!r}")


def _label(name: str, family: dict[str, Any]) -> str:
    return str(family.get("label", name))


def _keys(family: dict[str, Any]) -> dict[str, Any]:
    """A family's TrainConfig keys (without its report label and its models)."""
    return {k: v for k, v in family.items() if k not in ("label", "models")}


# ------------------------------------------------------------------------------ the points
def make_plan(study: str, preset: str, out: Path, sets: dict[str, Any] | None = None) -> Plan:
    """Read the preset, apply `sets`, and expand it into points whose configs all validate."""
    spec = read_spec(study, preset, sets or {})
    plan = Plan(study, preset, Path(out), spec)
    expand = {"data-scaling": _data_scaling, "transfer": _transfer, "model-scaling": _models}
    plan.points = expand[study](plan)
    for p in plan.points:
        try:
            cfg = build_config(None, p.config)
        except ConfigError as e:
            raise ConfigError(f"point {p.id}: {e}") from None
        p.config = cfg.to_dict()
    return plan


def _config(plan: Plan, *layers: dict[str, Any], run_id: str, seed: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for layer in (plan.spec.get("train", {}), *layers, plan.spec["everywhere"]):
        cfg = merge(cfg, layer or {})
    cfg.update(seed=seed, out=str(plan.out / "points" / run_id))
    return cfg


def _data_scaling(plan: Plan) -> list[Point]:
    points = []
    for fam, keys in plan.spec["families"].items():
        for size in plan.spec["sizes"]:
            for seed in plan.spec.get("seeds", [0]):
                pid = f"{fam}-n{size}-s{seed}"
                axis = {"train_images": None if size == ALL else size}
                cfg = _config(plan, _keys(keys), axis, run_id=pid, seed=seed)
                points.append(Point(pid, fam, _label(fam, keys), seed, size, cfg))
    return points


def _transfer(plan: Plan) -> list[Point]:
    """Per protocol and family one pre-training (with the first seed), then per seed and k the
    target runs: a fine-tuning that starts from its weights, and a run from scratch."""
    points = []
    seeds = plan.spec.get("seeds", [0])
    for proto, sides in plan.spec["protocols"].items():
        for fam, keys in plan.spec["families"].items():
            pre = _pretrain_point(plan, proto, sides or {}, fam, keys, seeds[0])
            points.append(pre)
            for seed in seeds:
                points += _target_points(plan, proto, sides or {}, fam, keys, seed, pre)
    return points


def _pretrain_point(
    plan: Plan, proto: str, sides: dict[str, Any], fam: str, keys: dict[str, Any], seed: int
) -> Point:
    pid = f"{proto}/pretrain-{fam}"
    layers = [_keys(keys), plan.spec.get("pretrain"), sides.get("source")]
    cfg = _config(plan, *layers, run_id=pid, seed=seed)
    return Point(pid, fam, _label(fam, keys), seed, ALL, cfg, "pretrain", proto)


def _target_points(
    plan: Plan,
    proto: str,
    sides: dict[str, Any],
    fam: str,
    keys: dict[str, Any],
    seed: int,
    pre: Point,
) -> list[Point]:
    spec, points = plan.spec, []
    weights = "best" if pre.config.get("report_best") else "last"
    start = {"init_from": str(pre.run_dir / f"{weights}.safetensors")}
    for k in sides.get("shots", spec["shots"]):
        axis = {"train_per_class": None if k == ALL else k}
        for variant, extra in (("pretrained", [spec.get("finetune"), start]), ("scratch", [])):
            pid = f"{proto}/{fam}-{variant}-k{k}-s{seed}"
            layers = [_keys(keys), spec.get("target"), *extra, sides.get("target"), axis]
            cfg = _config(plan, *layers, run_id=pid, seed=seed)
            needs = (pre.id,) if extra else ()
            points.append(Point(pid, fam, _label(fam, keys), seed, k, cfg, variant, proto, needs))
    return points


def _models(plan: Plan) -> list[Point]:
    points = []
    for fam, keys in plan.spec["families"].items():
        models = keys.get("models")
        if not isinstance(models, dict) or not models:
            raise ConfigError(
                f"model-scaling: family {fam!r} needs `models:` (model name -> the keys that size "
                "it, e.g. {d64: {model_args: {embed_dim: 64}}})"
            )
        for name, sizing in models.items():
            for seed in plan.spec.get("seeds", [0]):
                pid = f"{fam}-{name}-s{seed}"
                cfg = _config(plan, _keys(keys), sizing or {}, run_id=pid, seed=seed)
                points.append(Point(pid, fam, _label(fam, keys), seed, name, cfg))
    return points


# ------------------------------------------------------------------------------ on disk
def write_plan(plan: Plan) -> None:
    """`study.yaml` (the whole plan) and each point's `point.yaml`, written atomically; a plan
    that differs from the one already in the folder is refused point by point."""
    import yaml

    from vitlab.files import write_text

    old = plan.out / PLAN_FILE
    if old.is_file():
        _check_same_plan(read_plan(plan.out), plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    write_text(old, yaml.safe_dump(plan.to_dict(), sort_keys=False))
    for p in plan.points:
        p.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(p.run_dir / POINT_FILE, yaml.safe_dump(p.config, sort_keys=False))


def read_plan(out: Path) -> Plan:
    path = Path(out) / PLAN_FILE
    if not path.is_file():
        raise ConfigError(
            f"{out} holds no study ({PLAN_FILE} is missing); point --collect at the --out "
            "folder of a study"
        )
    d = read_yaml(path)
    points = [Point.from_dict(p) for p in d.get("points", [])]
    return Plan(d["study"], d.get("preset", ""), Path(out), d["spec"], points)


def _check_same_plan(old: Plan, new: Plan) -> None:
    if old.study != new.study:
        raise ConfigError(
            f"{new.out} holds a {old.study} study, not {new.study}; choose another --out"
        )
    before = {p.id: p.config for p in old.points}
    for p in new.points:
        if p.id in before and _canonical(before[p.id]) != _canonical(p.config):
            raise ConfigError(
                f"{new.out}: point {p.id} was planned with a different config there (the preset "
                "or --set changed); use another --out, or delete that folder to start over"
            )


def _canonical(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config as comparable data (tuples and lists alike), without the keys a resumed run may
    change (where the data lives, --download, threads, logging)."""
    from vitlab.train.state import RESUMABLE_CHANGES

    d = TrainConfig(**cfg).to_dict()
    return {k: v for k, v in d.items() if k not in RESUMABLE_CHANGES}


def check_data(plan: Plan) -> None:
    """Every point's data exists and holds the subset it asks for (a subset larger than the
    data, k larger than a class), said before any point trains; each dataset is read once and
    each point's images chosen as its run will choose them (`vitlab.train.run.choose_images`)."""
    from vitlab.data.datasets import load_data
    from vitlab.train.run import choose_images

    loaded: dict[tuple, Any] = {}
    for p in plan.points:
        c = TrainConfig(**p.config)
        key = (c.data, c.data_root, c.download, c.val_split, c.seed)
        try:
            if key not in loaded:
                loaded[key] = load_data(
                    c.data, c.data_root, download=c.download, val_split=c.val_split, seed=c.seed
                )
            choose_images(loaded[key], c)
        except VitlabError as e:
            raise ConfigError(f"point {p.id}: {e}") from None
