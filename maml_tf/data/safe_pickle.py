"""Reading pickles from outside (downloaded miniImageNet caches, test ``.pkl`` files)
without running code.

``pickle.load`` calls whatever function a file names (``os.system``, ``builtins.eval``,
any class's ``__reduce__``), so a crafted file runs code.  :func:`load` and :func:`loads`
admit only what numpy arrays, dtypes and scalars need, inside the containers that are
pickle opcodes (dict, list, tuple, str, bytes, int, float, bool, None):

  numpy.core.multiarray._reconstruct, numpy._core.multiarray._reconstruct (numpy 2 name)
      an empty array (shape (0,), typecode 'b', as numpy writes it), filled by its state
  numpy.ndarray        only as _reconstruct's first argument (calling it is refused)
  numpy.dtype          plain dtypes (bool, integer, float, complex, bytes, str); object,
                       structured and sub-array dtypes are refused
  numpy.core.multiarray.scalar, numpy._core.multiarray.scalar     numpy scalars
  numpy.core.numeric._frombuffer, numpy._core.numeric._frombuffer  protocol 5 arrays
  _codecs.encode       only with encoding 'latin1' (bytes in protocols 0-2 of Python 3)
  builtins.bytes, __builtin__.bytes   only with no argument (b'' in protocols 0-2)

Anything else raises :class:`UnsafePickleError` naming it (``global os.system``) before
the module is imported.  numpy's ``dtype.__setstate__`` trusts the flags stored in the
file (a crafted state makes numpy read raw bytes as object pointers), so each dtype and
array must receive exactly the state numpy itself writes: the pure-Python
``pickle._Unpickler`` is subclassed because the C one has no hook for that opcode
(BUILD).  A truncated or corrupt file raises :class:`CorruptPickleError`.
"""
import io
import os
import pickle
import re
import struct

import numpy as np

if int(np.__version__.split(".")[0]) >= 2:
    from numpy._core import multiarray as _multiarray, numeric as _numeric
else:  # numpy 1.x
    from numpy.core import multiarray as _multiarray, numeric as _numeric

__all__ = ["UnsafePickleError", "CorruptPickleError", "load", "loads", "ADMITTED"]

_PLAIN_KINDS = "biufcSU"  # bool, signed, unsigned, float, complex, bytes, str
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _short(obj, limit=80):
    """A one-line, bounded description of something taken from the file."""
    text = obj if isinstance(obj, str) and _DOTTED.match(obj) else ascii(obj)
    return text if len(text) <= limit else text[:limit] + "..."


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something that is not admitted; ``what`` names it."""

    def __init__(self, what):
        self.what = what
        super().__init__(f"refused {what}")


class CorruptPickleError(pickle.UnpicklingError):
    """The pickle is truncated or corrupt; ``detail`` says what went wrong."""

    def __init__(self, detail):
        self.detail = detail
        super().__init__(f"truncated or corrupt pickle ({detail})")


class _NdarrayMarker:
    """Stands for numpy.ndarray, which is only ever _reconstruct's first argument."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("a call of numpy.ndarray")

    def __repr__(self):
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()

# (module, name) -> method of _SafeUnpickler (str) or the object itself.
ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy._core.multiarray", "_reconstruct"): "_reconstruct",
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): "_dtype",
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): "_frombuffer",
    ("numpy._core.numeric", "_frombuffer"): "_frombuffer",
    ("_codecs", "encode"): "_latin1_encode",
    ("builtins", "bytes"): "_empty_bytes",
    ("__builtin__", "bytes"): "_empty_bytes",
}


def _plain_dtype(d, what):
    if not isinstance(d, np.dtype) or d.kind not in _PLAIN_KINDS or d.hasobject \
            or d.fields is not None or d.subdtype is not None:
        raise UnsafePickleError(what)
    return d


class _Bounded:
    """A reader that refuses to read past the end of the input, so that a length
    field in the file cannot make the unpickler allocate more than the file holds."""

    def __init__(self, f, size):
        self.f, self.left = f, size

    def read(self, n):
        if self.left is not None:
            if n > self.left:
                raise pickle.UnpicklingError("pickle data was truncated")
            self.left -= n
        return self.f.read(n)

    def readline(self):
        line = self.f.readline()
        if self.left is not None:
            self.left -= len(line)
        if not line.endswith(b"\n"):  # every text opcode ends its line
            raise pickle.UnpicklingError("pickle data was truncated")
        return line


