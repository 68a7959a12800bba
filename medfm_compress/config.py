"""Helpers shared by the stage configs: frozen dataclasses that round-trip through JSON/YAML."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["config_to_dict", "config_from_dict", "option_value", "DictConfig", "PartedConfig", "require_positive"]

T = TypeVar("T")


def option_value(text: str) -> Any:
    """A ``KEY=VALUE`` option's value from its text (artifact ``?name=...`` options, ``monai:`` spec options):
    ``true/yes/on`` and ``false/no/off`` booleans, then an int, a float, else the text itself."""
    low = text.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def require_positive(cfg: Any, *names: str, flags: dict[str, str] | None = None) -> None:
    """A one-line error for the first of ``cfg``'s fields ``names`` set below 1 (None means "the default"); it
    names the field's flag: ``--num-calib``, or ``flags[name]`` where a part's field has another one."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{(flags or {}).get(name, name.replace('_', '-'))} must be >= 1, got {value}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-serialisable dict of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else config_to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


class DictConfig:
    """A stage's config dataclass: ``to_dict()`` is its plain, JSON-serialisable form (what manifests record)."""

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def option_names(cls) -> list[str]:
        """The keys a recipe section or the command line may set: the fields."""
        return [f.name for f in dataclasses.fields(cls)]

    def to_options(self) -> dict[str, Any]:
        """The flat form a recipe holds (here the same as :meth:`to_dict`)."""
        return self.to_dict()


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build ``cls`` from ``data``; unknown keys are errors naming the nearest valid key. A :class:`PartedConfig`
    takes its flat options (or its parts as nested mappings)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    if isinstance(cls, type) and issubclass(cls, PartedConfig):
        return cls.from_options(where, **data)
    return _build(cls, data, where)


def _build(cls: type[T], data: dict[str, Any], where: str, names: dict[str, str] | None = None) -> T:
    """``cls(**data)`` with each value checked against its type hint; an error names the key as the user wrote it
    (``names``: field -> its flat option, for a part whose fields have options of other names)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise unknown_key(key, list(fields), where)
        label = (names or {}).get(key, key)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{label}" if where else label)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _plain(value: Any) -> Any:
    """A default as :func:`config_to_dict` writes it (tuples as lists, configs as mappings)."""
    if isinstance(value, tuple):
        return list(value)
    return config_to_dict(value) if dataclasses.is_dataclass(value) else value


def unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    """The one-line error for a key ``where`` does not take, naming the nearest valid one."""
    near = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key '{key}'{' in ' + where if where else ''}{hint}")


def option(default: Any = None, name: str | None = None, **kwargs: Any) -> Any:
    """A part's field whose flat option has another name than the field (``TeacherConfig.weights`` is the
    ``teacher_weights`` option): ``weights: str | None = option(name="teacher_weights")``."""
    return dataclasses.field(default=default, metadata={"option": name} if name else {}, **kwargs)


def option_name(f: dataclasses.Field) -> str:
    """The flat option (recipe key, ``--flag``) of a part's field."""
    return f.metadata.get("option") or f.name


