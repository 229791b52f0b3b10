"""Typed config fields: what one key may hold, checked against the resolved value.

A field knows its allowed values and says them in words, so every error is one line naming
the key, the value and what is allowed. :class:`Node` is a mapping of fields that rejects keys
it does not know (with the nearest known names), :class:`Variants` picks the node of a
``_target_``. Plain Python importing only :mod:`labkit.errors`: configuration is the floor
every other package may read.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labkit.errors import ConfigError

#: what OmegaConf leaves for a mandatory value nobody set (``key: ???``)
MISSING = "???"


def shown(value: Any) -> str:
    """The value as the error prints it: ``'group'``, ``-1``, ``true``, ``null``, ``[2, 2, 2]``."""
    return format_choice(value) if isinstance(value, bool) or value is None else repr(value)


def fail(key: str, value: Any, allowed: str) -> ConfigError:
    """The one-line error of a key whose value is not allowed."""
    if value == MISSING:
        return ConfigError(f"{key} is missing: expected {allowed}")
    return ConfigError(f"{key}={shown(value)} is invalid: expected {allowed}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def words(values: Sequence[Any]) -> str:
    """``a, b or c`` with config spelling (true / false / null)."""
    names = [format_choice(v) for v in values]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def format_choice(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


class Field:
    """One key's type and allowed values. ``null=True`` also allows null."""

    null: bool = False

    def describe(self) -> str:
        """What is allowed, in words (without the null)."""
        raise NotImplementedError

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    @property
    def allowed(self) -> str:
        return f"null or {self.describe()}" if self.null else self.describe()

    def check(self, value: Any, key: str) -> None:
        """Raise :class:`ConfigError` naming ``key`` unless ``value`` is allowed."""
        if value is None and self.null:
            return
        if value is None or value == MISSING or not self.accepts(value):
            raise fail(key, value, self.allowed)


@dataclass
class Int(Field):
    """An integer (not a bool) in ``[min, max]``."""

    min: int | None = None
    max: int | None = None
    null: bool = False

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"an integer in [{self.min}, {self.max}]"
        if self.min is not None:
            return f"an integer >= {self.min}"
        return "an integer" if self.max is None else f"an integer <= {self.max}"

    def accepts(self, value: Any) -> bool:
        return (is_int(value) and (self.min is None or value >= self.min)
                and (self.max is None or value <= self.max))


