"""Typed run configuration: the schema (:mod:`testbed.config_schema`: dataclasses whose field docstrings
are the CLI help, choices, ranges, YAML reading) plus the check of registry-backed names.

A run config is YAML with one mapping per section (``run``, ``task``, ``model``, ``rollout``,
``algo``, ``stop``, ``tppo``); ``key=value`` overrides use dotted paths (``stop.tau=3``). An unknown
key or a value of the wrong type raises :class:`ConfigError` naming the key.

:func:`validate` checks that estimator, policy loss, KL estimator, aggregation and stop rule name
registered members, which imports their registries (and torch) when it runs; :func:`load` and
:func:`from_dict` validate so. Code that must not import torch reads configs with the schema module's
``load`` and ``from_dict``. Every name of the schema stays importable from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from testbed.config_schema import (  # noqa: F401 (re-exported: the schema's names, importable from here)
    _CHOICES,
    _INF,
    _RANGES,
    AlgoSection,
    Config,
    ConfigError,
    ModelSection,
    RolloutSection,
    RunSection,
    StopSection,
    TaskSection,
    TPPOSection,
    check,
    dump,
    field_docs,
    parse_override,
    read_yaml,
    safe_load,
)
from testbed import config_schema as schema


def _registries() -> dict[tuple[str, str], list[str]]:
    """Registry-backed fields -> their valid names (imported here: the registries import this module)."""
    from testbed.advantages import ESTIMATORS
    from testbed.losses import KL_ESTIMATORS, POLICY_LOSSES
    from testbed.masked import AGG_MODES
    from testbed.stopping import RULES

    return {("algo", "estimator"): ESTIMATORS.names(), ("algo", "policy_loss"): POLICY_LOSSES.names(),
            ("algo", "kl_type"): KL_ESTIMATORS.names(), ("algo", "agg"): list(AGG_MODES),
            ("stop", "rule"): RULES.names()}


def validate(cfg: Config) -> None:
    """Names, ranges and cross-field checks; each message names the key."""
    for (section, name), valid in _registries().items():
        value = getattr(getattr(cfg, section), name)
        if value not in valid:
            raise ConfigError(f"{section}.{name}: unknown {value!r}; valid: {', '.join(valid)}")
    check(cfg)


def from_dict(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a validated Config from nested mappings plus ``key=value`` overrides."""
    return schema.from_dict(data, overrides, validate=validate)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config file (errors name the file) and apply overrides.

    An empty file is refused: a config names at least one section (the built-in defaults alone are not
    a tested configuration, and an empty file is more often a mistake than a choice).
    """
    return schema.load(path, overrides, validate=validate)
