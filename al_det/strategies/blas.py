"""Best-effort control of numpy's OpenBLAS thread count (reads and writes nothing).

Measured on a 2-core VM: multithreaded OpenBLAS on the many small per-group matrix products
of the streaming pass runs up to 50x slower than single-threaded (thread wake-ups dominate),
so that pass runs BLAS single-threaded and parallelises over chunks itself. Where numpy is
not linked to a recognisable OpenBLAS this does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_NAMES = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
          ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
          ("openblas_set_num_threads", "openblas_get_num_threads"))


def _find() -> tuple | None:
    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(libdir, "*openblas*")):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _NAMES:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                return getattr(lib, set_name), getattr(lib, get_name)
    return None


_FUNCS = _find()


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` OpenBLAS threads, then restore the previous count."""
    if _FUNCS is None:
        yield
        return
    set_n, get_n = _FUNCS
    old = get_n()
    set_n(n)
    try:
        yield
    finally:
        set_n(old)