@dataclass
class Number(Field):
    """A number (int or float, not a bool) between ``min`` and ``max``; ``open`` bounds excluded."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    null: bool = False

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            low, high = "(" if self.min_open else "[", ")" if self.max_open else "]"
            return f"a number in {low}{self.min:g}, {self.max:g}{high}"
        if self.min is not None:
            return f"a number {'>' if self.min_open else '>='} {self.min:g}"
        if self.max is not None:
            return f"a number {'<' if self.max_open else '<='} {self.max:g}"
        return "a number"

    def accepts(self, value: Any) -> bool:
        if not is_number(value) or value != value:  # NaN is no number here
            return False
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return self.max is None or (value < self.max if self.max_open else value <= self.max)


@dataclass
class Bool(Field):
    null: bool = False

    def describe(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, bool)


@dataclass
class Choice(Field):
    """One of ``values`` (compared with their type: ``1`` is not ``true``)."""

    values: Iterable[Any] = ()
    null: bool = False

    def __post_init__(self) -> None:
        self.values = tuple(self.values)

    def describe(self) -> str:
        return words(self.values)

    def accepts(self, value: Any) -> bool:
        return any(type(value) is type(v) and value == v for v in self.values)


@dataclass
class Text(Field):
    """A string (a name, a path, a tag)."""

    null: bool = False
    what: str = "a string"

    def describe(self) -> str:
        return self.what

    def accepts(self, value: Any) -> bool:
        return isinstance(value, str) and value != MISSING


@dataclass
class Custom(Field):
    """A value ``test`` accepts, described as ``what`` (e.g. a device name with an index)."""

    test: Callable[[Any], bool] = lambda _: True
    what: str = "a value"
    null: bool = False

    def describe(self) -> str:
        return self.what

    def accepts(self, value: Any) -> bool:
        return self.test(value)


@dataclass
class List(Field):
    """A list of ``item`` values, of exactly ``length`` items or at least ``min_len``."""

    item: Field = field(default_factory=Text)
    length: int | None = None
    min_len: int = 0
    null: bool = False

    def describe(self) -> str:
        item = self.item.describe()
        article, rest = item.split(" ", 1) if item.startswith(("a ", "an ")) else ("", item)
        noun = rest.replace("integer", "integers").replace("number", "numbers").replace("string", "strings")
        if self.length is not None:
            return f"a list of {self.length} {noun}"
        return f"a non-empty list of {noun}" if self.min_len else f"a list of {noun}"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, list | tuple):
            return False
        if (self.length is not None and len(value) != self.length) or len(value) < self.min_len:
            return False
        return all(v is not None and self.item.accepts(v) for v in value)


Rule = Callable[[Mapping[str, Any], str], None]


@dataclass
class Node(Field):
    """A mapping with known keys, each a :class:`Field` (absent keys keep their code default).

    Keys are checked in the order of ``fields``: list a key before those that interpolate it
    (``trainer`` before ``scheduler``, whose ``T_max`` is ``${trainer.epochs}``), so the error
    names the key the user set.

    ``rules`` check keys against each other (``rule(node, path)`` raises :class:`ConfigError`).
    """

    fields: Mapping[str, Field] = field(default_factory=dict)
    null: bool = False
    rules: Sequence[Rule] = ()
    what: str = "a mapping"
    #: old key name -> its path below this node today (``temperature`` -> ``kd.temperature``), so
    #: a command or config written for the old layout is told the new name
    renamed: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.what} of {', '.join(self.fields)}" if self.fields else self.what

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def check(self, value: Any, key: str) -> None:
        super().check(value, key)
        if value is None:
            return
        for name, item in value.items():
            if name not in self.fields:
                raise unknown_key(f"{key}.{name}" if key else str(name), item, list(self.fields), key,
                                  self.renamed)
        for name, item_field in self.fields.items():  # in the schema's order: sources first
            if name in value:
                item_field.check(value[name], f"{key}.{name}" if key else name)
        for rule in self.rules:
            rule(value, key)


def unknown_key(path: str, value: Any, known: Sequence[str], parent: str,
                renamed: Mapping[str, str] | None = None, setting: str | None = None) -> ConfigError:
    """``+residul=true``: name the key, its value, the nearest known names (a renamed key's new
    name) and all of them. ``path`` may go deeper than ``parent``'s child (``distill.kdd.alpha``);
    ``setting`` replaces ``path=value`` in the message (``~key``)."""
    prefix = f"{parent}." if parent else ""
    name = path[len(prefix):].split(".")[0]
    if renamed and name in renamed:
        hint = f"did you mean {prefix}{renamed[name]} (its new name)? "
    else:
        close = difflib.get_close_matches(name, [k for k in known if not k.startswith("_")], n=2, cutoff=0.6)
        hint = f"did you mean {' or '.join(prefix + c for c in close)}? " if close else ""
    listing = (f"the keys {f'of {parent}' if parent else 'at the root'} are {', '.join(known)}" if known
               else f"{parent or 'the config'} has no keys")
    return ConfigError(f"{setting or f'{path}={shown(value)}'} is not a known key: {hint}{listing}")


def find_field(schema: Field, values: Any, path: str, setting: str) -> Field | ConfigError | None:
    """What ``schema`` declares at the dotted ``path``: its field; a :class:`ConfigError` naming the
    nearest keys at the first part it does not declare; None where it cannot tell (below a plain
    value, a ``_target_`` it does not know). ``values``: the config, whose ``_target_`` picks each
    :class:`Variants` node's keys on the way."""
    current, parent, node = schema, "", values
    for name in path.split("."):
        if isinstance(current, Variants):
            target = node.get("_target_") if isinstance(node, Mapping) else None
            current = current.options.get(target) if isinstance(target, str) else None
        if not isinstance(current, Node):
            return None
        if name not in current.fields:
            return unknown_key(path, None, list(current.fields), parent, current.renamed, setting)
        current = current.fields[name]
        node = node.get(name) if isinstance(node, Mapping) else None
        parent = f"{parent}.{name}" if parent else name
    return current


@dataclass
class Variants(Field):
    """A node whose fields depend on its ``_target_`` (a model, a data set, an optimizer, ...).

    ``empty`` allows ``{}`` (``scheduler=none``, ``logger=none``).
    """

    options: Mapping[str, Node] = field(default_factory=dict)
    null: bool = False
    empty: bool = False

    def describe(self) -> str:
        return f"a config whose _target_ is {words(list(self.options))}"

    def accepts(self, value: Any) -> bool:
        return isinstance(value, Mapping)

    def check(self, value: Any, key: str) -> None:
        super().check(value, key)
        if value is None or (self.empty and not value):
            return
        target = value.get("_target_")
        if target not in self.options:
            raise fail(f"{key}._target_", target if target is not None else MISSING,
                       f"one of {', '.join(self.options)}")
        self.options[target].check(value, key)
