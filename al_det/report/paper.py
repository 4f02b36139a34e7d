"""The paper's numbers as data: which protocol a config is, which method an arm is.

Reads ``al_det/report/paper_results.yaml`` (shipped in the package); writes nothing. A config
*is* a paper protocol when its model name, the base names of its pool and test files, its
``initial``, ``acquire.budget`` and ``evaluate.metric`` are the protocol's (see the YAML's
head); an arm *is* a paper method when its strategy is the method's and every parameter
that strategy takes has the paper's value (defaults of Sec. 5.1 unless the method says).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

from al_det.config import ExperimentConfig

DATA = Path(__file__).with_name("paper_results.yaml")


@functools.lru_cache(maxsize=1)
def paper_data() -> dict:
    return yaml.safe_load(DATA.read_text())


def protocol_of(cfg: ExperimentConfig) -> tuple[str, dict] | None:
    """(name, protocol) of the paper's protocol ``cfg`` follows, or None."""
    for name, proto in paper_data()["protocols"].items():
        m = proto["match"]
        if (cfg.model.name == m["model"] and cfg.evaluate.metric == m["metric"]
                and cfg.data.pool and Path(cfg.data.pool).name == m["pool"]
                and cfg.data.test and Path(cfg.data.test).name == m["test"]
                and float(cfg.initial) in [float(v) for v in m["initial"]]
                and float(cfg.acquire.budget) in [float(v) for v in m["budget"]]):
            return name, proto
    return None


def _strategy_fields(name: str) -> list[str] | None:
    from al_det.strategies import STRATEGIES

    cls = STRATEGIES.get(name)
    return None if cls is None else [f.name for f in dataclasses.fields(cls) if f.name != "seed"]


def method_of(proto: dict, cfg: ExperimentConfig) -> tuple[str, dict] | None:
    """(label, method) of the protocol that the config's acquisition is, or None."""
    acq = dataclasses.asdict(cfg.acquire)
    fields = _strategy_fields(cfg.acquire.strategy) or []
    for label, method in proto["methods"].items():
        if method["strategy"] != cfg.acquire.strategy:
            continue
        want: dict[str, Any] = {**paper_data()["defaults"], **method.get("acquire", {})}
        if all(acq.get(k) == want[k] for k in fields if k in want):
            return label, method
    return None


def reference_points(proto: dict, method: dict, metric: str, pool_size: int
                     ) -> list[tuple[float, float, float | None]]:
    """(labeled images, value %, std % or None) of ``method``'s ``metric``; none if absent."""
    values = method.get(metric)
    if not values:
        return []
    xs = method.get("points", proto.get("points"))
    stds = method.get(f"{metric}_std") or [None] * len(values)
    scale = pool_size if proto["x"] == "fraction" else 1
    return [(x * scale, v, s) for x, v, s in zip(xs, values, stds, strict=True)]
