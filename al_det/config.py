"""The experiment config: frozen dataclasses loaded from YAML, overridden from the command line.

Reads a YAML file (``yaml.safe_load`` through a loader that rejects duplicate keys) and
``--set key.path=value`` overrides (values parsed as YAML, never ``eval``); writes nothing
itself (``init`` freezes :func:`dump_config` into the work dir). Unknown keys are rejected with
a "did you mean", values are converted to the declared type or rejected, ranges are checked,
all before any model work.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from al_det.errors import AcquireError, ConfigError
from al_det.model_names import MODEL_NAMES
from al_det.strategies import STRATEGIES, check_parameters, parameters


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded demo dataset, generated into ``WORKDIR/data`` at init."""

    n_pool: int = 300
    n_test: int = 100
    image_size: int = 128
    seed: int = 0
    profile: str = "shapes"  # shapes | coco_like (al_det/synthetic.py, PROFILES)


@dataclass(frozen=True)
class DataConfig:
    pool: str | None = None  # COCO JSON of the pool (with ground truth in simulation)
    pool_images: str | None = None  # folder the pool's file_name values are relative to
    test: str | None = None  # COCO JSON of the test set
    test_images: str | None = None  # defaults to pool_images
    labeled: str | None = None  # real labelling: the labeled COCO file the user already has
    synthetic: SyntheticConfig | None = None  # generate the demo dataset instead of pool/test
    check_images: bool = False  # init opens every image up front


@dataclass(frozen=True)
class LossPredictionConfig:
    """Learning Loss's loss-prediction module (docs/acquisition.md, "Learning Loss")."""

    enabled: bool = False  # attach the module to the detector, train it, infer loss_pred.npy
    weight: float = 1.0  # lambda: the ranking loss's weight in the training loss
    margin: float = 1.0  # xi: the margin of the pairwise ranking loss
    detach_after: float = 0.6  # fraction of training after which the module's input is detached


@dataclass(frozen=True)
class ModelConfig:
    name: str = "tiny_frcnn"
    weights: str | None = None  # torchvision weights enum member for the detector, e.g. DEFAULT
    weights_backbone: str | None = None  # torchvision weights for the backbone only
    min_size: int = 800  # torchvision GeneralizedRCNNTransform resize
    max_size: int = 1333
    trainable_backbone_layers: int | None = None
    loss_prediction: LossPredictionConfig = field(default_factory=LossPredictionConfig)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    # at least this many iterations, in whole epochs: the first cycles' few images still
    # train long enough from scratch (0: epochs alone)
    min_iters: int = 0
    batch_size: int = 16  # global batch size, split over the processes
    lr: float = 0.02  # for the global batch size above
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_steps: tuple[float, ...] = (2 / 3, 8 / 9)  # fractions of training where lr *= lr_gamma
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_factor: float = 0.001
    amp: bool = True  # mixed precision, used on CUDA only
    hflip: float = 0.5  # probability of a horizontal flip
    augment: str = "hflip"  # hflip: flips only | ssd: SSD's recipe (al_det/augment.py)
    workers: int = 2
    checkpoint_every: int = 200  # iterations between resumable checkpoints
    clip_grad: float | None = None


@dataclass(frozen=True)
class EvaluateConfig:
    metric: str = "coco"  # coco: pycocotools AP | voc07: VOC 2007 11-point mAP (al_det/voc07.py)


@dataclass(frozen=True)
class InferConfig:
    score_thresh: float = 0.05
    detections_per_img: int = 100
    batch_size: int = 8
    workers: int = 2
    feature_dtype: str = "float16"
    chunk_size: int = 256  # images per inference shard: the work a kill can lose
    keep_features: str = "last"  # all | last: delete older cycles' feature arrays once acquired
    probs: bool = False  # write probs.npy (always when the strategy reads it, e.g. cdal)


def _acquire_config() -> type:
    """``strategy``, ``budget`` (images per cycle: an int count, or a fraction < 1 of the pool)
    and every parameter of the strategies, with the types and defaults they declare
    (al_det/strategies: the one place they are declared and validated)."""
    fields = [("strategy", str, field(default="enms_divproto")),
              ("budget", float, field(default=0.05))]
    fields += [(name, tp, field(default=default)) for name, (tp, default) in parameters().items()]
    cls = dataclasses.make_dataclass("AcquireConfig", fields, frozen=True)
    cls.__module__ = __name__
    return cls


AcquireConfig = _acquire_config()


