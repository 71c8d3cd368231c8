"""Config overlays: a YAML file or a ``--set section.key=value`` merged onto the defaults.

`tfllm.config` owns the dataclasses; this module owns how text becomes values in them. Every
key and type is checked here, with the closest valid key suggested, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
from typing import Any

import yaml

from tfllm.errors import ConfigError

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def read(path: pathlib.Path) -> Any:
    """One YAML config file's contents, or a one-line error naming it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.start}); save the config file as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML syntax error: {err}".replace("\n", " ")) from None


def merge(values: dict, overlay: Any, origin: str, sections: dict[str, type]) -> None:
    """Writes `overlay`'s keys into `values` (section -> key -> value), checking each against
    the section dataclasses in `sections`; `origin` names the file or flag in errors."""
    if overlay is None:
        return
    if not isinstance(overlay, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections, got {type(overlay).__name__}")
    for section, entries in overlay.items():
        if section not in sections:
            raise ConfigError(
                f"{origin}: unknown section {section}{_suggest(section, [*sections])}"
            )
        if not isinstance(entries, dict):
            raise ConfigError(f"{origin}: section {section} must be a mapping of keys")
        for key, value in entries.items():
            valid = list(values[section])
            if key not in valid:
                raise ConfigError(
                    f"{origin}: unknown key {section}.{key}{_suggest(str(key), valid)}"
                )
            expected = _field_type(sections[section], key)
            if (section, key) == ("data", "source") and isinstance(value, list):
                value = ",".join(map(str, value))  # a YAML list of mixture entries
            values[section][key] = _check_type(f"{section}.{key}", value, expected, origin)


def parse_set(assignment: str, sections: dict[str, type]) -> dict:
    """``section.key=value`` as a one-key overlay, the value read as the field's type."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected section.key=value")
    dotted, raw = assignment.split("=", 1)
    if dotted.count(".") != 1:
        raise ConfigError(f"--set {assignment}: expected section.key=value")
    section, key = dotted.split(".")
    if section in sections and key in {f.name for f in dataclasses.fields(sections[section])}:
        expected = _field_type(sections[section], key)
        if expected is str:
            return {section: {key: raw}}  # "--set data.name=123" is the string "123"
        if expected is float:  # YAML 1.1 reads "1e-3" as a string; Python reads it as a float
            try:
                return {section: {key: float(raw)}}
            except ValueError:
                pass
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {assignment}: cannot parse value: {err}") from None
    return {section: {key: value}}


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(choices)}"


def _check_type(key: str, value: Any, expected: type, origin: str) -> Any:
    # bool is an int in Python; a YAML `true` for an int field is a mistake, not a 1.
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise ConfigError(
        f"{origin}: {key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
    )


def _field_type(section_class: type, key: str) -> type:
    types = {f.name: f.type for f in dataclasses.fields(section_class)}
    return _TYPES[types[key]]
