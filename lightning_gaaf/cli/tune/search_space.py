"""Search spaces for ``gaaf-tune``: a YAML file of ``gaaf-fit`` keys and the values to try.

A search space maps dotted ``gaaf-fit`` config keys to Optuna distributions::

    # search/mnist_gaaf.yaml
    metric: val/acc          # objective: the best value of this epoch metric (default val/acc)
    direction: maximize      # or minimize (default: maximize, minimize for keys ending in "loss")
    fixed:                   # optional: values every trial gets (here: the shape whose width is tuned)
      gaaf.shape: gauss
    params:
      model.optimizer.init_args.lr: {type: float, low: 1.0e-3, high: 0.3, log: true}
      gaaf.K: {type: float, low: 100, high: 1.0e5, log: true}
      gaaf.shape_kwargs.c: {type: float, low: 0.3, high: 30, log: true}
      model.backbone.init_args.dropout: {type: float, low: 0.1, high: 0.7}
      data.init_args.batch_size: {type: categorical, choices: [64, 128, 256]}

``type`` is ``float`` (``low``, ``high``, optional ``log`` or ``step``), ``int`` (same) or
``categorical`` (``choices``). A trial's values (with the ``fixed`` ones) become one nested YAML document given to ``gaaf-fit``
after the config, so they override it like any ``--config`` file would.

By default ``gaaf-tune CONFIG`` looks for the space next to the config, in ``search/<config stem>.yaml``
(the bundled configs have theirs in ``configs/search/``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

SPACE_DIR = "search"
_TYPES = ("float", "int", "categorical")


class SearchSpaceError(ValueError):
    """A search-space file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SearchSpace:
    """The parameters to tune (dotted ``gaaf-fit`` key -> distribution), the metric and its direction."""

    params: dict[str, optuna.distributions.BaseDistribution]
    fixed: dict[str, Any] = field(default_factory=dict)
    metric: str = "val/acc"
    direction: str = "maximize"
    path: Path | None = field(default=None, compare=False)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw one value per parameter from ``trial`` (the sampler decides which)."""
        values: dict[str, Any] = dict(self.fixed)
        for key, dist in self.params.items():
            if isinstance(dist, optuna.distributions.FloatDistribution):
                values[key] = trial.suggest_float(key, dist.low, dist.high, log=dist.log, step=dist.step)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                values[key] = trial.suggest_int(key, dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                values[key] = trial.suggest_categorical(key, dist.choices)
        return values


def default_space_path(config: Path) -> Path:
    """``<config folder>/search/<config stem>.yaml``: where a config's search space lives by default."""
    return config.parent / SPACE_DIR / f"{config.stem}.yaml"


def _distribution(key: str, spec: Any, where: str) -> optuna.distributions.BaseDistribution:
    if not isinstance(spec, dict):
        raise SearchSpaceError(f"{where}: parameter {key!r} must be a mapping with a 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in _TYPES:
        raise SearchSpaceError(
            f"{where}: parameter {key!r}: type must be one of {', '.join(_TYPES)}, got {kind!r}"
        )
    allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log", "step"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SearchSpaceError(f"{where}: parameter {key!r}: unknown field(s) {', '.join(unknown)}")
    try:
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError("'choices' must be a non-empty list")
            return optuna.distributions.CategoricalDistribution(choices)
        if "low" not in spec or "high" not in spec:
            raise ValueError("'low' and 'high' are required")
        log, step = bool(spec.get("log", False)), spec.get("step")
        if kind == "float":
            low, high = float(spec["low"]), float(spec["high"])
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError("'low' and 'high' must be finite")
            return optuna.distributions.FloatDistribution(low, high, log=log, step=step)
        return optuna.distributions.IntDistribution(
            int(spec["low"]), int(spec["high"]), log=log, step=step or 1
        )
    except (TypeError, ValueError) as exc:
        raise SearchSpaceError(f"{where}: parameter {key!r}: {exc}") from None


def load_space(path: Path) -> SearchSpace:
    """Read and check a search-space file (see the module docstring for its format)."""
    try:
        content = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"search space {path}: no such file") from None
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"search space {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    where = f"search space {path}"
    if not isinstance(content, dict) or not isinstance(content.get("params"), dict) or not content["params"]:
        raise SearchSpaceError(f"{where}: expected a mapping with a non-empty 'params' mapping")
    unknown = sorted(set(content) - {"params", "fixed", "metric", "direction"})
    if unknown:
        raise SearchSpaceError(
            f"{where}: unknown key(s) {', '.join(unknown)} (expected params, fixed, metric, direction)"
        )
    fixed = content.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SearchSpaceError(f"{where}: 'fixed' must be a mapping of keys to values")
    both = sorted(set(fixed) & set(content["params"]))
    if both:
        raise SearchSpaceError(f"{where}: {', '.join(both)} both fixed and tuned")
    metric = str(content.get("metric", "val/acc"))
    direction = content.get("direction", "minimize" if metric.endswith("loss") else "maximize")
    if direction not in ("minimize", "maximize"):
        raise SearchSpaceError(f"{where}: direction must be minimize or maximize, got {direction!r}")
    params = {str(key): _distribution(str(key), spec, where) for key, spec in content["params"].items()}
    return SearchSpace(
        params=params,
        fixed={str(k): v for k, v in fixed.items()},
        metric=metric,
        direction=direction,
        path=Path(path),
    )


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys -> nested mappings: ``{"a.b": 1, "a.c": 2}`` -> ``{"a": {"b": 1, "c": 2}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SearchSpaceError(f"parameter {key!r} goes below another parameter's value")
        node[last] = value
    return out


def overrides_yaml(values: dict[str, Any]) -> str:
    """One trial's values as the YAML document given to ``gaaf-fit --config``."""
    plain = {k: (v.item() if hasattr(v, "item") else v) for k, v in values.items()}
    return yaml.safe_dump(nested(plain), sort_keys=False)
