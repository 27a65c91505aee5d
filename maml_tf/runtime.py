"""Process set-up for the command-line entry points (main.py, bench/)."""
import os
import re
import sys
import tempfile

_KERAS_EAGER = "keras.src.optimizers"

# What TensorFlow's C++ side prints to stderr on every CPU-only start (before absl's
# logging is initialised, so TF_CPP_MIN_LOG_LEVEL does not hold it back): not news to a user.
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"Could not find cuda drivers|failed call to cuInit|cpu_feature_guard|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate compiler|"
    r"This TensorFlow binary is optimized|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning|cuda_executor|cudart_stub")


def _quiet_stderr(fn):
    """Run ``fn()`` with file descriptor 2 captured; replay what it printed except the
    start-up noise above (everything, if ``fn`` raised)."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to quieten
        return fn()
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        failed = True
        try:
            result = fn()
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            keep = text.splitlines() if failed else [
                line for line in text.splitlines() if line.strip() and not _STARTUP_NOISE.search(line)]
            if keep:
                print("\n".join(keep), file=sys.stderr)
    return result


def import_tensorflow(quiet=True):
    """``import tensorflow``, without the Keras import TensorFlow does at load time.

    TensorFlow's ``__init__`` imports Keras 3's optimizers eagerly (about 500
    modules: ~70 MB of resident memory and ~0.6 s), guarded by ``except
    ImportError``.  maml-tf never uses Keras, so the entry points skip that
    import; ``tf.keras`` and ``import keras`` still work, loaded on first use.
    No effect where TensorFlow is already imported.

    ``quiet``: TensorFlow's C++ start-up lines on a CPU-only machine (oneDNN notice,
    missing CUDA drivers, failed cuInit, CPU feature guard) are held back; anything
    else it prints is shown, and everything if the import fails.  The devices are
    listed inside the quiet window (that is when cuInit runs); TF's thread pools can
    still be sized afterwards.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]

    def load():
        blocked = _KERAS_EAGER not in sys.modules
        if blocked:
            sys.modules[_KERAS_EAGER] = None  # importlib raises ImportError for it at once
        try:
            import tensorflow as tf
        finally:
            if blocked and _KERAS_EAGER in sys.modules and sys.modules[_KERAS_EAGER] is None:
                del sys.modules[_KERAS_EAGER]
        if quiet:
            tf.config.list_physical_devices()
        return tf
    return _quiet_stderr(load) if quiet else load()


def quiet_start():
    """For a command-line tool's ``__main__``: TensorFlow imported as main.py imports it,
    without its C++ start-up lines (``TF_CPP_MIN_LOG_LEVEL`` 2 unless set)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return import_tensorflow()


def tool_args(argv, doc):
    """A command-line tool's arguments: ``argv`` (``sys.argv[1:]`` if None), or None after
    printing ``doc`` when they ask for help (-h, --help, --helpfull)."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
        print(doc)
        return None
    return argv
