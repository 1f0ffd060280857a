"""Settings dataclasses: help text in the fields, nested overrides, command-line options.

A settings class is a dataclass whose fields say what they are::

    @dataclasses.dataclass
    class CGSettings:
        replicas: int = setting(100, help="independent CG replicas", stage="simulate")
        training: TrainConfig = setting(TrainConfig(epochs=30), help="force matching",
                                        stage="train")

A job's settings may hold other settings (its training configuration); their fields are
reached by name, as if they were the outer class's own:

- :func:`override` ``(QUICK, epochs=2, replicas=4)`` returns a copy with ``training.epochs``
  and ``replicas`` changed (a name found at two levels must be spelled as a path,
  ``"vamp.k"``);
- :func:`add_options` gives a parser one ``--field-name`` option per field (nested fields
  flattened), typed from the annotation, with the field's help text and the default of a
  given settings instance; an option left out keeps the settings' value;
- :func:`overrides_from` returns the options given on the command line, for :func:`override`;
- :func:`check_settings` checks every field that declares a ``check`` (``"positive"``,
  ``"non-negative"``, ``"finite"``, ``"count"``: an integer >= 1) and every field with
  ``choices``, nested settings included; settings classes call it from ``__post_init__``, so
  the Python API and the command line refuse the same values with the same message, before
  anything is created.

Flags are the field names, lower case, with dashes for underscores (``temperature_K`` ->
``--temperature-k``); the parsed value keeps the field's name.
"""
from __future__ import annotations

import argparse
import collections
import collections.abc
import copy
import dataclasses
import difflib
import typing
import math
import numbers
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

__all__ = ["setting", "setting_fields", "override", "add_options", "overrides_from",
           "option_flag", "check_settings", "SettingField", "CHECKS"]

_KEY = "openmm_geom.setting"
_REGISTERED = "_settings_options"  # namespace attribute: the option names add_options made


class _NoneGiven:
    """The parsed value of ``none`` for an Optional field (``None`` means "not given")."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "none"


_NONE = _NoneGiven()


#: The constraints a field may declare with ``setting(..., check=...)``: what they accept.
CHECKS = {
    "positive": "a finite number > 0",
    "non-negative": "a finite number >= 0",
    "finite": "a finite number",
    "count": "an integer >= 1",
}


def setting(default: Any = dataclasses.MISSING, *, help: str, choices: Optional[Iterable] = None,
            stage: Union[str, Sequence[str], None] = None, cli: bool = True,
            check: Optional[str] = None, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text (and choices, CLI stage, check) in its metadata.

    ``default`` may be mutable (a dict, a list, another settings instance): each instance
    then gets its own deep copy. ``stage`` names the step of a job the field belongs to, or
    a tuple of the steps that share it (``add_options(..., stages=...)`` selects by it; nested
    fields inherit their holder's stage). ``cli=False`` keeps the field off the command line
    (set per run, e.g. a seed).
    ``check`` is one of :data:`CHECKS` (``"positive"``, ``"non-negative"``, ``"finite"``,
    ``"count"``), tested by :func:`check_settings`; on an ``int`` field ``"non-negative"``
    means an integer >= 0. An ``Optional`` field may also be None.
    """
    if default is not dataclasses.MISSING and default_factory is not dataclasses.MISSING:
        raise TypeError("setting() takes a default or a default_factory, not both")
    if check is not None and check not in CHECKS:
        raise ValueError(f"check must be one of {sorted(CHECKS)}, got {check!r}")
    metadata = {_KEY: {"help": help, "choices": None if choices is None else tuple(choices),
                       "stage": tuple(stage) if isinstance(stage, (list, tuple)) else stage,
                       "cli": cli, "check": check}}
    if default is not dataclasses.MISSING and type(default).__hash__ is None:
        template = default
        default, default_factory = dataclasses.MISSING, lambda: copy.deepcopy(template)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class SettingField(NamedTuple):
    """One field of a settings class, nested fields included (see :func:`setting_fields`)."""

    name: str
    path: Tuple[str, ...]  # attribute names from the outer class, e.g. ("training", "epochs")
    type: Any  # the resolved annotation
    help: str
    choices: Optional[tuple]
    stage: Union[str, Tuple[str, ...], None]  # a step, or the steps sharing the field
    cli: bool
    nested: bool  # a settings dataclass itself (its fields are listed after it)
    check: Optional[str] = None  # one of CHECKS, or None


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _settings_class(cls_or_instance) -> type:
    cls = cls_or_instance if isinstance(cls_or_instance, type) else type(cls_or_instance)
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a settings dataclass")
    return cls


