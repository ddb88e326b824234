"""Round-robin turns between searches running in threads: one trial at a time, in order.

On a shared machine, load from elsewhere comes and goes. Searching the targets one after
another would hand one target a quiet quarter of an hour and the next a busy one;
taking turns trial by trial spreads the noise over all of them alike, and still only one
target is under load at any moment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Turns:
    def __init__(self, names: list[str]):
        if len(set(names)) != len(names):
            raise ValueError(f"names must be distinct: {names}")
        self._order = list(names)
        self._next = 0  # index in _order of whose turn it is
        self._cond = threading.Condition()

    def take(self, name: str, work: Callable[[], T]) -> T:
        """Wait for ``name``'s turn, run ``work``, hand the turn to the next one."""
        with self._cond:
            self._cond.wait_for(lambda: self._order[self._next] == name)
        try:
            return work()
        finally:
            with self._cond:
                if name in self._order:
                    self._next = (self._order.index(name) + 1) % len(self._order)
                self._cond.notify_all()

    def leave(self, name: str) -> None:
        """``name`` takes no more turns (its search ended); the others go on."""
        with self._cond:
            if name not in self._order:
                return
            i = self._order.index(name)
            current = self._order[self._next]
            self._order.pop(i)
            if self._order:
                if current == name:
                    self._next = i % len(self._order)  # the one after it goes next
                else:
                    self._next = self._order.index(current)
            self._cond.notify_all()
