"""A search space: dotted config keys mapped to ranges, each sample turned into config overrides.

The space lives in its own YAML file (the run config forbids unknown keys), for example::

    train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
    train.batch_size: {type: categorical, choices: [16, 32, 64]}
    train.freeze_epochs: {type: int, low: 0, high: 2}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from xraytriage.config import Config, ConfigError

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "train.weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
    "train.batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "augment.probability": {"type": "float", "low": 0.3, "high": 1.0},
    "train.freeze_epochs": {"type": "int", "low": 0, "high": 2},
}

_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Param:
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for a value of this key."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            step = int(self.step) if self.step else 1
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def extremes(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def format_value(value: Any) -> str:
    """A value as override text that YAML reads back as the same type (PyYAML needs '1.0e-05')."""
    if isinstance(value, bool) or value is None:
        return yaml.safe_dump(value).splitlines()[0]
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, (int, str)):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip()


def to_overrides(params: dict[str, Any]) -> list[str]:
    """Sampled values -> ``KEY=VALUE`` strings for :func:`xraytriage.config.load_config`."""
    return [f"{key}={format_value(value)}" for key, value in params.items()]


def _config_field_exists(key: str) -> bool:
    model: type[BaseModel] = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return False
            model = ann
    return True


def _number(source: str, key: str, name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: key '{key}': '{name}' must be a number (got {value!r})") from None


def parse_space(tree: Any, source: str = "<default space>") -> list[Param]:
    """Validate a space mapping; raise ConfigError naming the file and key."""
    if not isinstance(tree, dict) or not tree:
        raise ConfigError(f"{source}: the search space must be a non-empty mapping of config keys to ranges")
    params = []
    for key, spec in tree.items():
        key = str(key)
        if not _config_field_exists(key):
            raise ConfigError(
                f"{source}: '{key}' is not a config key "
                "(use dotted names such as train.lr, augment.probability)"
            )
        if not isinstance(spec, dict) or spec.get("type") not in _TYPES:
            raise ConfigError(f"{source}: key '{key}': needs 'type' set to one of {', '.join(_TYPES)}")
        unknown = set(spec) - {"type", "low", "high", "log", "step", "choices"}
        if unknown:
            raise ConfigError(f"{source}: key '{key}': unknown field(s) {', '.join(sorted(unknown))}")
        kind = spec["type"]
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{source}: key '{key}': categorical needs a non-empty 'choices' list")
            params.append(Param(key, kind, choices=tuple(choices)))
            continue
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{source}: key '{key}': {kind} needs 'low' and 'high'")
        low = _number(source, key, "low", spec["low"])
        high = _number(source, key, "high", spec["high"])
        log = bool(spec.get("log", False))
        step = _number(source, key, "step", spec["step"]) if spec.get("step") is not None else None
        if not low < high:
            raise ConfigError(f"{source}: key '{key}': 'low' ({low:g}) must be below 'high' ({high:g})")
        if log and low <= 0:
            raise ConfigError(f"{source}: key '{key}': a log range needs 'low' > 0")
        if log and step is not None:
            raise ConfigError(f"{source}: key '{key}': 'step' and 'log' cannot be combined")
        params.append(Param(key, kind, low, high, log, step))
    return params


def load_space(path: str | Path | None) -> list[Param]:
    """The search space from a YAML file, or :data:`DEFAULT_SPACE` when ``path`` is None."""
    if path is None:
        return parse_space(DEFAULT_SPACE)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: search-space file not found")
    try:
        tree = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML ({exc.__class__.__name__})") from None
    return parse_space(tree, str(p))
