"""Reading and writing TrainingConfig: YAML files, plain dicts, and dotted command-line overrides.

    config = apply_overrides(load_config("run.yaml"), ["train.batch_size=512", "eval.steps=1,2"])
    text = dump_config(config)

Every value is converted to the type annotated on its dataclass field (int, float, bool, str,
Optional[...], Tuple[...], Dict[str, Any], nested sections). An unknown key or a value of the wrong
type raises ConfigError naming the dotted key; range checks are TrainingConfig.validate()'s job.
YAML is read with the safe loader and without aliases (`*name`): nested aliases expand exponentially
(a few hundred bytes can name billions of nodes), and a configuration has no need of them. Errors show
values shortened, never an unbounded repr.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, Union

import yaml

from .config import ConfigError, TrainingConfig, short_repr

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null", "~", "")
class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases, so a document cannot expand beyond its own size."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not accepted in a configuration "
                                 f"({event.start_mark.line + 1}:{event.start_mark.column + 1}); write the value out")
        return super().compose_node(parent, index)


def safe_load_yaml(text: str) -> Any:
    """yaml.safe_load without aliases (yaml.YAMLError for them, as for any malformed document)."""
    return yaml.load(text, Loader=_NoAliasLoader)


def _field_types(cls) -> Dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unknown_key(key: str, known) -> ConfigError:
    name = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"
    return ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """`value` converted to `annotation`, or ConfigError naming `key`."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin is Union:
        options = [a for a in arguments if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        return _coerce(value, options[0], key)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: must be a mapping of the section's keys; got {short_repr(value)}")
        return _from_dict(annotation, value, key)
    if origin in (dict, Dict):
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: must be a mapping with string keys; got {short_repr(value)}")
        return dict(value)
    if origin in (tuple, typing.Tuple):
        return _coerce_tuple(value, arguments, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise ConfigError(f"{key}: must be true or false; got {short_repr(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key}: must be an integer; got {short_repr(value)}") from None
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key}: must be a number; got {short_repr(value)}") from None
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: must be a string; got {short_repr(value)}")
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def _coerce_tuple(value: Any, arguments, key: str) -> tuple:
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        value = [item.strip() for item in text.split(",")] if text else []
    elif not isinstance(value, (list, tuple)):
        value = [value]
    if len(arguments) == 2 and arguments[1] is Ellipsis:
        return tuple(_coerce(item, arguments[0], f"{key}[{i}]") for i, item in enumerate(value))
    if len(value) != len(arguments):
        raise ConfigError(f"{key}: must hold {len(arguments)} values; got {short_repr(list(value))}")
    return tuple(_coerce(item, kind, f"{key}[{i}]") for i, (item, kind) in enumerate(zip(value, arguments)))


def _from_dict(cls, values: Dict[str, Any], prefix: str = "", base=None):
    """An instance of dataclass `cls` from `values`, unset keys taken from `base` (default: cls())."""
    types = _field_types(cls)
    changes = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in types:
            raise _unknown_key(key, types)
        current = getattr(base, name) if base is not None else None
        if dataclasses.is_dataclass(types[name]) and isinstance(value, dict) and current is not None:
            changes[name] = _from_dict(types[name], value, key, base=current)
        else:
            changes[name] = _coerce(value, types[name], key)
    return dataclasses.replace(base, **changes) if base is not None else cls(**changes)


def config_from_dict(values: Dict[str, Any], base: TrainingConfig = None) -> TrainingConfig:
    """A TrainingConfig from nested plain values (as in a YAML file), on top of `base` (default: defaults)."""
    if not isinstance(values, dict):
        raise ConfigError(f"a configuration must be a mapping of sections; got {type(values).__name__}")
    return _from_dict(TrainingConfig, values, base=TrainingConfig() if base is None else base)


def config_to_dict(config: TrainingConfig) -> Dict[str, Any]:
    """Nested plain values (tuples as lists) that config_from_dict turns back into `config`."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def dump_config(config: TrainingConfig) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def parse_config(text: str, base: TrainingConfig = None, source: str = "<string>") -> TrainingConfig:
    try:
        values = safe_load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source} is not valid YAML: {short_repr(str(error), 400)}") from None
    return config_from_dict({} if values is None else values, base)


def load_config(path: Union[str, Path], base: TrainingConfig = None) -> TrainingConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    return parse_config(path.read_text(), base, source=str(path))


def apply_overrides(config: TrainingConfig, overrides: Iterable[str]) -> TrainingConfig:
    """Apply `section.field=value` overrides (`section.field.key=value` inside a dict field), in order."""
    for override in overrides:
        key, separator, text = override.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"override {override!r} must have the form section.key=value")
        config = _override(config, key.split("."), text)
    return config


def _override(node, path, text: str, prefix: str = ""):
    types = _field_types(type(node))
    name = path[0]
    key = f"{prefix}.{name}" if prefix else name
    full_key = ".".join([key, *path[1:]])
    if name not in types:
        raise _unknown_key(key, types)
    annotation, current = types[name], getattr(node, name)
    if len(path) > 1:
        if dataclasses.is_dataclass(annotation):
            return dataclasses.replace(node, **{name: _override(current, path[1:], text, key)})
        if typing.get_origin(annotation) in (dict, Dict):
            entries = copy.deepcopy(current)
            _set_nested(entries, path[1:], _parse_yaml_value(text, full_key), full_key)
            return dataclasses.replace(node, **{name: entries})
        raise ConfigError(f"{full_key}: {key!r} is a single value, not a section")
    if dataclasses.is_dataclass(annotation):
        raise ConfigError(f"{key}: is a section; set one of its keys ({', '.join(_field_types(annotation))})")
    value = text if _is_text(annotation) else _parse_yaml_value(text, key)
    return dataclasses.replace(node, **{name: _coerce(value, annotation, key)})


def _is_text(annotation) -> bool:
    """str and Optional[str] fields take the override text as written (so "name=007" stays "007")."""
    return annotation is str or (typing.get_origin(annotation) is Union and str in typing.get_args(annotation))


def _parse_yaml_value(text: str, key: str) -> Any:
    try:
        return safe_load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot read the value {short_repr(text)} ({str(error).splitlines()[0]})") from None


def _set_nested(entries: dict, path, value, key: str) -> None:
    for name in path[:-1]:
        entries = entries.setdefault(name, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"{key}: {name!r} is a single value, not a mapping")
    entries[path[-1]] = value
