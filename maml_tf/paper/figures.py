"""The paper's sinusoid figures, from trained runs: ``python -m maml_tf.paper.figures --logdir LOGS --out DIR``;
and the results at a glance, from the published models: ``... --glance --out docs --readme README.md``.

Figure 2: for a few sinusoid tasks, the true curve, the K points used for the
inner gradient steps, and the prediction before adaptation and after 1 and 10
steps, for MAML (K=5, K=10) beside the pretrained model (K=5 with step 0.01,
K=10 with step 0.02), read from the runs' checkpoints.

Figure 3: mean squared error against the number of inner gradient steps, for
K=5 and K=10, MAML against the pretrained model and the oracle, read from the
runs' test CSVs and their per-task .pkl files: the mean over the tasks that never
diverge with its 95% confidence band, the diverging tasks counted in the legend, and
the median over all tasks dotted beside it.

``--original DIR`` adds the authors' own code's MAML curves to Figure 3: DIR is the log
folder of ``python -m maml_tf.paper.original`` (or of ``reproduce/sinusoid_original.py``,
``LOGROOT/original/seedS``) after its sinusoid usage line with ``--update_lr=0.01`` and its
two tests (K=10; ``--update_batch_size=5 --train_update_batch_size=10``).  A task diverges
when its MSE after 10 steps is not finite or above 25.

The runs are the sinusoid experiments of :mod:`maml_tf.paper.experiments`, found under
LOGS/sine (``--budget``: LOGS/budget/sine) as ``reproduce/run.py`` leaves them.
matplotlib is an optional dependency (``pip install matplotlib``).
"""
import argparse
import os
import sys

import numpy as np

FIG2_PANELS = [  # (experiment, column title)
    ("sinusoid-maml-k5", "MAML, K=5"),
    ("sinusoid-maml-k10", "MAML, K=10"),
    ("sinusoid-pretrained-k5", "pretrained, K=5, step size=0.01"),
    ("sinusoid-pretrained-k10", "pretrained, K=10, step size=0.02"),
]
FIG3_CURVES = [  # (experiment suffix, label, colour, style)
    ("maml", "MAML (ours)", "tab:green", "-"),
    ("pretrained", "pretrained, step={lr}", "tab:blue", "--"),
    ("oracle", "oracle", "tab:red", ":"),
]
STEPS = (0, 1, 10)
X_RANGE = (-5.0, 5.0)


class FiguresError(ValueError):
    """Missing matplotlib, runs or files; the message says what to do."""


def pyplot():
    """matplotlib.pyplot on the Agg backend, or a FiguresError saying how to install it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FiguresError("the figures need matplotlib, which is not installed: "
                           "pip install matplotlib (or pip install 'maml-tf[plot]')") from None
    return plt


# ------------------------------------------------------------------------------ data
def adapt_predictions(model, x_support, y_support, x_grid, lr, steps=STEPS):
    """{j: predictions on x_grid after j inner gradient steps} for j in ``steps``:
    plain gradient descent with step ``lr`` on the MSE of the K support points,
    from the model's meta-learned weights, as its inner loop."""
    import tensorflow as tf
    fast = dict(model.weights)
    xs, ys = tf.constant(x_support, tf.float32), tf.constant(y_support, tf.float32)
    grid = tf.constant(x_grid, tf.float32)
    out = {}
    for j in range(max(steps) + 1):
        if j in steps:
            out[j] = model.forward(grid, fast).numpy()[:, 0]
        if j == max(steps):
            break
        with tf.GradientTape() as tape:
            tape.watch(list(fast.values()))
            loss = model.loss(model.forward(xs, fast), ys)
        grads = tape.gradient(loss, fast)
        fast = {k: fast[k] - lr * grads[k] for k in fast}
    return out


def load_run_model(cfg, iteration=None):
    """The model of ``cfg``'s run, restored from model<iteration> (default: the newest)."""
    from maml_tf.run.checkpoints import CheckpointManager
    from maml_tf.paper.results import latest_checkpoint_iteration
    from maml_tf.run.model import build_model
    itr = latest_checkpoint_iteration(cfg.exp_dir) if iteration is None else iteration
    if itr is None:
        raise FiguresError(f"no checkpoint in {cfg.exp_dir}")
    model = build_model(cfg)
    CheckpointManager(cfg.exp_dir, model).restore(os.path.join(cfg.exp_dir, f"model{itr}"), weights_only=True)
    return model, itr


