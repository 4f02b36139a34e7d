"""Acquisition strategies (docs/acquisition.md): the one list of them, name -> dataclass.

Each strategy is a frozen dataclass whose fields are its parameters (validated by the class
itself), with one ``select(pool) -> Picked`` method, and class attributes saying what it reads
from the dump (see :class:`~al_det.strategies.base.Strategy`). The config's ``acquire`` keys
and choices, the CLI's ``--strategy`` choices and the docs all come from :data:`STRATEGIES`;
adding a strategy is its own file plus one line here. None of them imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Mapping
from typing import Any

from ..errors import AcquireError
from .base import Strategy
from .cdal import Cdal
from .coreset import Coreset
from .divproto import DivProto
from .enms import Enms
from .enms_divproto import EnmsDivProto
from .entropy import Entropy
from .external import External
from .learning_loss import LearningLoss
from .random_sampling import Random

STRATEGIES: dict[str, type[Strategy]] = {
    "random": Random,
    "entropy": Entropy,
    "enms": Enms,
    "divproto": DivProto,
    "enms_divproto": EnmsDivProto,
    "coreset": Coreset,
    "learning_loss": LearningLoss,
    "cdal": Cdal,
    "external": External,
}

# Given per acquisition, not by the config's acquire section: the work dir derives it from the
# experiment's seed and the cycle (file mode: --seed).
RUNTIME_PARAMS = ("seed",)


@functools.cache  # the dict is fixed at import; config validation asks often
def parameters() -> dict[str, tuple[Any, Any]]:
    """Every parameter any strategy takes (less the runtime ones): name -> (type, default).

    A parameter two strategies share (``t_enms``, DivProto's) must have one type and one
    default, so that a config key means the same whichever strategy reads it."""
    out: dict[str, tuple[Any, Any]] = {}
    for cls in STRATEGIES.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in RUNTIME_PARAMS:
                continue
            decl = (hints[f.name], f.default)
            if out.setdefault(f.name, decl) != decl:
                raise TypeError(f"strategy parameter {f.name!r} declared twice differently")
    return out


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def make_strategy(name: str, params: Mapping[str, Any]) -> Strategy:
    """The strategy ``name`` with those of ``params`` it takes (the others belong to other
    strategies and are ignored); unknown names and parameters are errors."""
    if name not in STRATEGIES:
        raise AcquireError(f"unknown strategy {name!r}{did_you_mean(name, STRATEGIES)};"
                           f" choose one of {', '.join(STRATEGIES)}")
    known = [*parameters(), *RUNTIME_PARAMS]
    for key in params:
        if key not in known:
            raise AcquireError(f"unknown acquisition parameter {key!r}{did_you_mean(key, known)};"
                               f" known: {', '.join(sorted(known))}")
    cls = STRATEGIES[name]
    used = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in params.items() if k in used})


def check_parameters(strategy: str, params: Mapping[str, Any]) -> None:
    """Validate the parameters: all of them by ``strategy``, and those set to other than their
    default by the other strategies that take them (a config names every parameter, whichever
    strategy it selects with; an unset one, e.g. ``external``'s scores file, is no error
    unless ``strategy`` needs it)."""
    make_strategy(strategy, params)
    defaults = {name: default for name, (_, default) in parameters().items()}
    changed = {k: v for k, v in params.items() if k not in defaults or v != defaults[k]}
    for name in STRATEGIES:
        used = {f.name for f in dataclasses.fields(STRATEGIES[name])}
        if name != strategy and used & set(changed):
            make_strategy(name, {k: v for k, v in changed.items() if k in used})


__all__ = ["STRATEGIES", "Strategy", "check_parameters", "make_strategy", "parameters"]
