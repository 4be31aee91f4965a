"""One place that decides how kernels are compiled.

Every kernel is a plain Python function over numpy arrays decorated with :func:`kernel`.
Compiled code is cached on disk (``cache=True``) so a fresh process loads it instead of
compiling; :func:`shardworld.kernels.warm_up` loads every kernel before a zone serves, so no
compilation ever happens inside a tick. The undecorated function stays reachable as
``fn.py_func`` and tests compare both paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

F = TypeVar("F", bound=Callable[..., Any])


def kernel(fn: F) -> F:
    """Compile ``fn`` with numba in nopython mode, cached on disk, releasing the GIL."""
    return cast(F, numba.njit(cache=True, nogil=True)(fn))


def py_func(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The pure-Python body of a kernel (for tests and debugging)."""
    return cast(Callable[..., Any], getattr(fn, "py_func", fn))
