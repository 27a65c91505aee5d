"""Learning curve of a classification run: validation accuracy against meta-iterations.

    python -m maml_tf.paper.learning_curve <the training command's main.py flags> \\
        [--out=PATH.png] [--step=J] [--window=N]

Finds the run's folder from the flags (as ``main.py --train=False`` does) and reads
what training wrote there:

* the TensorBoard summaries: every 100 iterations the original's ``metaval_`` scalars
  (one meta-batch of validation tasks, ``val/``) and ``metatrain_`` scalars (the
  training meta-batch), post-update accuracy after ``--step`` inner steps (default
  the training's ``--num_updates``, what the original prints).  One meta-batch is a
  noisy estimate: the curve drawn is its moving mean over ``--window`` points
  (default 10, i.e. 1,000 iterations), the raw points faintly behind it;
* ``model_selection.json`` where ``python -m maml_tf.paper.select_checkpoint`` wrote
  it: each checkpoint's accuracy on its fixed validation tasks, with 95% intervals
  (its column: 10 steps by default).

Writes the PNG (``--out``, default ``<run folder>/learning_curve.png``) and, beside
it, a CSV of the same numbers (iteration, validation and training accuracy, their
moving means), so the curve can be read without the image.  A run resumed after an
interruption writes some iterations twice (from its last checkpoint on): the later
record counts.  matplotlib is needed for the PNG only (``pip install matplotlib``).
"""
import csv
import glob
import json
import os
import sys

import numpy as np

from maml_tf.run.config import UsageError
from maml_tf.runtime import tool_args


def read_scalars(folder, tag):
    """{iteration: value} of ``tag`` in the event files directly in ``folder``; where an
    iteration was written more than once (a resumed run), the latest record wins."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    found = {}  # step -> (wall_time, value)
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        for raw in tf.data.TFRecordDataset(path):
            event = event_pb2.Event.FromString(raw.numpy())
            for v in event.summary.value:
                if v.tag != tag:
                    continue
                value = v.simple_value if v.WhichOneof("value") == "simple_value" \
                    else float(tf.make_ndarray(v.tensor))
                if event.step not in found or event.wall_time >= found[event.step][0]:
                    found[event.step] = (event.wall_time, value)
    return {s: found[s][1] for s in sorted(found)}


def moving_mean(values, window):
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    values = np.asarray(values, dtype=np.float64)
    c = np.concatenate([[0.0], np.cumsum(values)])
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def learning_curve(exp_dir, step, window=10):
    """The curve's numbers: dict with 'iterations', 'val', 'val_mean', 'train',
    'train_mean' (arrays, accuracy fractions; training values at the same iterations
    where written, else NaN) and 'selection' (model_selection.json's record, or None)."""
    tag = f"Post-update accuracy, step {step}"
    val = read_scalars(os.path.join(exp_dir, "val"), "metaval_" + tag)
    train = read_scalars(exp_dir, "metatrain_" + tag)
    if not val:
        raise UsageError(f"no validation summaries ('metaval_{tag}') in {os.path.join(exp_dir, 'val')}: "
                         f"pass the training command's flags (a classification run trained with --log=True); "
                         f"--step must be at most the number of inner steps evaluated (10)")
    its = np.array(sorted(val), dtype=np.int64)
    v = np.array([val[i] for i in its])
    t = np.array([train.get(int(i), np.nan) for i in its])
    t_known = ~np.isnan(t)
    t_mean = np.full_like(t, np.nan)
    t_mean[t_known] = moving_mean(t[t_known], window)
    selection = None
    path = os.path.join(exp_dir, "model_selection.json")
    if os.path.isfile(path):
        with open(path) as f:
            selection = json.load(f)
    return {"iterations": its, "val": v, "val_mean": moving_mean(v, window), "train": t,
            "train_mean": t_mean, "selection": selection, "step": step, "window": window}


def write_csv(curve, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "val_accuracy", f"val_accuracy_mean{curve['window']}", "train_accuracy",
                    f"train_accuracy_mean{curve['window']}"])
        for row in zip(curve["iterations"], curve["val"], curve["val_mean"], curve["train"], curve["train_mean"]):
            w.writerow([int(row[0])] + [repr(float(x)) for x in row[1:]])