class _Dispatch(dict):
    def __missing__(self, key):
        raise pickle.UnpicklingError(f"invalid load key, {bytes([key])!r}")


class _SafeUnpickler(pickle._Unpickler):
    """pickle's own unpickler with find_class restricted to ADMITTED and BUILD restricted
    to the numpy objects made here (see the module docstring)."""

    def __init__(self, file, size, encoding="ASCII"):
        super().__init__(_Bounded(file, size), encoding=encoding)
        self._size = size
        self._awaiting_state = {}  # id -> dtype or ndarray made here, not yet BUILD

    def find_class(self, module, name):
        target = ADMITTED.get((module, name))
        if target is None:
            raise UnsafePickleError(f"global {_short(module)}.{_short(name)}")
        return getattr(self, target) if isinstance(target, str) else target

    def get_extension(self, code):
        raise UnsafePickleError(f"extension code {code}")

    # Admitted callables.
    def _reconstruct(self, subtype, shape, typecode):
        if subtype is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
            raise UnsafePickleError(
                f"numpy _reconstruct{_short((subtype, shape, typecode))}")
        arr = _multiarray._reconstruct(np.ndarray, (0,), b"b")
        self._awaiting_state[id(arr)] = arr
        return arr

    def _dtype(self, spec, align=False, copy=True):
        if not isinstance(spec, str):
            raise UnsafePickleError(f"numpy.dtype({_short(spec)})")
        d = np.dtype(spec, bool(align), True)  # always a copy, never numpy's own
        _plain_dtype(d, f"numpy.dtype({_short(spec)})")
        self._awaiting_state[id(d)] = d
        return d

    def _frombuffer(self, buf, dtype, shape, order):
        _plain_dtype(dtype, f"numpy _frombuffer with dtype {_short(dtype)}")
        return _numeric._frombuffer(buf, dtype, shape, order)

    @staticmethod
    def _latin1_encode(obj, encoding="utf-8", errors="strict"):
        if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
            raise UnsafePickleError(f"_codecs.encode with encoding {_short(encoding)}")
        return obj.encode("latin1")

    @staticmethod
    def _empty_bytes(*args):
        if args:
            raise UnsafePickleError(f"builtins.bytes{_short(args)}")
        return b""

    # Opcodes.
    def _load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if self._awaiting_state.pop(id(inst), None) is not inst:
            t = type(inst)
            raise UnsafePickleError(f"state for a {t.__module__}.{t.__qualname__} object")
        if isinstance(inst, np.dtype):
            # Exactly the state numpy writes for this dtype, in either byte order.
            ok = isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|")
            if ok:
                want = np.dtype(inst.str)
                if state[1] != "|":
                    want = want.newbyteorder(state[1])
                ok = state == want.__reduce__()[2]
            if not ok:
                raise UnsafePickleError(f"numpy dtype state {_short(state)}")
        else:
            dtype = state[-3] if isinstance(state, tuple) and len(state) in (4, 5) else None
            _plain_dtype(dtype, f"numpy array state with dtype {_short(dtype)}")
        inst.__setstate__(state)

    def _load_bytearray8(self):
        n, = struct.unpack("<Q", self.read(8))
        if self._size is not None and n > self._size:
            raise pickle.UnpicklingError("pickle data was truncated")
        b = bytearray(n)
        self.readinto(b)
        self.append(b)

    dispatch = _Dispatch(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8


def _load(f, size, encoding):
    try:
        return _SafeUnpickler(f, size, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise CorruptPickleError(detail[:200]) from exc


def load(path_or_file, encoding="ASCII"):
    """Unpickle a file (a path or a binary file object) with only numpy arrays, dtypes
    and scalars admitted.  ``encoding`` as in pickle.load ('latin1' for Python 2 numpy
    pickles).  Raises UnsafePickleError or CorruptPickleError (OSError if unreadable)."""
    if isinstance(path_or_file, (str, bytes, os.PathLike)):
        with open(path_or_file, "rb") as f:
            return _load(f, os.fstat(f.fileno()).st_size, encoding)
    f = path_or_file
    try:
        pos = f.tell()
        size = f.seek(0, io.SEEK_END) - pos
        f.seek(pos)
    except (AttributeError, OSError, ValueError):
        size = None  # not seekable: reads are not bounded
    return _load(f, size, encoding)


def loads(data, encoding="ASCII"):
    """Unpickle bytes; see :func:`load`."""
    data = bytes(data)
    return _load(io.BytesIO(data), len(data), encoding)
