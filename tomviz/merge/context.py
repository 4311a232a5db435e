"""Per-call state in a ``contextvars.ContextVar``: one helper for every state that lives for one forward call.

A patched model is shared by concurrent callers (app visitors, threads). Each call makes its own state
object and enters it (``with state:``); the patched modules read the state of *their* call with
``current()``. With no state active they run their original forward. Nested calls restore the outer
state on exit. Used by the vision/text encoders' :class:`~tomviz.merge.engine.MergeState` and the
language model's ``LLMState`` (``tomviz/models/llm.py``).
"""
from __future__ import annotations

import contextvars
from typing import Any, ClassVar


class PerCallState:
    """Base of a per-call state. A direct subclass names its context variable (``context="..."``);
    its own subclasses share it, so an :class:`EncoderState` is the current ``MergeState``."""

    _current: ClassVar[contextvars.ContextVar]

    def __init_subclass__(cls, context: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if context is not None:
            cls._current = contextvars.ContextVar(context, default=None)

    @classmethod
    def current(cls) -> Any:
        """The state entered by this call (the innermost ``with``), or None outside any."""
        return cls._current.get()

    def __enter__(self) -> Any:
        tokens = self.__dict__.setdefault("_context_tokens", [])
        tokens.append(self._current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        self._current.reset(self.__dict__["_context_tokens"].pop())
