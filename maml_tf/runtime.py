"""Process set-up for the command-line entry points (main.py, bench/)."""
import sys

_KERAS_EAGER = "keras.src.optimizers"


def import_tensorflow():
    """``import tensorflow``, without the Keras import TensorFlow does at load time.

    TensorFlow's ``__init__`` imports Keras 3's optimizers eagerly (about 500
    modules: ~70 MB of resident memory and ~0.6 s), guarded by ``except
    ImportError``.  maml-tf never uses Keras, so the entry points skip that
    import; ``tf.keras`` and ``import keras`` still work, loaded on first use.
    No effect where TensorFlow is already imported.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    blocked = _KERAS_EAGER not in sys.modules
    if blocked:
        sys.modules[_KERAS_EAGER] = None  # importlib raises ImportError for it at once
    try:
        import tensorflow as tf
    finally:
        if blocked and _KERAS_EAGER in sys.modules and sys.modules[_KERAS_EAGER] is None:
            del sys.modules[_KERAS_EAGER]
    return tf
