"""maml_tf.data.safe_pickle: numpy pickles load, anything that could run code is refused."""
import _compat_pickle
import builtins
import io
import os
import pickle
import pickletools
import random
import shlex
import struct
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from conftest import REPO_ROOT
from maml_tf.data import safe_pickle
from maml_tf.data.safe_pickle import CorruptPickleError, UnsafePickleError

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


# ----------------------------------------------------------------- crafted payloads

class Reduce:
    """Pickles as whatever __reduce__ tuple it is given (func, args[, state])."""

    def __init__(self, *rv):
        self.rv = rv

    def __reduce__(self):
        return self.rv


class Planted:
    """A class of this module whose construction creates a file: what a crafted
    __reduce__ of an arbitrary importable class can do."""

    def __init__(self, path):
        open(path, "w").close()

    @classmethod
    def payload(cls, path):
        return Reduce(cls, (str(path),))


def _popen(path):
    return Reduce(subprocess.Popen, (["touch", str(path)],))


# name -> (payload making `path`, the global the pickle names for it in protocol >= 3)
PAYLOADS = {
    "os.system": (lambda p: Reduce(os.system, (f"touch {shlex.quote(str(p))}",)),
                  f"{os.system.__module__}.system"),
    "subprocess.run": (lambda p: Reduce(subprocess.run, (["touch", str(p)],)),
                       "subprocess.run"),
    "subprocess.Popen": (_popen, "subprocess.Popen"),
    "builtins.eval": (lambda p: Reduce(eval, (f"open({str(p)!r}, 'w').close()",)),
                      "builtins.eval"),
    "builtins.exec": (lambda p: Reduce(exec, (f"open({str(p)!r}, 'w').close()",)),
                      "builtins.exec"),
    "class __reduce__": (Planted.payload, f"{__name__}.Planted"),
}


def refused_name(global_name, protocol):
    """The name as a pickle of that protocol writes it (Python 2 names below 3)."""
    mod, name = global_name.rsplit(".", 1)
    if protocol < 3:
        mod, name = _compat_pickle.REVERSE_NAME_MAPPING.get(
            (mod, name), (_compat_pickle.REVERSE_IMPORT_MAPPING.get(mod, mod), name))
    return f"global {mod}.{name}"


def wait_absent(path, seconds=0.5):
    """True if path does not appear within `seconds` (a spawned process may be late)."""
    end = time.time() + seconds
    while time.time() < end:
        if os.path.exists(path):
            return False
        time.sleep(0.05)
    return not os.path.exists(path)


def cache_like(rng, n=6):
    """A mini-imagenet-cache dict as the mirrors' files hold it."""
    return {"image_data": rng.integers(0, 256, size=(n, 84, 84, 3), dtype=np.uint8),
            "class_dict": {"n01532829": [0, 2, 4], "n01558993": [5, 3, 1]}}


def assert_same(a, b):
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and (a == b or (a != a and b != b))
    else:
        assert a == b


# -------------------------------------------------------------------------- admitted

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numpy_pickles_load(protocol):
    rng = np.random.default_rng(0)
    objs = [
        cache_like(rng),
        {"mses": rng.random((600, 11))},  # maml_tf.run.train's test .pkl
        {"mses": rng.random((600, 11)).astype(np.float32)},  # the original's
        {"class_dict": {"n1": np.array([3, 1]), "n2": [np.int64(0)]},
         "empty": np.zeros((0, 3)), "big_endian": np.arange(5, dtype=">i4"),
         "fortran": np.asfortranarray(rng.random((3, 2))), "str": np.array(["ab", "c"]),
         "bytes": np.array([b"x"]), "bool": np.array([True]), "complex": np.array([1 + 2j]),
         "scalars": (np.float32(1.5), np.bool_(True), np.uint8(7)), "raw": b"",
         "plain": [1, 2.5, "x", None, True, (3,), {"a": [b"b"]}]},
    ]
    for obj in objs:
        data = pickle.dumps(obj, protocol=protocol)
        got = safe_pickle.loads(data)
        assert_same(got, pickle.loads(data))
        assert_same(safe_pickle.load(io.BytesIO(data)), got)


def test_load_from_path_and_train_output(tmp_path):
    # The file maml_tf.run.train writes (pickle.dump({"mses": rows}, f)) reads back.
    rows = np.random.default_rng(1).random((600, 11))
    path = tmp_path / "test_ubs10_stepsize0.01.pkl"
    with open(path, "wb") as f:
        pickle.dump({"mses": rows}, f)
    for p in (path, str(path)):
        got = safe_pickle.load(p)
        assert list(got) == ["mses"] and type(got["mses"]) is np.ndarray
        np.testing.assert_array_equal(got["mses"], rows)