@dataclass(frozen=True)
class LabelConfig:
    """The hand-off of a labelling round (mode: labelling), written beside to_label.json."""

    preannotation_thresh: float = 0.5  # detections scoring at least this are pre-annotations
    image_url_prefix: str = "/data/local-files/?d="  # Label Studio tasks: data.image prefix


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    cycles: int = 5  # trained models; acquisitions = cycles - 1
    initial: float = 0.2  # initial labeled split: an int count or a fraction (<1) of the pool
    mode: str = "simulation"  # simulation (oracle copies ground truth) | labelling
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    acquire: AcquireConfig = field(default_factory=AcquireConfig)
    label: LabelConfig = field(default_factory=LabelConfig)


CHOICES = {
    "mode": ("simulation", "labelling"),
    "acquire.strategy": tuple(STRATEGIES),
    "infer.feature_dtype": ("float16", "float32"),
    "infer.keep_features": ("all", "last"),
    "train.augment": ("hflip", "ssd"),
    "evaluate.metric": ("coco", "voc07"),
    "model.name": MODEL_NAMES,  # the keys of al_det.models.ADAPTERS
    "data.synthetic.profile": ("shapes", "coco_like"),  # the keys of al_det.synthetic.PROFILES
}
UNIT_INTERVAL = (
    "infer.score_thresh", "train.hflip", "train.warmup_factor", "train.lr_gamma",
    "label.preannotation_thresh", "model.loss_prediction.detach_after",
)
POSITIVE = (
    "cycles", "initial", "acquire.budget", "train.epochs", "train.batch_size", "train.lr",
    "infer.detections_per_img", "infer.batch_size", "train.checkpoint_every",
    "model.min_size", "model.max_size", "infer.chunk_size", "model.loss_prediction.weight",
)
NON_NEGATIVE = ("train.min_iters", "model.loss_prediction.margin")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate mapping keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001, ANN201
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1}: keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    except ConfigError as exc:  # raised by the loader, which does not know the file
        raise ConfigError(f"{source}: {exc}") from None


DEFAULT_CONFIG = Path(__file__).with_name("default.yaml")  # every key, commented


def default_config_text() -> str:
    """The default config, every key commented; the choices of ``acquire.strategy`` and
    ``model.name`` filled in from the strategy and model dicts (their one list)."""
    text = DEFAULT_CONFIG.read_text()
    for key, slot in (("acquire.strategy", "{strategies}"), ("model.name", "{models}")):
        text = text.replace(slot, " | ".join(CHOICES[key]))
    return text


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Load ``path`` and apply ``--set`` overrides; relative data paths resolve against it."""
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text(), str(path)) or {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping of sections")
    if not overrides:
        return resolve_paths(from_dict(ExperimentConfig, raw, source=str(path)), path.parent)
    changed = copy.deepcopy(raw)
    apply_overrides(changed, overrides)
    try:
        cfg = from_dict(ExperimentConfig, changed, source="--set")
    except ConfigError:
        # blame the file if it is wrong on its own, else the command line
        from_dict(ExperimentConfig, raw, source=str(path))
        raise
    return resolve_paths(cfg, path.parent)


def override(cfg: ExperimentConfig, overrides: typing.Sequence[str]) -> ExperimentConfig:
    """``cfg`` (a work dir's frozen config) with ``--set`` overrides applied and validated."""
    if not overrides:
        return cfg
    raw = to_dict(cfg)
    apply_overrides(raw, overrides)
    return from_dict(ExperimentConfig, raw, "--set")


def apply_overrides(raw: dict, overrides: typing.Sequence[str]) -> None:
    """Set ``a.b.c=value`` entries in the raw mapping; the value is parsed as YAML."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. train.lr=0.01")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = parse_yaml(value, f"--set {key}") if value.strip() else None


def from_dict(cls: type, raw: Any, source: str, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping: unknown keys and wrong types are ConfigErrors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'config'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            hint = _other_section(prefix, key) or _did_you_mean(key, fields)
            raise ConfigError(f"{source}: unknown key {prefix}{key}{hint}")
    values = {k: _convert(hints[k], v, source, prefix + k) for k, v in raw.items()}
    cfg = cls(**values)
    if cls is ExperimentConfig:
        validate(cfg, source)
    return cfg


def _other_section(prefix: str, key: str) -> str:
    """Where a key misplaced in another section (or at the top) belongs: "(did you mean
    train.lr?)", or "" when no section has it."""
    homes = [name for name, tp in typing.get_type_hints(ExperimentConfig).items()
             if dataclasses.is_dataclass(tp) and key in {f.name for f in dataclasses.fields(tp)}]
    homes = [h for h in homes if f"{h}." != prefix]
    if key in {f.name for f in dataclasses.fields(ExperimentConfig)} and prefix:
        return f" (did you mean top-level {key}? it belongs outside {prefix.rstrip('.')})"
    return f" (did you mean {homes[0]}.{key}? it belongs in the {homes[0]} section)" \
        if homes else ""


