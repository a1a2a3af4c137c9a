"""``cached_attribute``: what ``functools.cached_property`` does for config objects read on
every request, without writing into the instance's ``__dict__``.

CPython 3.11 keeps an instance's attributes in a table of values that shares its keys with
the other instances of the class until something asks for ``__dict__``; from then on every
attribute of that instance is read through a dict. ``functools.cached_property`` asks for
it (it stores into ``__dict__``), so one cached value turned every other attribute of the
connection manager's config and of each route into a dict lookup on every request. This
descriptor computes the value once and keeps it as an ordinary attribute of the same
name, through ``object.__setattr__`` (the instance's shared-key values, not ``__dict__``;
frozen dataclasses work too). It defines no ``__set__``, so that attribute shadows it:
every later read is a plain attribute load, with no call (a ``__get__`` that looked the
value up under another name cost a Python call per read, once per request for
``Route.expected_timeout_header``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")


class cached_attribute(Generic[T]):
    __slots__ = ("fn", "name")

    def __init__(self, fn: Callable[[Any], T]) -> None:
        self.fn = fn
        self.name = fn.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> cached_attribute[T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> T | cached_attribute[T]:
        if obj is None:
            return self
        # the first read: from now on the instance's own attribute answers
        value: T = self.fn(obj)
        object.__setattr__(obj, self.name, value)
        return value