def setting_fields(cls) -> list:
    """Every field of a settings dataclass (class or instance), nested ones flattened, in
    declaration order: a :class:`SettingField` per field, the nested holder before its
    fields."""
    cls = _settings_class(cls)
    result = []
    _walk(cls, (), None, True, result)
    return result


def _walk(cls, prefix, inherited_stage, inherited_cli, result) -> None:
    try:
        hints = typing.get_type_hints(cls)
    except Exception as error:  # a forward reference the module cannot resolve
        raise TypeError(f"cannot resolve the annotations of {cls.__name__}: {error}") from error
    for f in dataclasses.fields(cls):
        meta = f.metadata.get(_KEY, {})
        tp = hints.get(f.name, Any)
        stage = meta.get("stage") or inherited_stage
        cli = inherited_cli and meta.get("cli", True)
        nested = _is_dataclass_type(tp)
        result.append(SettingField(f.name, prefix + (f.name,), tp, meta.get("help", ""),
                                   meta.get("choices"), stage, cli, nested, meta.get("check")))
        if nested:
            _walk(tp, prefix + (f.name,), stage, cli, result)


def _resolve(cls, fields, name: str) -> Tuple[str, ...]:
    """The attribute path of ``name`` (a field name at any depth, or a dotted path)."""
    if "." in name:
        path = tuple(name.split("."))
        if any(f.path == path for f in fields):
            return path
        raise TypeError(f"{cls.__name__} has no setting {name!r}")
    paths = [f.path for f in fields if f.name == name]
    if not paths:
        close = difflib.get_close_matches(name, sorted({f.name for f in fields}), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TypeError(f"{cls.__name__} has no setting {name!r}{hint}")
    if len(paths) > 1:
        spelled = ", ".join(repr(".".join(p)) for p in paths)
        raise ValueError(f"{name!r} is ambiguous in {cls.__name__}: it is {spelled}; "
                         "name the one you mean by its path")
    return paths[0]


def _apply(obj, changes: dict):
    direct = {path[0]: value for path, value in changes.items() if len(path) == 1}
    inner: dict = {}
    for path, value in changes.items():
        if len(path) > 1:
            inner.setdefault(path[0], {})[path[1:]] = value
    for head, sub in inner.items():
        direct[head] = _apply(direct.get(head, getattr(obj, head)), sub)
    return dataclasses.replace(obj, **direct)


def override(settings, **changes):
    """A copy of ``settings`` with fields replaced by name, nested settings included.

    ``override(CG_QUICK, epochs=2, folds=2)`` changes ``settings.training.epochs`` and
    ``.folds``; a nested settings object may also be replaced whole (``training=...``, then
    changed further by the other names). A name that is no field raises ``TypeError``; a
    name found at two levels raises ``ValueError`` unless spelled as a dotted path
    (``**{"vamp.k": 3}``). Every changed object is rebuilt with ``dataclasses.replace``,
    so its ``__post_init__`` checks run.
    """
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError(f"override() needs a settings instance, got {settings!r}")
    cls = type(settings)
    fields = setting_fields(cls)
    resolved: dict = {}
    for name, value in changes.items():
        path = _resolve(cls, fields, name)
        if path in resolved:
            raise ValueError(f"{'.'.join(path)} is given twice")
        resolved[path] = value
    return _apply(settings, resolved) if resolved else dataclasses.replace(settings)


def _check_value(label: str, kind, check: Optional[str], choices, value) -> None:
    if choices is not None and value not in choices:
        raise ValueError(f"{label} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if check is None:
        return
    if check == "count" or (kind is int and check == "non-negative"):
        minimum = 1 if check == "count" else 0
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{label} must be a number, got {value!r}")
    x = float(value)
    if not (math.isfinite(x) and (check == "finite" or x > 0 or (check == "non-negative"
                                                                   and x == 0))):
        raise ValueError(f"{label} must be {CHECKS[check]}, got {value!r}")


def check_settings(settings) -> None:
    """Check every field of ``settings`` (nested settings included) that declares a ``check``
    or ``choices``; a ValueError names the field (its dotted path when nested) and says what
    it accepts, e.g. ``"steps must be an integer >= 0, got -5"``.

    Settings classes call this from ``__post_init__``, so ``CGSettings(steps=-5)`` and
    ``override(QUICK, steps=-5)`` (and ``--steps -5`` on the command line) are refused before
    any work starts. Workflows call it again on entry, in case a field was assigned later.
    """
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError(f"check_settings() needs a settings instance, got {settings!r}")
    for f in setting_fields(type(settings)):
        if f.nested or (f.check is None and f.choices is None):
            continue
        value = _value_at(settings, f.path)
        kind, optional = _optional_inner(f.type)
        if value is None and optional:
            continue
        _check_value(".".join(f.path), kind, f.check, f.choices, value)


# ------------------------------------------------------------------------ command line
def option_flag(name: str) -> str:
    """The command-line flag of a field: ``temperature_K`` -> ``--temperature-k``."""
    return "--" + name.lower().replace("_", "-")


def _optional_inner(tp):
    """(X, True) for Optional[X], else (tp, False)."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


_SCALARS = (int, float, str)
_METAVARS = {int: "N", float: "X", str: "TEXT"}
_SEQUENCES = (list, tuple, collections.abc.Sequence)


def _sequence_item(tp):
    """X for list[X], tuple[X, ...], Sequence[X] with a scalar X; else None."""
    origin = typing.get_origin(tp)
    if origin not in _SEQUENCES:
        return None
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if len(set(args)) == 1 and args[0] in _SCALARS:
        return args[0]
    return None


def _supported(tp) -> bool:
    inner, _ = _optional_inner(tp)
    return inner is bool or inner in _SCALARS or _sequence_item(inner) is not None


def _converter(kind, optional: bool):
    if not optional:
        return kind

    def convert(text: str):
        if text.strip().lower() == "none":
            return _NONE
        return kind(text)

    convert.__name__ = kind.__name__  # argparse names the type in its error messages
    return convert


def _format(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return " ".join(_format(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _value_at(instance, path):
    for name in path:
        instance = getattr(instance, name)
    return instance


def _select(cls, stages, include, exclude) -> list:
    fields = [f for f in setting_fields(cls) if not f.nested and f.cli]
    if include is not None:
        by_name = {}
        for f in fields:
            by_name.setdefault(f.name, []).append(f)
        chosen = []
        for name in include:
            if name not in by_name:
                raise ValueError(f"{cls.__name__} has no command-line setting {name!r}")
            if not _supported(by_name[name][0].type):
                raise TypeError(f"{cls.__name__}.{name} ({by_name[name][0].type}) has no "
                                "command-line form")
            chosen.extend(by_name[name])
        fields = chosen
    else:
        fields = [f for f in fields if _supported(f.type)]
        if stages is not None:
            stages = (stages,) if isinstance(stages, str) else tuple(stages)
            fields = [f for f in fields if f.stage is None
                      or set((f.stage,) if isinstance(f.stage, str) else f.stage) & set(stages)]
    unknown = set(exclude) - {f.name for f in setting_fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting(s) {sorted(unknown)} to exclude")
    fields = [f for f in fields if f.name not in set(exclude)]
    seen: dict = {}
    for f in fields:
        if f.name in seen:
            raise ValueError(f"{cls.__name__} has two settings named {f.name!r} "
                             f"({'.'.join(seen[f.name])} and {'.'.join(f.path)}): one "
                             "option cannot set both; exclude one")
        seen[f.name] = f.path
    return fields


def add_options(parser: argparse.ArgumentParser, cls, *, defaults=None,
                stages: Optional[Sequence[str]] = None, include: Optional[Sequence[str]] = None,
                exclude: Sequence[str] = (), required: Sequence[str] = (),
                also: Optional[Mapping[str, Any]] = None, title: Optional[str] = None):
    """One option per field of the settings class ``cls`` (nested fields flattened).

    Parameters
    ----------
    parser : the (sub)parser to extend; the options go into an argument group ``title``
        (default: "settings (<cls>)").
    cls : the settings dataclass.
    defaults : the instance whose values the help text shows (default ``cls()``); the
        parsed default of every option is ``None``: keep the settings' value.
    stages : keep only fields of these stages (and fields without a stage).
    include : keep only these field names (in this order), instead of ``stages``.
    exclude : leave these field names out.
    required : these options must be given.
    also : ``{label: instance}``: help text adds "<label>: <value>" where that instance's
        value differs (e.g. ``{"--quick": QUICK}``).

    Types come from the annotations: ``int``, ``float``, ``str``; ``bool`` as
    ``--name/--no-name``; ``Optional[X]`` takes an X or ``none``; a sequence of one scalar
    type takes one or more values. Fields of other types, and fields made with
    ``cli=False``, get no option. Returns the argument group.
    """
    cls = _settings_class(cls)
    defaults = cls() if defaults is None else defaults
    fields = _select(cls, stages, include, exclude)
    unknown_required = set(required) - {f.name for f in fields}
    if unknown_required:
        raise ValueError(f"required options {sorted(unknown_required)} are not options here")
    group = parser.add_argument_group(title or f"settings ({cls.__name__})")
    for f in fields:
        inner, optional = _optional_inner(f.type)
        value = _value_at(defaults, f.path)
        text = f.help.rstrip(". ") if f.help else ""
        shown = f"default: {_format(value)}"
        for label, other in (also or {}).items():
            other_value = _value_at(other, f.path)
            if other_value != value:
                shown += f"; {label}: {_format(other_value)}"
        if f.name in required:
            shown = "required"
        text = (f"{text} ({shown})" if text else f"({shown})").replace("%", "%%")
        kwargs: dict = {"dest": f.name, "default": None, "help": text}
        if f.name in required:
            kwargs["required"] = True
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            item = _sequence_item(inner)
            if item is not None:
                kwargs.update(nargs="+", type=item, metavar=_METAVARS[item])
            else:
                kwargs["type"] = _converter(inner, optional)
                kwargs["metavar"] = _METAVARS[inner] + ("|none" if optional else "")
            if f.choices is not None:
                kwargs["choices"] = list(f.choices) + ([_NONE] if optional else [])
                kwargs.pop("metavar", None)
        group.add_argument(option_flag(f.name), **kwargs)
    registered = dict(parser.get_default(_REGISTERED) or {})
    registered.update({f.name: f.path for f in fields})
    parser.set_defaults(**{_REGISTERED: registered})
    return group


def overrides_from(args: argparse.Namespace, cls) -> dict:
    """``{field name: value}`` of the :func:`add_options` options of ``cls`` given on the
    command line (``none`` given for an Optional field becomes ``None``); feed it to
    :func:`override`."""
    cls = _settings_class(cls)
    registered = getattr(args, _REGISTERED, None) or {}
    fields = setting_fields(cls)
    count = collections.Counter(f.name for f in fields)
    result = {}
    for f in fields:
        if f.nested or registered.get(f.name) != f.path:
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        if value is _NONE:
            value = None
        elif isinstance(value, list):
            inner, _ = _optional_inner(f.type)
            value = list(value) if typing.get_origin(inner) is list else tuple(value)
        result[f.name if count[f.name] == 1 else ".".join(f.path)] = value
    return result
