"""Settings dataclasses as ml_collections config sections and back, so that a config file builds its sections from
the code's presets (one key per field) instead of restating their numbers, and any field can be overridden on the
command line (`--config.let_loss.cycle.weight_mask=10`)."""

from __future__ import annotations

import dataclasses
import typing

from ml_collections import config_dict

from robotseg_jax.errors import ConfigValueError


def config_section(settings) -> config_dict.ConfigDict:
    """A settings dataclass instance as a config section: one key per field, nested dataclasses as nested
    sections, None as a typed placeholder (so that it can be overridden)."""
    section = config_dict.ConfigDict()
    hints = typing.get_type_hints(type(settings))
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if dataclasses.is_dataclass(value):
            value = config_section(value)
        elif value is None:  # `float | None` and the like
            value = config_dict.placeholder(next(t for t in typing.get_args(hints[field.name]) if t is not type(None)))
        section[field.name] = value
    return section


def defaults_section(cls: type) -> config_dict.ConfigDict:
    """The fields of `cls` that have defaults, as a config section (the others are for the run to decide)."""
    fields = dataclasses.fields(cls)
    return config_dict.ConfigDict({f.name: f.default for f in fields if f.default is not dataclasses.MISSING})


def dataclass_from_config(cls: type, section: config_dict.ConfigDict, **extra):
    """The settings dataclass `cls` from its config section (the inverse of `config_section`); `extra` adds
    fields that the run decides. A key that `cls` has no field for is an error."""
    hints = typing.get_type_hints(cls)
    unknown = set(section.keys()) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
        raise ConfigValueError(f"{cls.__name__} has no field {sorted(unknown)} (config keys {sorted(section.keys())})")
    values = {}
    for name, value in section.items():
        if dataclasses.is_dataclass(hints[name]) and value is not None:
            value = dataclass_from_config(hints[name], value)
        values[name] = value
    return cls(**values, **extra)