class PartedConfig(DictConfig):
    """A stage config made of typed parts: the fields whose type is a config dataclass (a quantization's
    calibration, gate and backend; a distillation's teacher, student, loss and loop).

    Command-line flags and recipe keys stay flat: :meth:`from_options` gives each option to the part that declares
    it (under the field's own name, or the name given by :func:`option`); a part may also be given whole, as a
    mapping of its fields or an instance. :meth:`to_options` is the inverse; ``to_dict()`` is the typed, nested form
    that manifests record. A subclass whose part's type depends on an option (the backend on ``target``) names that
    option and its default in ``SELECTORS`` and overrides :meth:`part_classes`.
    """

    SELECTORS: typing.ClassVar[dict[str, Any]] = {}  # selector option -> its default

    @classmethod
    def part_classes(cls, options: dict[str, Any]) -> dict[str, type]:
        """Part field -> its config class, for these options."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)
                if isinstance(hints[f.name], type) and dataclasses.is_dataclass(hints[f.name])}

    @classmethod
    def all_part_classes(cls) -> list[type]:
        """Every class a part can have (one per part unless a selector chooses among several)."""
        return list(cls.part_classes({}).values())

    @classmethod
    def _top_fields(cls) -> list[dataclasses.Field]:
        parts = cls.part_classes({})
        return [f for f in dataclasses.fields(cls) if f.name not in parts]

    @classmethod
    def option_names(cls) -> list[str]:
        """Every flat option some configuration of this class takes (and the parts, which may be given whole)."""
        names = [f.name for f in cls._top_fields()]
        for part in cls.all_part_classes():
            names += [n for n in map(option_name, dataclasses.fields(part)) if n not in names]
        return [*names, *cls.SELECTORS, *(p for p in cls.part_classes({}) if p not in names)]

    @classmethod
    def option_default(cls, name: str) -> Any:
        """The default of flat option ``name``, from the class (top level or part) that declares it."""
        if name in cls.SELECTORS:
            return cls.SELECTORS[name]
        for f in cls._top_fields():
            if f.name == name:
                return f.default
        for part in cls.all_part_classes():
            for f in dataclasses.fields(part):
                if option_name(f) == name:
                    return f.default
        raise KeyError(name)

    @classmethod
    def option_type(cls, name: str) -> Any:
        """The type hint of flat option ``name`` (a ``Literal``'s values are its choices on the command line)."""
        if name in cls.SELECTORS:
            return str
        for f in cls._top_fields():
            if f.name == name:
                return typing.get_type_hints(cls)[name]
        for part in cls.all_part_classes():
            for f in dataclasses.fields(part):
                if option_name(f) == name:
                    return typing.get_type_hints(part)[f.name]
        raise KeyError(name)

    @classmethod
    def unknown_option(cls, key: str, options: dict[str, Any], where: str) -> ConfigError:
        return unknown_key(key, cls.option_names(), where)

    @classmethod
    def from_options(cls, where: str = "config", /, **options: Any):
        parts = cls.part_classes(options)
        top = {f.name for f in cls._top_fields()}
        owner = {option_name(f): (name, f.name) for name, part in parts.items() for f in dataclasses.fields(part)}
        given: dict[str, dict[str, Any]] = {name: {} for name in parts}
        whole: dict[str, Any] = {}
        kwargs: dict[str, Any] = {}
        for key, value in options.items():
            if key in cls.SELECTORS:
                continue
            if key in parts and not (key in owner and not isinstance(value, dict | parts[key])):
                if isinstance(value, parts[key]):
                    whole[key] = value
                elif isinstance(value, dict):
                    given[key].update(value)
                else:
                    raise ConfigError(f"{where}.{key} must be a mapping of its options, got {value!r}")
            elif key in top:
                kwargs[key] = value
            elif key in owner:
                part, field = owner[key]
                given[part][field] = value
            else:
                raise cls.unknown_option(key, options, where)
        for name, part in parts.items():
            names = {f.name: option_name(f) for f in dataclasses.fields(part)}
            if name in whole:
                if given[name]:
                    flat = ", ".join(names.get(k, k) for k in given[name])
                    raise ConfigError(f"{where + ': ' if where else ''}{flat} given beside a whole {name}; give one")
                kwargs[name] = whole[name]
            else:
                kwargs[name] = _build(part, given[name], where, names)
        return _build(cls, kwargs, where)

    def selector_values(self) -> dict[str, Any]:
        return {}

    def to_options(self) -> dict[str, Any]:
        """The flat form: every option, as a recipe or the command line gives it."""
        parts = type(self).part_classes(self.selector_values())
        out = dict(self.selector_values())
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in parts:
                out |= {option_name(pf): v for pf, v in zip(dataclasses.fields(value),
                                                               config_to_dict(value).values(), strict=True)}
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def get_option(self, name: str) -> Any:
        """The value of flat option ``name`` (``teacher_weights`` -> ``self.teacher.weights``)."""
        parts = type(self).part_classes(self.selector_values())
        if name in self.selector_values():
            return self.selector_values()[name]
        for f in dataclasses.fields(self):
            if f.name not in parts and f.name == name:
                return getattr(self, name)
        for part_name in parts:
            part = getattr(self, part_name)
            for f in dataclasses.fields(part):
                if option_name(f) == name:
                    return getattr(part, f.name)
        raise KeyError(f"{type(self).__name__} has no option {name!r}")

    def replace_options(self, **options: Any):
        """This config with some flat options changed (checked as :meth:`from_options` checks them). Options left
        at their default are not carried over, so a changed selector (another ``target``) gets its own defaults."""
        cls = type(self)
        kept = {k: v for k, v in self.to_options().items()
                if k in cls.SELECTORS or v != _plain(cls.option_default(k))}
        return cls.from_options(cls.__name__, **{**kept, **options})

    def to_dict(self) -> dict[str, Any]:
        return {**self.selector_values(), **config_to_dict(self)}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ConfigError(f"{where} must not be null")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where} has an invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a nested config (a backend's own settings)
        if isinstance(value, hint):
            return value
        return config_from_dict(hint, value, where)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value