def test_reproduce_reader_uses_safe_loader(tmp_path, monkeypatch):
    """reproduce/sinusoid_original.py's stats() reads test .pkl files safely."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "_sinusoid_original", REPO_ROOT / "reproduce" / "sinusoid_original.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = np.full((600, 11), 0.5, np.float32)
    good = tmp_path / "good.pkl"
    good.write_bytes(pickle.dumps({"mses": rows}))
    s = mod.stats(str(good))
    assert s["tasks"] == 600 and s["mean"] == [0.5, 0.5, 0.5] and s["diverged"] == 0
    marker = tmp_path / "planted"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"mses": PAYLOADS["os.system"][0](marker)}))
    with pytest.raises(UnsafePickleError):
        mod.stats(str(bad))
    assert not marker.exists()


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str (BINSTRING), as Python 2 pickles hold them."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n])) if n < 256
                   else (pickle.BINSTRING + struct.pack("<i", n)))
        self.write(obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def test_python2_layout_with_latin1():
    """A Python 2 / numpy 1 protocol 2 cache: str keys and array bytes as BINSTRING,
    numpy.core names; read with encoding='latin1' as numpy documents."""
    rng = np.random.default_rng(2)
    cache = cache_like(rng)
    py2 = {b"image_data": cache["image_data"],
           b"class_dict": {k.encode(): v for k, v in cache["class_dict"].items()},
           b"count": np.int64(6)}
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(py2)
    data = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data and b"_codecs" not in data
    got = safe_pickle.loads(data, encoding="latin1")
    assert sorted(got) == ["class_dict", "count", "image_data"]
    np.testing.assert_array_equal(got["image_data"], cache["image_data"])
    assert got["class_dict"] == cache["class_dict"] and got["count"] == 6


def test_module_is_cheap():
    code = ("import sys; import maml_tf.data.safe_pickle; "
            "print(sorted(m for m in ('tensorflow', 'PIL') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


# --------------------------------------------------------------------------- refused

@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("protocol", [0, 2, pickle.DEFAULT_PROTOCOL, 5])
def test_payloads_run_with_pickle_but_are_refused(payload, protocol, tmp_path):
    make, name = PAYLOADS[payload]
    # Control: plain pickle does run it.
    marker = tmp_path / "ran"
    data = pickle.dumps({"image_data": np.zeros((1, 84, 84, 3), np.uint8),
                         "class_dict": {"n1": [0]}, "x": make(marker)}, protocol=protocol)
    out = pickle.loads(data)
    if isinstance(out["x"], subprocess.Popen):
        out["x"].wait()
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafePickleError) as e:
        safe_pickle.loads(data)
    assert e.value.what == refused_name(name, protocol)
    assert str(e.value) == f"refused {e.value.what}"
    assert wait_absent(marker)


@pytest.mark.parametrize("name", [
    "os.system", "posix.system", "nt.system", "subprocess.call", "subprocess.check_output",
    "builtins.getattr", "builtins.__import__", "builtins.open", "builtins.compile",
    "builtins.eval", "__builtin__.eval", "builtins.setattr", "functools.partial",
    "copyreg._reconstructor", "copy_reg._reconstructor", "builtins.object", "codecs.encode",
    "pickle.loads", "numpy.load", "numpy.frombuffer", "numpy.ma.core._mareconstruct",
    "numpy.core.multiarray.array", "numpy.testing", "numpy._core.numeric.ones",
    "runpy.run_path", "os.path.join", "numpy.dtype.__reduce__",
])
def test_other_globals_refused(name):
    mod, attr = name.rsplit(".", 1)
    data = f"c{mod}\n{attr}\n)R.".encode()  # GLOBAL, EMPTY_TUPLE, REDUCE, STOP
    with pytest.raises(UnsafePickleError) as e:
        safe_pickle.loads(data)
    assert e.value.what == f"global {name}"
    # protocol 4 form (STACK_GLOBAL)
    m, a = mod.encode(), attr.encode()
    data4 = (b"\x80\x04\x8c" + bytes([len(m)]) + m + b"\x8c" + bytes([len(a)]) + a
             + b"\x93)R.")
    with pytest.raises(UnsafePickleError) as e:
        safe_pickle.loads(data4)
    assert e.value.what == f"global {name}"


def test_refused_module_is_not_imported():
    assert "this" not in sys.modules  # importing it would print the Zen of Python
    with pytest.raises(UnsafePickleError, match=r"global this\.s"):
        safe_pickle.loads(b"cthis\ns\n.")
    assert "this" not in sys.modules


def test_odd_names_give_one_line():
    data = b"\x80\x04\x8c\x06os\nx\ny\x8c\x01z\x93."
    with pytest.raises(UnsafePickleError) as e:
        safe_pickle.loads(data)
    assert "\n" not in str(e.value) and "'os\\nx\\ny'" in e.value.what


RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
FROMBUFFER = np.ndarray.__reduce_ex__(np.zeros(1), 5)[0]


def _build_again(protocol):
    """np.arange(2) pickled, then its state given a second time (BUILD)."""
    data = pickle.dumps(np.arange(2), protocol=protocol)
    ops = list(pickletools.genops(data))
    last_build = [pos for op, _, pos in ops if op.name == "BUILD"][-1]
    state = [arg for op, arg, pos in ops if op.name == "BINPUT" and pos < last_build][-1]
    return data[:-1] + b"h" + bytes([state]) + b"b."


MISUSE = {
    "object array": np.array([1, "a", None], dtype=object),
    "object dtype": np.dtype("O"),
    # numpy would read the int64 data as object pointers
    "dtype flags": Reduce(np.dtype, ("i8", False, True), (3, "<", None, None, None, -1, -1, 1)),
    "object dtype, flags cleared":
        Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0)),
    "structured dtype": np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
    "sub-array dtype": np.dtype(("i4", (2,))),
    "datetime": np.array(["2020-01-01"], dtype="M8[D]"),
    "reconstruct object": Reduce(RECONSTRUCT, (np.ndarray, (0,), "O")),
    "reconstruct shape": Reduce(RECONSTRUCT, (np.ndarray, (10 ** 6,), b"b")),
    "ndarray call": Reduce(np.ndarray, ((2,), "O")),
    "frombuffer object": Reduce(FROMBUFFER, (b"\0" * 8, np.dtype("O"), (1,), "C")),
    "codecs rot13": Reduce(__import__("_codecs").encode, ("x", "rot13")),
    "bytes(n)": Reduce(bytes, (10 ** 9,)),
    "masked array": np.ma.masked_array([1, 2], mask=[0, 1]),
}
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    MISUSE["matrix"] = np.matrix([[1, 2]])


@pytest.mark.parametrize("case", sorted(MISUSE))
@pytest.mark.parametrize("protocol", [2, 5])
def test_numpy_misuse_refused(case, protocol):
    """numpy objects are admitted only in the form numpy itself writes."""
    with pytest.raises(UnsafePickleError) as e:
        safe_pickle.loads(pickle.dumps({"x": MISUSE[case]}, protocol=protocol))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("data, what", [
    (b"\x80\x02}}b.", "state for a builtins.dict object"),  # BUILD on a dict
    (_build_again(2), "state for a numpy.ndarray object"),
    (b"\x80\x02\x82\x01.", "extension code 1"),  # EXT1
])
def test_opcode_misuse_refused(data, what):
    with pytest.raises(UnsafePickleError) as e:
        safe_pickle.loads(data)
    assert e.value.what == what


# -------------------------------------------------------------------------- corrupt

@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_truncation_is_corrupt(protocol):
    data = pickle.dumps({"mses": np.arange(6.0).reshape(2, 3), "k": [np.int64(1), "s"]},
                        protocol=protocol)
    for n in range(len(data)):
        with pytest.raises(CorruptPickleError) as e:
            safe_pickle.loads(data[:n])
        assert str(e.value).startswith("truncated or corrupt pickle (")
        assert "\n" not in str(e.value)


def test_garbage_is_corrupt(tmp_path):
    for data in (b"", b"not a pickle", b"\x80\x05\x95", b"\x80\x04\xff" * 10, b"]q\x00h\x01."):
        with pytest.raises(CorruptPickleError):
            safe_pickle.loads(data)
    # A length field far beyond the input is refused before allocating it.
    for op in (b"\x96", b"\x8e", b"\x8d"):  # BYTEARRAY8, BINBYTES8, BINUNICODE8
        data = b"\x80\x05" + op + struct.pack("<Q", 1 << 40) + b"."
        with pytest.raises(CorruptPickleError, match="truncated"):
            safe_pickle.loads(data)
        path = tmp_path / "big.pkl"
        path.write_bytes(data)
        with pytest.raises(CorruptPickleError, match="truncated"):
            safe_pickle.load(path)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_mutated_bytes_never_escape(protocol):
    """Random byte changes give a result, a refusal or a corrupt-pickle error."""
    rng = random.Random(protocol)
    obj = {"image_data": np.arange(12, dtype=np.uint8).reshape(1, 2, 2, 3),
           "class_dict": {"n1": [0]}, "s": np.float32(2.5), "e": b""}
    data = pickle.dumps(obj, protocol=protocol)
    for _ in range(400):
        d = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            d[rng.randrange(len(d))] = rng.randrange(256)
        try:
            safe_pickle.loads(bytes(d))
        except (CorruptPickleError, UnsafePickleError) as exc:
            assert "\n" not in str(exc)


def test_errors_are_unpickling_errors():
    assert issubclass(UnsafePickleError, pickle.UnpicklingError)
    assert issubclass(CorruptPickleError, pickle.UnpicklingError)
    assert not issubclass(UnsafePickleError, CorruptPickleError)
    assert builtins.eval is eval  # the payloads above did not replace anything