def sample_tasks(num_tasks, k_max=10, seed=0):
    """[(amplitude, phase, x [k_max, 1], y [k_max, 1])]: sinusoid tasks from the meta-training
    distribution (A in [0.1, 5], phase in [0, pi], x in [-5, 5]); the first K points are used."""
    rng = np.random.RandomState(seed)
    tasks = []
    for _ in range(num_tasks):
        amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0.0, np.pi)
        x = rng.uniform(X_RANGE[0], X_RANGE[1], [k_max, 1])
        tasks.append((amp, phase, x, amp * np.sin(x - phase)))
    return tasks


# ------------------------------------------------------------------------------ figures
def figure2(panels, tasks, path, grid_points=200):
    """Write Figure 2.  ``panels``: [(title, model, K, step size)]; ``tasks``: from
    :func:`sample_tasks`.  One row per task, one column per panel."""
    plt = pyplot()
    x_grid = np.linspace(X_RANGE[0], X_RANGE[1], grid_points)[:, None]
    rows, cols = len(tasks), len(panels)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    greens = {0: "#9be39b", 1: "#2ca02c", 10: "#0b4f0b"}
    blues = {0: "#9ecae1", 1: "#3182bd", 10: "#08306b"}
    for r, (amp, phase, xs, ys) in enumerate(tasks):
        for c, (title, model, k, lr) in enumerate(panels):
            ax = axes[r][c]
            preds = adapt_predictions(model, xs[:k], ys[:k], x_grid, lr)
            shades = greens if title.lower().startswith("maml") else blues
            ax.plot(x_grid[:, 0], amp * np.sin(x_grid[:, 0] - phase), color="red", lw=2, label="ground truth")
            for j in STEPS:
                label = "pre-update" if j == 0 else f"{j} grad step" + ("s" if j > 1 else "")
                ax.plot(x_grid[:, 0], preds[j], ls="--", color=shades[j], lw=1.5, label=label)
            ax.plot(xs[:k, 0], ys[:k, 0], "^", color="purple", ms=8, label="used for grad")
            ax.set_xlim(*X_RANGE)
            ax.set_ylim(-5.5, 5.5)
            if r == 0:
                ax.set_title(title)
            if r == rows - 1:
                ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def diverges_anywhere(m):
    """Per task: its MSE is not finite or above DIVERGED after some step (a task can blow up
    after step 3 and come back under the limit by step 10)."""
    return ~np.all(m <= DIVERGED, axis=1)


def trimmed(m):
    """(means, 95% intervals, tasks kept) per step over the tasks that stay under DIVERGED
    at every step (:func:`diverges_anywhere`), from a [tasks, steps] matrix of per-task MSEs."""
    keep = m[~diverges_anywhere(m)]
    n = len(keep)
    if n == 0:
        nan = np.full(m.shape[1], np.nan)
        return nan, nan, 0
    return keep.mean(0), 1.96 * keep.std(0) / np.sqrt(n), n


