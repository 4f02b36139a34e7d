"""Config loading: types, unknown keys, overrides, ranges, duplicate keys, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from al_det.config import ExperimentConfig, diff_configs, dump_config, load_config
from al_det.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


BASE = "data:\n  pool: pool.json\n  pool_images: imgs\n"


def test_defaults_and_paths_resolved(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.lr == 0.02 and cfg.acquire.strategy == "enms_divproto"
    assert cfg.data.pool == str(tmp_path / "pool.json")
    assert cfg.data.test_images == str(tmp_path / "imgs")  # defaults to pool_images


def test_scientific_notation_string_becomes_float(tmp_path: Path) -> None:
    # PyYAML reads 1e-3 (no dot) as a string: it must be converted, not passed on
    cfg = load_config(write(tmp_path, BASE + "train:\n  lr: 1e-3\n"))
    assert cfg.train.lr == pytest.approx(0.001) and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "text, message",
    [
        ("trian:\n  lr: 0.1\n", "unknown key trian (did you mean 'train'?)"),
        ("train:\n  lr_step: [0.5]\n", "unknown key train.lr_step (did you mean 'lr_steps'?)"),
        ("train:\n  epochs: many\n", "train.epochs must be int"),
        ("train:\n  amp: 1\n", "train.amp must be bool"),
        ("acquire:\n  t_intra: 1.5\n", "acquire.t_intra=1.5 must lie in [0, 1]"),
        ("acquire:\n  budget: 0\n", "acquire.budget=0.0 must be > 0"),
        ("train:\n  min_iters: -5\n", "train.min_iters=-5 must be >= 0"),
        ("model:\n  loss_prediction:\n    margin: -1\n",
         "model.loss_prediction.margin=-1.0 must be >= 0"),
        ("acquire:\n  budget: 2.5\n", "give a count (integer) or a fraction < 1"),
        ("acquire:\n  strategy: enms_divprot\n", "did you mean 'enms_divproto'"),
        ("train:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr' at line 6"),
        # a key in the wrong section is sent where it belongs, across sections
        ("acquire:\n  lr: 0.01\n", "unknown key acquire.lr (did you mean train.lr? it "
         "belongs in the train section)"),
        ("train:\n  budget: 3\n", "did you mean acquire.budget?"),
        ("model:\n  seed: 3\n", "did you mean top-level seed? it belongs outside model"),
    ],
)
def test_rejected(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE + text))
    assert message in str(err.value)
    assert "exp.yaml" in str(err.value) or "--set" in str(err.value)


def test_synthetic_profile_checked(tmp_path: Path) -> None:
    text = "data:\n  synthetic:\n    profile: {}\n"
    assert load_config(write(tmp_path, text.format("coco_like"))).data.synthetic.profile == \
        "coco_like"
    with pytest.raises(ConfigError, match="data.synthetic.profile='coco_lik' is not one of "
                       r"\['shapes', 'coco_like'\] \(did you mean 'coco_like'\?\)"):
        load_config(write(tmp_path, text.format("coco_lik")))


def test_missing_pool_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.pool is missing"):
        load_config(write(tmp_path, "seed: 1\n"))


def test_overrides_parsed_as_yaml(tmp_path: Path) -> None:
    sets = ["train.lr=0.01", "acquire.inter=false", "train.lr_steps=[0.5, 0.75]",
            "model.weights=DEFAULT"]
    cfg = load_config(write(tmp_path, BASE), sets)
    assert cfg.train.lr == 0.01 and cfg.acquire.inter is False
    assert cfg.train.lr_steps == (0.5, 0.75) and cfg.model.weights == "DEFAULT"
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_config(write(tmp_path, BASE), ["train.lr"])
    with pytest.raises(ConfigError, match="unknown key train.lrr"):
        load_config(write(tmp_path, BASE), ["train.lrr=1"])


def test_set_errors_blame_the_command_line_and_file_errors_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError) as err:
        load_config(path, ["acquire.t_enms=3"])
    assert str(err.value) == "--set: acquire.t_enms=3.0 must lie in [0, 1]"
    bad = write(tmp_path, BASE + "train:\n  lr: -1\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: train\.lr=-1\.0 must be > 0"):
        load_config(bad, ["acquire.t_enms=0.3"])
    # what the file lacks, the command line may give
    assert load_config(write(tmp_path, "seed: 1\n"), ["data.pool=p.json"]).data.pool


def test_dump_round_trip_and_diff(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE + "train:\n  epochs: 3\n"))
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg and diff_configs(cfg, again) == []
    other = load_config(write(tmp_path, dump_config(cfg)), ["train.epochs=4"])
    assert diff_configs(cfg, other) == ["train.epochs: 3 -> 4"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_load_and_every_key_commented(name: str) -> None:
    path = REPO / "configs" / name
    load_config(path)
    for n, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped:
            assert "#" in line, f"{name}:{n}: key without a comment: {line!r}"


def test_acquire_defaults_match_the_strategies() -> None:
    """The config and each strategy's dataclass state the spec's defaults once each: keep equal."""
    import dataclasses

    from al_det.config import AcquireConfig
    from al_det.strategies import STRATEGIES

    defaults = {f.name: f.default for f in dataclasses.fields(AcquireConfig)}
    for name, cls in STRATEGIES.items():
        for f in dataclasses.fields(cls):
            if f.name in defaults:
                assert f.default == defaults[f.name], (name, f.name)


def test_default_yaml_is_every_key_with_its_default_and_a_comment() -> None:
    import yaml

    from al_det.config import CHOICES, ExperimentConfig, default_config_text, to_dict

    text = default_config_text()
    assert yaml.safe_load(text) == to_dict(ExperimentConfig())
    keys = [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]
    assert all(" # " in line for line in keys), [k for k in keys if " # " not in k]
    tree = to_dict(ExperimentConfig())  # a line per key and per section

    def lines(v: object) -> int:  # nested sections (model.loss_prediction) count their keys
        return 1 + sum(map(lines, v.values())) if isinstance(v, dict) else 1

    assert len(keys) == sum(map(lines, tree.values()))
    for key in ("acquire.strategy", "model.name"):  # the comment lists every choice
        section, name = key.split(".")
        line = next(x for x in keys if x.strip().startswith(f"{name}:") and x.startswith("  "))
        assert line.split("#", 1)[1].strip().split(" | ") == list(CHOICES[key]), key