def plot(curve, path, title):
    """Two panels: the whole run, and the same zoomed in on its later 90% (where the
    curves are close to each other and to 100%)."""
    from maml_tf.paper.figures import _save, pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    its = curve["iterations"]
    sel = curve["selection"]
    for k, ax in enumerate(axes):
        ax.plot(its, 100 * curve["val"], color="tab:blue", alpha=0.2, lw=0.6)
        ax.plot(its, 100 * curve["val_mean"], color="tab:blue",
                label=f"validation meta-batch, {curve['step']} step(s), mean of {curve['window']}")
        if np.isfinite(curve["train_mean"]).any():
            ax.plot(its, 100 * curve["train_mean"], color="tab:gray", ls="--",
                    label=f"training meta-batch, {curve['step']} step(s), mean of {curve['window']}")
        if sel:
            pts = sorted((int(name[len("model"):]), m, c) for name, (m, c) in sel["results"].items())
            x, m, c = (np.array(a) for a in zip(*pts))
            ax.errorbar(x, 100 * m, yerr=100 * c, fmt="o", ms=3, color="tab:green", capsize=2,
                        label=f"checkpoints on {sel['num_tasks']} validation tasks, {sel['column']} steps (95%)")
            ax.axvline(sel["best_iteration"], color="tab:green", ls=":", lw=1)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        if k == 1 and len(its) >= 10:
            first = its[-1] // 10
            later = curve["val_mean"][its >= first]
            ax.set_xlim(first, its[-1] * 1.01)
            ax.set_ylim(max(0.0, 100 * later.min() - 2), min(100.5, 100 * later.max() + 2))
            ax.set_title("zoomed: from iteration {:,}".format(int(first)), fontsize=10)
        else:
            ax.set_ylim(0, 100.5)
            ax.set_title(title, fontsize=10)
            ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def main(argv=None):
    argv = tool_args(argv, __doc__)
    if argv is None:
        return 0
    from maml_tf.paper.experiments import config_from_flags, parse_tool_flags
    from maml_tf.paper.figures import FiguresError
    try:
        values, opts = parse_tool_flags(argv, {"out": (str, ""), "step": (int, -1), "window": (int, 10)})
        if opts["window"] < 1:
            raise UsageError(f"--window={opts['window']}: give a number of points >= 1")
        values["train"] = False
        cfg = config_from_flags(values)
        if not cfg.classification:
            raise UsageError("the learning curve is of classification accuracy: give an omniglot or "
                             "miniimagenet run's flags")
        step = cfg.num_updates if opts["step"] < 0 else opts["step"]
        curve = learning_curve(cfg.exp_dir, step, opts["window"])
        out = opts["out"] or os.path.join(cfg.exp_dir, "learning_curve.png")
        csv_path = os.path.splitext(out)[0] + ".csv"
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        write_csv(curve, csv_path)
        title = (f"{cfg.datasource} {cfg.num_classes_per_task}-way {cfg.update_batch_size}-shot, "
                 f"{'first' if cfg.stop_grad else 'second'} order: {int(curve['iterations'][-1]):,} of "
                 f"{cfg.metatrain_iterations:,} iterations")
        plot(curve, out, title)
    except (UsageError, FiguresError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    last = curve["iterations"][-1]
    line = (f"{cfg.exp_dir}: {len(curve['iterations'])} validation points to iteration {last:,}; "
            f"validation accuracy after {step} step(s), mean of the last {curve['window']}: "
            f"{100 * curve['val_mean'][-1]:.1f}%")
    sel = curve["selection"]
    if sel:
        best = sel["results"][f"model{sel['best_iteration']}"]
        from maml_tf.paper.results import latest_checkpoint_iteration
        newest = latest_checkpoint_iteration(cfg.exp_dir)
        so_far = " so far" if newest is None or newest + 1 < cfg.metatrain_iterations else ""
        line += (f"; best checkpoint{so_far} model{sel['best_iteration']}: {100 * best[0]:.1f} +- {100 * best[1]:.1f}% "
                 f"({sel['num_tasks']} tasks, {sel['column']} steps)")
    print(line)
    print(f"Wrote {out} and {csv_path}")
    return 0


if __name__ == "__main__":
    from maml_tf.runtime import quiet_start
    quiet_start()
    sys.exit(main())
