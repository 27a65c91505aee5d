"""Load checkpoints written by the original TF1 code (cbfinn/maml) into a :class:`MAML` model.

The original built every variable inside ``tf.variable_scope('model')`` and saved
them with ``tf.train.Saver(tf.get_collection(TRAINABLE_VARIABLES))``, so a
checkpoint holds exactly the trainable variables, named by how they were created:

conv networks (``construct_conv_weights``):
  ``conv1..conv4``   ``tf.get_variable('convI')``            -> ``model/convI``
  ``b1..b4``         ``tf.Variable(tf.zeros(...))`` (no name) -> ``model/Variable``,
                     ``model/Variable_1``, ``model/Variable_2``, ``model/Variable_3``
  ``w5``, ``b5``     named ``w5`` / ``b5`` (``tf.get_variable`` for miniImageNet's
                     ``w5``, ``tf.Variable(name=...)`` otherwise)   -> ``model/w5``, ``model/b5``
fc networks (``construct_fc_weights``; sinusoid, and ``--conv=False``):
  ``w1, b1, w2, b2, ..., wL, bL``, all ``tf.Variable`` without a name, in that
  creation order -> ``model/Variable``, ``model/Variable_1``, ... ``model/Variable_{2L-1}``
normalisation (``tf.contrib.layers.batch_norm`` / ``layer_norm`` with ``scope=S``):
  batch norm: ``model/S/beta`` (``scale=False``: no gamma); layer norm:
  ``model/S/beta`` and ``model/S/gamma``.  S is ``0..3`` for conv nets and
  ``0, 2, 3, ...`` for fc nets (see ``NetworkSpec.norm_scopes``).

A file may also hold variables the model has no use for (Adam slots
``.../Adam``, ``.../Adam_1``, ``beta1_power``, batch-norm ``moving_mean`` /
``moving_variance``, ``global_step``) when it was saved with a wider Saver; they
are skipped and listed in the returned :class:`LoadReport`.  Any other variable
the model does not have, a missing one, or a shape that does not fit is a
:class:`~maml_tf.run.config.UsageError` whose message names the variable and the flag
to fix.  Nothing is assigned unless every variable fits.
"""
import dataclasses
import os
import re
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from maml_tf.run.config import UsageError

SCOPE = "model"

