"""The per-load context: what one read of one ``data.pkl`` owns.

One :class:`LoadContext` is made for each load (:func:`~.unpickler.read_model`) and handed to
what needs it: the unpickler (``persistent_load`` notes each storage it makes), and the
tensor-making stand-ins, which :meth:`~.standins.GlobalStandIn.bind` binds to it when the
unpickler's ``find_class`` resolves them. It owns

- ``made``: every tensor view and storage the pickle makes, in the order torch makes them (torch
  checks each one when it is made, reachable from the result or not);
- ``library``: the protocol (3-5) of a pickle the library's own loader reads, None for torch's
  (BUILD on a tensor follows that loader's rules);
- the pause of the cyclic garbage collector while the unpickler runs (``with context:``; see
  :mod:`..gcpause`: the collector is process-wide, so pauses are counted there).

One thing reaches the context without a handle: the pickle's BUILD opcode, which the C unpickler
applies as ``obj.__setstate__(state)`` on a lazy value (:data:`virnucpro_store.lazy.BUILD_HOOKS`).
For it, ``with context:`` also makes the context the thread's :meth:`active` one.

>>> ctx = LoadContext(library=4)
>>> with ctx:
...     LoadContext.active() is ctx
True
>>> LoadContext.active() is ctx, ctx.made
(False, [])
"""

from __future__ import annotations

import threading
from contextlib import ExitStack
from typing import Any

from ..gcpause import gc_paused


class LoadContext:
    """What one load of one ``data.pkl`` owns (see the module docstring)."""

    __slots__ = ("made", "library", "bound", "_exit", "_outer")

    #: the context of the load running on each thread, for BUILD hooks only
    _active = threading.local()

    def __init__(self, library: int | None = None) -> None:
        self.made: list[Any] = []
        self.library = library
        #: the stand-ins bound to this load, by qualname (find_class resolves each global once)
        self.bound: dict[str, Any] = {}
        self._exit: ExitStack | None = None
        self._outer: LoadContext | None = None

    def note(self, obj: Any) -> None:
        """Record a tensor view or storage the pickle made."""
        self.made.append(obj)

    def __enter__(self) -> LoadContext:
        stack = ExitStack()
        stack.enter_context(gc_paused())
        self._exit = stack
        self._outer = getattr(LoadContext._active, "context", None)
        LoadContext._active.context = self
        return self

    def __exit__(self, *exc: object) -> None:
        LoadContext._active.context = self._outer
        self._outer = None
        exit_stack, self._exit = self._exit, None
        if exit_stack is not None:
            exit_stack.close()

    @classmethod
    def active(cls) -> LoadContext | None:
        """The context of the load running on this thread (None outside a load)."""
        return getattr(cls._active, "context", None)
