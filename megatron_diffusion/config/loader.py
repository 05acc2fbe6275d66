"""Reading a run config: YAML and ``section.field=value`` overrides onto a ``RunConfig``.

defaults < YAML file < a phase's keys (``training/phases.py``) < overrides. Override values are
parsed as YAML (``3``, ``1e-4``, ``null``, ``[1, 2]``). Every value is checked against its field's
annotation, so an unknown section or key, or a value of the wrong type, fails before any work with
the key's dotted name and what was expected. ``config/run.py`` holds the config classes.
"""

import dataclasses
import re
import types
import typing
from pathlib import Path

import yaml

from megatron_diffusion.config.run import RunConfig
from megatron_diffusion.errors import UsageError

_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_ok(value, tp) -> tuple[bool, object]:
    """Is ``value`` acceptable for annotation ``tp``? Returns (ok, coerced value)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, v = _type_ok(value, arg)
            if ok:
                return True, v
        return False, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return True, float(value)  # 1e-4: YAML 1.1 wants a dot, PyYAML reads a string
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        (arg,) = typing.get_args(tp) or (object,)
        out = []
        for item in value:
            ok, v = _type_ok(item, arg)
            if not ok:
                return False, value
            out.append(v)
        return True, out
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, value
        out = []
        for item, arg in zip(value, args):
            ok, v = _type_ok(item, arg)
            if not ok:
                return False, value
            out.append(v)
        return True, tuple(out)
    return True, value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _apply(obj: RunConfig, key_path: str, value) -> None:
    section_name, _, field_name = key_path.partition(".")
    sections = obj.sections()
    if section_name not in sections or not field_name:
        raise UsageError(f"config key {key_path!r}: unknown; expected 'SECTION.FIELD' with "
                         f"SECTION one of {', '.join(sections)}")
    section = getattr(obj, section_name)
    hints = typing.get_type_hints(type(section))
    known = [f.name for f in dataclasses.fields(section)]
    if field_name not in known:
        raise UsageError(f"config key {key_path!r}: unknown field of {section_name}; known: "
                         f"{', '.join(known)}")
    ok, coerced = _type_ok(value, hints[field_name])
    if not ok and isinstance(value, bool) and _type_ok("x", hints[field_name])[0]:
        raise UsageError(f"config key {key_path!r}: got the boolean {value!r}; YAML reads "
                         "off/on/no/yes unquoted as booleans, quote the value (e.g. 'off')")
    if not ok:
        raise UsageError(f"config key {key_path!r}: got {value!r}, expected "
                         f"{_type_name(hints[field_name])}")
    setattr(section, field_name, coerced)


def flatten(d: dict, prefix: str = "") -> dict:
    """``{section: {field: v}}`` as ``{"section.field": v}`` (one level: a field's own dict value
    stays whole)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix:
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise UsageError(f"override {text!r}: expected SECTION.FIELD=VALUE")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    """The YAML run config as a dict (sections, and an optional ``phases`` list)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"--config: file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"--config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path} must hold a mapping of sections")
    if "stages" in data:  # "stage" now means only the corruption curriculum's mask/edit stages
        raise UsageError(f"stages: renamed to phases in {path} (the same list of runs)")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                validate: bool = True, phase: dict | None = None, cls=RunConfig) -> RunConfig:
    """defaults < YAML file < ``phase`` (a flat ``section.field`` dict, training/phases.py) <
    overrides (``["model.num_layers=2", ...]`` or a flat dict). A ``phases:`` list in the YAML
    is not applied here: ``train`` runs it (``training/phases.py``). ``cls``: ``RunConfig`` or
    a subclass with more sections (``onpolicy.config.OnPolicyRunConfig``)."""
    cfg = cls()
    explicit = set()
    if path is not None:
        data = {k: v for k, v in read_yaml(path).items() if k != "phases"}
        for section, body in data.items():
            if not isinstance(body, dict):
                raise UsageError(f"config section {section!r} in {path}: expected a mapping")
        for key, value in flatten(data).items():
            _apply(cfg, key, value)
            explicit.add(key)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in [*(phase or {}).items(), *items]:
        _apply(cfg, key, value)
        explicit.add(key)
    cfg.explicit_keys = frozenset(explicit)
    return cfg.validate() if validate else cfg


def config_from_dict(d: dict, validate: bool = False, cls=RunConfig) -> RunConfig:
    """Rebuild a ``RunConfig`` (or ``cls``) saved with ``to_dict`` (checkpoints, run snapshots)."""
    cfg = cls()
    for key, value in flatten(d).items():
        _apply(cfg, key, value)
    return cfg.validate() if validate else cfg
