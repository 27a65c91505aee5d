"""The authors' own code (cbfinn/maml), run live as an oracle.

``../shared/anchors/original/`` (or ``--original DIR`` / ``$MAML_ORIGINAL_DIR``) holds
the original repository (``cbfinn_maml/``, unmodified) and ``run_original.py``, which
runs it on TensorFlow 2 in graph mode and stands in for the three pieces of the removed
``tf.contrib`` it uses.  Nothing of it is copied here: this module imports it.

    python -m maml_tf.paper.original [--seed S] [--batch_norm unfused|fused] -- ORIGINAL FLAGS

runs the original ``main.py`` with its own flags (any usage line of its README), like
``run_original.py`` but seeded: ``np.random``, ``random`` and TF's graph-level seed are
set to S first, so its runs repeat (the original seeds nothing for training; its test
seeds numpy with 1 itself).  ``--batch_norm``: see :func:`install_unfused_batch_norm`.

The batch norm.  ``run_original.py`` uses TensorFlow 2's fused kernel for 4-D inputs.
Inside the original's ``tf.map_fn`` (a TF1 while loop) TensorFlow 2.x differentiates
that kernel's gradient wrongly, so the original's second-order meta-gradients of the
conv nets come out wrong (``python -m maml_tf.paper.crosscheck --tf_check``).  The TensorFlow
the paper's code ran on (1.0-1.3; contrib's ``batch_norm`` defaulted to ``fused=False``
until 1.4) normalised with ``tf.nn.moments`` (exact to every order up to TF 1.2) and
``tf.nn.batch_normalization``: ``batch_norm='unfused'`` (the default here) gives the
original exactly that; ``'fused'`` leaves the shim as it is.
"""
import argparse
import os
import random
import runpy
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_ORIGINAL = os.path.join(os.path.dirname(REPO_ROOT), "shared", "anchors", "original")
BATCH_NORMS = ("unfused", "fused")


class OriginalError(RuntimeError):
    """The original code could not be found or run; the message says why."""


def find_original(path=None):
    """The folder holding run_original.py and cbfinn_maml/ (absolute)."""
    path = path or os.environ.get("MAML_ORIGINAL_DIR") or DEFAULT_ORIGINAL
    if not (os.path.isfile(os.path.join(path, "run_original.py"))
            and os.path.isfile(os.path.join(path, "cbfinn_maml", "maml.py"))):
        raise OriginalError(f"the original code is not at {path} (need run_original.py and "
                            f"cbfinn_maml/): pass --original DIR or set MAML_ORIGINAL_DIR")
    return os.path.abspath(path)


def moments_tf1(tf, x, axes):
    """``tf.nn.moments`` of TensorFlow 1.0-1.2: shifted sufficient statistics with shift =
    stop_gradient(mean).  var = E[(x-s)^2] - E[x-s]^2 is the variance for any constant s,
    so every derivative is exact (TF 1.3's form, E[(x - stop_gradient(mean))^2], drops a
    second-derivative term)."""
    shift = tf.stop_gradient(tf.reduce_mean(x, axes, keepdims=True))
    shifted_mean = tf.reduce_mean(x - shift, axes, keepdims=True)
    variance = tf.reduce_mean(tf.squared_difference(x, shift), axes, keepdims=True) - tf.square(shifted_mean)
    return shifted_mean + shift, variance


def install_unfused_batch_norm(tf):
    """Give the original contrib's ``batch_norm`` as TF 1.0-1.3 ran it by default
    (``fused=False``): TF 1.0-1.2 moments, then ``tf.nn.batch_normalization``; beta only,
    eps 1e-3, batch statistics, activation inside, the shim's variables."""
    def batch_norm(inputs, activation_fn=None, reuse=None, scope=None, **unused):
        with tf.variable_scope(scope, "BatchNorm", [inputs], reuse=reuse):
            shape = inputs.shape[-1:]
            beta = tf.get_variable("beta", shape, inputs.dtype, tf.zeros_initializer())
            tf.get_variable("moving_mean", shape, inputs.dtype, tf.zeros_initializer(), trainable=False)
            tf.get_variable("moving_variance", shape, inputs.dtype, tf.ones_initializer(), trainable=False)
            mean, var = moments_tf1(tf, inputs, list(range(inputs.shape.ndims - 1)))
            out = tf.nn.batch_normalization(inputs, mean, var, beta, None, 1e-3)
            return activation_fn(out) if activation_fn is not None else out
    for name in ("tensorflow.contrib.layers", "tensorflow.contrib.layers.python.layers"):
        sys.modules[name].batch_norm = batch_norm
    tf.contrib.layers.batch_norm = batch_norm


def install(original_dir=None, batch_norm="unfused"):
    """Install the TF1 shim (process-wide: TensorFlow in graph mode) and put the original
    code on the import path.  Returns ``tensorflow.compat.v1``."""
    if batch_norm not in BATCH_NORMS:
        raise OriginalError(f"batch_norm={batch_norm!r}: use unfused or fused")
    original_dir = find_original(original_dir)
    sys.path.insert(0, original_dir)
    import run_original  # noqa: E402  (the TF2 shim of ../shared/anchors/original)
    tf = run_original.install_tf1_shim()
    if batch_norm == "unfused":
        install_unfused_batch_norm(tf)
    sys.path.insert(0, os.path.join(original_dir, "cbfinn_maml"))
    return tf


def load(flag_values, original_dir=None, batch_norm="unfused"):
    """(tf1, the original's MAML class, its FLAGS) with the shim installed and the given
    original flags set (a dict)."""
    tf = install(original_dir, batch_norm)
    from tensorflow.python.platform import flags  # noqa: E402
    import main  # noqa: E402,F401  (defines the original's flags)
    from maml import MAML as OriginalMAML  # noqa: E402
    FLAGS = flags.FLAGS
    FLAGS(["original"])
    for name, value in flag_values.items():
        setattr(FLAGS, name, value)
    return tf, OriginalMAML, FLAGS


def run_main(argv, seed=None, original_dir=None, batch_norm="unfused"):
    """Run the original ``main.py`` with ``argv`` (its flags), seeded if ``seed`` is given."""
    tf = install(original_dir, batch_norm)
    if seed is not None:
        import numpy as np
        np.random.seed(seed)
        random.seed(seed)
        tf.set_random_seed(seed)
    path = os.path.join(find_original(original_dir), "cbfinn_maml", "main.py")
    sys.argv = [path] + list(argv)
    runpy.run_path(path, run_name="__main__")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m maml_tf.paper.original",
                                description="Run the authors' main.py (seeded) on TensorFlow 2.")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch_norm", default="unfused", choices=BATCH_NORMS)
    p.add_argument("--original", default=None)
    args, rest = p.parse_known_args(argv)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    try:
        run_main(rest, args.seed, args.original, args.batch_norm)
    except OriginalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