# Variables a wider Saver may have written that the model does not need.
_IGNORABLE = [
    (re.compile(r"(^|/)Adam(_\d+)?$"), "Adam slot"),
    (re.compile(r"(^|/)beta[12]_power(_\d+)?$"), "Adam step power"),
    (re.compile(r"(^|/)moving_(mean|variance)$"), "batch-norm moving statistic"),
    (re.compile(r"(^|/)global_step$"), "global step"),
    (re.compile(r"^_CHECKPOINTABLE_OBJECT_GRAPH$"), "object graph"),
]


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_tf1_checkpoint` did.

    mapped: checkpoint name -> the model's key ('weights/conv1', 'norm/0/beta', ...).
    ignored: checkpoint name -> why it was skipped (optimizer slot, moving statistic...).
    """
    prefix: str
    mapped: Dict[str, str]
    ignored: Dict[str, str]

    def __str__(self):
        s = f"loaded {len(self.mapped)} variables from {self.prefix}"
        if self.ignored:
            kinds = sorted(set(self.ignored.values()))
            s += f"; ignored {len(self.ignored)} unused ({', '.join(kinds)})"
        return s


def tf1_variable_names(spec, scope=SCOPE):
    """The original's checkpoint name of every parameter of ``spec``.

    Returns a list of (checkpoint name, group, key), group being 'weights' or
    'norm' and key the model's dict key, in the original's creation order.
    """
    pre = f"{scope}/" if scope else ""
    out = []
    unnamed = 0

    def anonymous():
        nonlocal unnamed
        name = "Variable" if unnamed == 0 else f"Variable_{unnamed}"
        unnamed += 1
        return pre + name

    if spec.kind == "conv":
        for i in range(1, 5):
            out.append((pre + f"conv{i}", "weights", f"conv{i}"))
            out.append((anonymous(), "weights", f"b{i}"))
        out.append((pre + "w5", "weights", "w5"))
        out.append((pre + "b5", "weights", "b5"))
    else:
        for i in range(1, len(spec.dim_hidden) + 2):
            out.append((anonymous(), "weights", f"w{i}"))
            out.append((anonymous(), "weights", f"b{i}"))
    if spec.norm in ("batch_norm", "layer_norm"):
        for s in spec.norm_scopes:
            out.append((pre + f"{s}/beta", "norm", f"{s}/beta"))
            if spec.norm == "layer_norm":
                out.append((pre + f"{s}/gamma", "norm", f"{s}/gamma"))
    return out


def _resolve_prefix(prefix):
    """Accept PREFIX, PREFIX.index, PREFIX.data-*, or a folder holding one checkpoint."""
    if not prefix:
        raise UsageError("--init_checkpoint is empty: give the prefix of an original checkpoint, "
                         "e.g. .../miniimagenet1shot/model59000")
    p = re.sub(r"\.(index|meta|data-\d+-of-\d+)$", "", prefix)
    if tf.io.gfile.isdir(p):
        found = sorted(f[:-len(".index")] for f in tf.io.gfile.listdir(p) if f.endswith(".index"))
        if len(found) != 1:
            listing = ", ".join(found) if found else "none"
            raise UsageError(f"--init_checkpoint={prefix} is a folder with {len(found)} checkpoints "
                             f"({listing}): give the prefix of one, e.g. {os.path.join(p, 'model59000')}")
        p = os.path.join(p, found[0])
    if not tf.io.gfile.exists(p + ".index"):
        raise UsageError(f"--init_checkpoint={prefix}: no checkpoint there ({p}.index is missing): "
                         f"give the prefix of the original's files, e.g. .../model59000 for model59000.index")
    return p


def read_checkpoint(prefix):
    """{name: numpy array} of every variable in a (name-based) checkpoint."""
    p = _resolve_prefix(prefix)
    try:
        reader = tf.train.load_checkpoint(p)
        names = reader.get_variable_to_shape_map()
        return p, {n: reader.get_tensor(n) for n in names}
    except (tf.errors.OpError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--init_checkpoint={prefix}: cannot read it as a TensorFlow checkpoint ({first})") from None


def _fmt(shape):
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _shape_hint(spec, group, key, ours, theirs):
    """The flag(s) that decide this parameter's shape, with the value the file implies."""
    if group == "norm":
        if spec.kind == "conv":
            return f"set --num_filters={theirs[0]}" if len(theirs) == 1 else "check --num_filters"
        return "check --conv and --datasource (fc hidden sizes are fixed by the data source)"
    if spec.kind == "conv":
        if key.startswith("conv"):
            if len(theirs) != 4:
                return "this looks like an fc network's checkpoint: check --conv and --datasource"
            hints = []
            if theirs[3] != ours[3]:
                hints.append(f"--num_filters={theirs[3]}")
            if key == "conv1" and theirs[2] != ours[2]:
                hints.append("--datasource=" + ("miniimagenet" if theirs[2] == 3 else "omniglot"))
            return "set " + " ".join(hints) if hints else "check --num_filters and --datasource"
        if key.startswith("b") and key != "b5":
            return f"set --num_filters={theirs[0]}" if len(theirs) == 1 else "check --num_filters"
        if key == "b5" or (key == "w5" and len(theirs) == 2 and theirs[0] == ours[0]):
            n = theirs[-1]
            return f"set --num_classes={n}"
        if key == "w5" and len(theirs) == 2:
            nf = spec.dim_hidden[0]
            if theirs[0] == nf * 25:
                return "set --max_pool=True (the original's miniImageNet head is num_filters*5*5 wide)"
            if theirs[0] == nf and spec.flatten:
                return "an Omniglot head (spatial mean): set --datasource=omniglot"
            if spec.flatten:
                return "check --max_pool, --num_filters and --datasource"
            return "a flattening (miniImageNet) head: set --datasource=miniimagenet --max_pool=True"
        return "check --datasource, --num_filters, --max_pool and --num_classes"
    # fc
    n_layers = len(spec.dim_hidden) + 1
    idx = int(key[1:])
    if idx == n_layers and len(theirs) >= 1 and theirs[-1] != ours[-1]:
        return f"set --num_classes={theirs[-1]} (or check --datasource)"
    if key == "w1" and len(theirs) == 2 and theirs[1] == ours[1]:
        if ours[0] in (1, 3) and theirs[0] in (1, 3):
            return "set --baseline=oracle" if theirs[0] == 3 else "remove --baseline=oracle"
        return "check --datasource (the input size differs)"
    return "check --datasource and --conv (the hidden layer sizes differ)"


def _unexpected_hint(spec, stripped, names):
    m = re.match(r"^(\d+)/(beta|gamma)$", stripped)
    if m:
        layer_norm = any(re.search(r"(^|/)\d+/gamma$", n) for n in names)
        if spec.norm == "None":
            return ("the checkpoint has normalisation parameters: set --norm="
                    + ("layer_norm" if layer_norm else "batch_norm"))
        if m.group(2) == "gamma" and spec.norm != "layer_norm":
            return "the checkpoint has a layer-norm scale: set --norm=layer_norm"
        return "check --conv and --datasource (the number of layers differs)"
    if stripped.startswith("Variable"):
        return "the checkpoint has more layers than this model: check --conv and --datasource"
    return "check --datasource, --conv and --norm against the command that trained it"


def match_checkpoint(spec, tensors, prefix=""):
    """Map ``tensors`` ({name: array}) onto the parameters of ``spec``.

    Returns (assignments [(group, key, array)], LoadReport).  Raises UsageError
    naming the first missing, unexpected or mis-shaped variable.
    """
    names = set(tensors)
    scope = SCOPE if any(n.startswith(SCOPE + "/") for n in names) else ""
    expected = tf1_variable_names(spec, scope)
    ours_shapes = _spec_shapes(spec)
    where = f"--init_checkpoint={prefix}: " if prefix else ""
    if any(n.startswith("model/weights/") or n.endswith("/.ATTRIBUTES/VARIABLE_VALUE") for n in names):
        raise UsageError(f"{where}this is a maml-tf checkpoint, not one of the original TF1 code: "
                         f"load it with --logdir and --test_iter instead of --init_checkpoint")
    missing = [n for n, _, _ in expected if n not in names]
    if missing:
        group, key = next((g, k) for n, g, k in expected if n == missing[0])
        if group == "norm" and key.endswith("/beta") and not any(re.search(r"(^|/)\d+/beta$", n) for n in names):
            hint = "the checkpoint has no normalisation parameters: set --norm=None"
        elif group == "norm" and key.endswith("/gamma"):
            hint = "the checkpoint has no layer-norm scale: set --norm=batch_norm"
        elif spec.kind == "conv" and not any(re.search(r"(^|/)conv1$", n) for n in names):
            hint = "it holds no conv kernels (an fc network's checkpoint?): check --conv and --datasource"
        elif spec.kind == "fc" and any(re.search(r"(^|/)conv1$", n) for n in names):
            hint = "it holds a conv network: set --conv=True and check --datasource"
        else:
            hint = "check --datasource, --conv, --norm and --num_filters against the command that trained it"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise UsageError(f"{where}variable {missing[0]} (this model's {key}) is missing{more}: {hint}")
    expected_names = {n for n, _, _ in expected}
    ignored = {}
    for n in sorted(names - expected_names):
        why = next((w for r, w in _IGNORABLE if r.search(n)), None)
        if why is None:
            stripped = n[len(scope) + 1:] if scope and n.startswith(scope + "/") else n
            raise UsageError(f"{where}variable {n} {_fmt(tensors[n].shape)} has no place in this model: "
                             f"{_unexpected_hint(spec, stripped, names)}")
        ignored[n] = why
    assignments, mapped = [], {}
    for n, group, key in expected:
        value = np.asarray(tensors[n])
        ours = ours_shapes[(group, key)]
        if tuple(value.shape) != tuple(ours):
            raise UsageError(f"{where}variable {n} has shape {_fmt(value.shape)} but this model's {key} is "
                             f"{_fmt(ours)}: {_shape_hint(spec, group, key, tuple(ours), tuple(value.shape))}")
        if not np.issubdtype(value.dtype, np.floating):
            raise UsageError(f"{where}variable {n} has dtype {value.dtype}, not a float: not a MAML parameter")
        assignments.append((group, key, value))
        mapped[n] = f"{group}/{key}"
    return assignments, LoadReport(prefix=prefix, mapped=mapped, ignored=ignored)


def _spec_shapes(spec):
    w, n = spec.init(seed=0)
    shapes = {("weights", k): v.shape for k, v in w.items()}
    shapes.update({("norm", k): v.shape for k, v in n.items()})
    return shapes


def load_tf1_checkpoint(model, prefix):
    """Assign the original TF1 checkpoint at ``prefix`` to ``model.weights`` /
    ``model.norm_params``; returns a :class:`LoadReport`.

    Only the parameters are loaded (as the original, whose Saver held no
    optimizer state): meta-training continued from here starts fresh Adam moments.
    """
    path, tensors = read_checkpoint(prefix)
    assignments, report = match_checkpoint(model.spec, tensors, prefix=path)
    targets = {"weights": model.weights, "norm": model.norm_params}
    missing = [(g, k) for g, k, _ in assignments if k not in targets[g]]
    if missing:  # the spec and the model disagree: a programming error, not a usage one
        raise KeyError(f"model has no {missing[0][0]} entry {missing[0][1]!r}")
    for group, key, value in assignments:
        var = targets[group][key]
        var.assign(value.astype(var.dtype.as_numpy_dtype))
    return report


def describe(prefix) -> List[Tuple[str, Tuple[int, ...]]]:
    """[(name, shape)] of a checkpoint's variables, sorted (for error reports and the CLI)."""
    _, tensors = read_checkpoint(prefix)
    return sorted((n, tuple(v.shape)) for n, v in tensors.items())


def main(argv=None):
    """``python -m maml_tf.run.tf1_checkpoint PREFIX [main.py flags]``: list an original
    checkpoint's variables and, given the flags, check it against that model."""
    import sys
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m maml_tf.run.tf1_checkpoint PREFIX [main.py flags, e.g. --datasource=miniimagenet "
              "--num_filters=32 --max_pool=True]")
        return 0 if argv else 2
    from maml_tf.run.config import config_from_flags, parse_flags
    prefix, flag_args = argv[0], argv[1:]
    try:
        for name, shape in describe(prefix):
            print(f"{name} {_fmt(shape)}")
        if flag_args:
            values, rest = parse_flags(flag_args)
            if rest:
                raise UsageError(f"not main.py flags: {' '.join(rest)}")
            from maml_tf.run.model import build_model
            model = build_model(config_from_flags({**values, "train": False}))
            _, tensors = read_checkpoint(prefix)
            _, report = match_checkpoint(model.spec, tensors, prefix=prefix)
            for name, key in report.mapped.items():
                print(f"{name} -> {key}")
            print(f"OK: all {len(report.mapped)} parameters fit this model"
                  + (f"; {len(report.ignored)} unused variables ignored" if report.ignored else ""))
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