def figure3(curves, path):
    """Write Figure 3.  ``curves``: {K: [(label, TestCSV, colour, linestyle[, per-task MSEs])]},
    one panel per K.

    Where a curve's per-task MSEs are known (the test's .pkl), the line is the mean over the
    tasks that never diverge (MSE above DIVERGED or not finite after any step), with its 95%
    band, the legend counts the tasks left out, and the
    median over all tasks is drawn dotted beside it: one task in 600 whose loss grows without
    bound would otherwise pull the mean off the axes (the tables keep the plain means).  A curve
    known only from its CSV is drawn as the CSV's means, a mean beyond the axes marked at the top.
    """
    plt = pyplot()
    ks = sorted(curves)
    fig, axes = plt.subplots(1, len(ks), figsize=(5 * len(ks), 4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        drawn = []
        for label, data, colour, style, *per_task in curves[k]:
            m = per_task[0] if per_task else None
            if m is None or "oracle" in label:
                means, ci95, med = np.array(data.means, float), np.array(data.ci95, float), None
            else:
                means, ci95, kept = trimmed(m)
                med = medians(m)
                if kept < len(m):
                    label = f"{label}: mean of {kept} of {len(m)} tasks ({len(m) - kept} exceed MSE {DIVERGED:g})"
            if "oracle" in label:
                # The oracle gets amplitude and phase as inputs and is not fine-tuned:
                # a constant, its error before any step (the paper's flat line).
                means, ci95 = np.full_like(means, means[0]), np.full_like(ci95, ci95[0])
            drawn.append((label, means, ci95, colour, style, med, m is not None))
        # The y range follows the pre-update / first-step errors, as the paper's plot, and the
        # whole of each curve drawn from its tasks (on scale by construction); the upper part
        # is left to the legend.
        shown = [v for _, means, _, _, _, _, whole in drawn for v in (means if whole else means[:2])
                 if np.isfinite(v)]
        top = 1.5 * max(shown) if shown else None
        for label, means, ci95, colour, style, med, _ in drawn:
            steps = np.arange(len(means))
            ax.plot(steps, np.where(np.isfinite(means), means, np.nan), style, color=colour,
                    marker="o", ms=3, label=label)
            shown = np.isfinite(means) & (means <= (np.inf if top is None else top))  # bands on scale
            ax.fill_between(steps, means - ci95, means + ci95, where=shown, color=colour, alpha=0.2)
            if med is not None:
                ax.plot(steps, np.where(np.isfinite(med), med, np.nan), ":", color=colour, lw=1.2,
                        label=f"{label.split(':')[0]}: median of all tasks")
            if top is not None:
                off = ~(np.isfinite(means) & (means <= top))
                if off.any():
                    ax.plot(steps[off], np.full(off.sum(), top * 0.98), "^", color=colour, ms=7,
                            label=f"{label}: mean off scale")
        ax.set_title(f"k-shot regression, k={k}")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("mean squared error")
        ax.set_ylim(0, top)
        ax.legend(fontsize=6, loc="upper right", framealpha=0.7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _save(fig, path):
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------------------------ from runs
def _run_config(name, logroot, budget):
    from maml_tf.paper.experiments import BY_NAME
    e = BY_NAME[name]
    return e, e.config(budget=budget, test=True, logroot=logroot)


def _how_to_make(name, budget):
    return f"python reproduce/run.py --experiment {name}" + (" --budget" if budget else "")


DIVERGED = 25.0  # MSE after the last step above this (or not finite): worse than predicting 0


def read_mses(pkl):
    """[tasks, steps] per-task MSEs of a sinusoid test's .pkl (read without running code)."""
    from maml_tf.data import safe_pickle
    return np.asarray(safe_pickle.load(pkl)["mses"], np.float64)


def diverged(m):
    """Per task: its MSE after the last step is not finite or above DIVERGED."""
    return ~(m[:, -1] <= DIVERGED)


def medians(m):
    """Per-step medians over tasks, a NaN (a diverged task) counted as +inf."""
    return np.median(np.where(np.isnan(m), np.inf, m), axis=0)


def _per_task(csv_path):
    """The per-task MSEs of the test's .pkl beside ``csv_path``, or None where it is absent."""
    pkl = csv_path[:-len(".csv")] + ".pkl"
    return read_mses(pkl) if os.path.isfile(pkl) else None


def figure3_curves(logroot, budget=False, original=None):
    """{K: [(label, TestCSV, colour, style, per-task MSEs or None)]} from the test CSVs present
    (and their .pkl files); and the missing ones.  ``original``: the authors' code's sinusoid
    log folder (its MAML curves)."""
    from maml_tf.paper.results import ResultsError, read_test_csv
    curves, missing = {}, []
    for k in (5, 10):
        for kind, label, colour, style in FIG3_CURVES:
            name = f"sinusoid-{kind}-k{k}"
            e, cfg = _run_config(name, logroot, budget)
            path = cfg.test_csv_path
            try:
                data = read_test_csv(path)
            except ResultsError:
                missing.append(name)
                continue
            curves.setdefault(k, []).append((label.format(lr=cfg.update_lr), data, colour, style,
                                             _per_task(path)))
        if original is not None:
            exp = "cls_5.mbs_25.ubs_10.numstep1.updatelr0.01nonorm"  # the original's folder name
            path = os.path.join(original, exp, f"test_ubs{k}_stepsize0.01.csv")
            try:
                data = read_test_csv(path)
            except ResultsError:
                missing.append(f"the original's K={k} test ({path})")
                continue
            curves.setdefault(k, []).append(("MAML (cbfinn/maml)", data, "tab:orange", "-.", _per_task(path)))
    return curves, missing


def make_figures(logroot, out_dir, budget=False, seed=0, rows=3, out=print, original=None):
    """Write figure2.png and figure3.png into ``out_dir`` from the sinusoid runs under
    ``logroot``; returns the paths written.  A figure whose runs are all missing is an
    error; missing parts are reported through ``out``."""
    pyplot()  # fail first, and clearly, without matplotlib
    written = []
    curves, missing = figure3_curves(logroot, budget, original)
    if not curves:
        raise FiguresError(f"no sinusoid test CSVs under {logroot}{'/budget' if budget else ''}/sine: run "
                           f"{_how_to_make('sinusoid-*', budget)} first")
    for name in missing:
        out(f"Figure 3: missing {name}" if name.startswith("the original") else
            f"Figure 3: no test CSV for {name} (make it with: {_how_to_make(name, budget)})")
    written.append(figure3(curves, os.path.join(out_dir, "figure3.png")))
    panels = []
    for name, title in FIG2_PANELS:
        e, cfg = _run_config(name, logroot, budget)
        try:
            model, itr = load_run_model(cfg)
        except FiguresError:
            out(f"Figure 2: no checkpoint for {name} in {cfg.exp_dir} (make it with: {_how_to_make(name, budget)})")
            continue
        panels.append((title, model, cfg.update_batch_size, cfg.update_lr))
    if not panels:
        raise FiguresError(f"no sinusoid checkpoints under {logroot}: run {_how_to_make('sinusoid-*', budget)} first")
    written.append(figure2(panels, sample_tasks(rows, seed=seed), os.path.join(out_dir, "figure2.png")))
    for p in written:
        out(f"Wrote {p}")
    return written


def glance(out_dir, readme=None, out=print):
    """The results at a glance from the published models' manifests: the figure
    (``out_dir``/results_at_a_glance.png), the table printed, and with ``readme`` the
    table between that file's markers replaced (:mod:`maml_tf.paper.glance`)."""
    from maml_tf.paper import glance as g
    table_rows = g.rows()
    table = g.markdown(table_rows)
    path = g.figure(table_rows, os.path.join(out_dir, "results_at_a_glance.png"), pyplot)
    out(table)
    out(f"Wrote {path}")
    if readme is not None:
        with open(readme) as f:
            text = f.read()
        try:
            new = g.replace_in(text, table)
        except ValueError as e:
            raise FiguresError(f"{readme}: {e}") from None
        if new != text:
            tmp = f"{readme}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(new)
            os.replace(tmp, readme)
        out(f"{'Updated' if new != text else 'Unchanged:'} the table in {readme}")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m maml_tf.paper.figures",
                                     description="The paper's Figures 2 and 3 (sinusoid) as PNG files; "
                                                 "--glance: the results at a glance (every cell of the "
                                                 "paper's tables against the published models).")
    parser.add_argument("--logdir", help="log root of reproduce/run.py (holds sine/ and budget/sine/)")
    parser.add_argument("--glance", action="store_true",
                        help="draw OUT/results_at_a_glance.png and print the table from pretrained/*/manifest.json")
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="with --glance: replace the table between the results-at-a-glance markers of FILE")
    parser.add_argument("--out", default="figures", help="folder for figure2.png and figure3.png")
    parser.add_argument("--budget", action="store_true", help="use the budget-length runs (LOGDIR/budget/sine)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the Figure 2 tasks")
    parser.add_argument("--rows", type=int, default=3, help="number of tasks (rows) in Figure 2")
    parser.add_argument("--original", default=None, metavar="DIR",
                        help="log folder of the authors' code's sinusoid run: its MAML curves in Figure 3")
    args = parser.parse_args(argv)
    if not args.glance and not args.logdir:
        parser.error("--logdir is required (or --glance)")
    try:
        if args.glance:
            glance(args.out, args.readme)
            return 0
        make_figures(args.logdir, args.out, args.budget, args.seed, args.rows, original=args.original)
    except FiguresError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