def _did_you_mean(key: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(key), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; valid keys: {', '.join(options)}"


def _convert(tp: Any, value: Any, source: str, key: str) -> Any:
    """Convert a YAML value to the declared type (``1e-3`` is a str to PyYAML) or reject it."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[-1]
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, source, key + ".")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(_convert(typing.get_args(tp)[0], v, source, key) for v in value)
    return _convert_scalar(tp, value, source, key)


def _convert_scalar(tp: type, value: Any, source: str, key: str) -> Any:
    bad = ConfigError(f"{source}: {key} must be {tp.__name__}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if isinstance(value, bool) or value is None:
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise bad
    if tp is float:
        try:
            return float(value)  # accepts "1e-3", which YAML 1.1 reads as a string
        except (TypeError, ValueError):
            raise bad from None
    raise bad


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _section_set(cfg: Any, dotted: str) -> bool:
    """False when a section on the way to the key is unset (``data.synthetic: null``)."""
    for part in dotted.split(".")[:-1]:
        cfg = getattr(cfg, part)
        if cfg is None:
            return False
    return True


def validate(cfg: ExperimentConfig, source: str) -> None:
    """Range and choice checks that types alone cannot express."""
    for key, choices in CHOICES.items():
        if not _section_set(cfg, key):
            continue
        value = _get(cfg, key)
        if value not in choices:
            hint = difflib.get_close_matches(str(value), choices, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"{source}: {key}={value!r} is not one of {list(choices)}{extra}")
    for key in UNIT_INTERVAL:
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"{source}: {key}={_get(cfg, key)} must lie in [0, 1]")
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{source}: {key}={_get(cfg, key)} must be > 0")
    for key in ("initial", "acquire.budget"):
        value = _get(cfg, key)
        if value >= 1 and not float(value).is_integer():
            raise ConfigError(f"{source}: {key}={value}: give a count (integer) or a fraction < 1")
    try:  # the strategies check their own parameters
        check_parameters(cfg.acquire.strategy, strategy_params(cfg.acquire))
    except AcquireError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    for key in NON_NEGATIVE:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{source}: {key}={_get(cfg, key)} must be >= 0")
    reads = STRATEGIES[cfg.acquire.strategy].reads
    if "loss_pred" in reads and not cfg.model.loss_prediction.enabled:
        raise ConfigError(f"{source}: acquire.strategy={cfg.acquire.strategy} ranks by the "
                          "loss the loss-prediction module predicts: set "
                          "model.loss_prediction.enabled: true (README \"Learning Loss\")")
    if cfg.data.synthetic is None and cfg.data.pool is None:
        raise ConfigError(f"{source}: data.pool is missing: name the pool's COCO JSON file")
    if cfg.mode == "labelling" and cfg.data.labeled is None:
        raise ConfigError(f"{source}: mode=labelling needs data.labeled, your labeled COCO file")


def strategy_params(acq: Any, seed: int | None = None) -> dict:
    """The strategies' parameters in ``acq`` (an AcquireConfig), plus the acquisition's seed."""
    known = parameters()
    params = {k: v for k, v in dataclasses.asdict(acq).items() if k in known}
    return params if seed is None else {**params, "seed": seed}


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Make the data paths absolute, relative to the config file's folder."""
    data = cfg.data
    updates = {}
    for name in ("pool", "pool_images", "test", "test_images", "labeled"):
        value = getattr(data, name)
        if value is not None:
            updates[name] = str((base / Path(value).expanduser()).resolve())
    if data.test_images is None and data.pool_images is not None:
        updates["test_images"] = updates["pool_images"]
    return dataclasses.replace(cfg, data=dataclasses.replace(data, **updates))


def to_dict(cfg: Any) -> dict:
    """A plain mapping (tuples as lists) that :func:`from_dict` reads back to an equal config."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def diff_configs(a: ExperimentConfig, b: ExperimentConfig) -> list[str]:
    """``key: old -> new`` lines where two configs differ."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    keys = sorted(k for k in fa | fb if fa.get(k) != fb.get(k))
    return [f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in keys]
