"""Model selection: evaluate every saved checkpoint of a run on the meta-validation set.

    python -m maml_tf.paper.select_checkpoint <the training command's main.py flags> \\
        [--column=N] [--num_tasks=600] [--select_seed=2] [--split=val] [--scored=PATH]

Finds the run's folder from the flags (as ``main.py --train=False`` does),
evaluates each ``model<itr>`` checkpoint there on ``--num_tasks`` fixed tasks of
the meta-validation split with the test protocol (meta-batch 1, 10 inner steps,
K query examples per class), and names the iteration with the best value in
column N (accuracy: highest; sinusoid MSE: lowest); N defaults to the last
column (10 inner steps).  Test that one with ``--train=False --test_iter=ITR``.

The validation tasks use their own seed (``--select_seed``, default 2), so they
differ from the ones ``--train=False`` draws with ``--test_seed`` (default 1):
for the sinusoid, whose splits share one distribution, this keeps selection and
testing apart.  Writes ``model_selection.csv`` and ``model_selection.json`` into
the run's folder.

Only the checkpoints still on disk are seen: the trainer keeps the newest 10 (as
the original), so with the default --save_interval=1000 the last 10,000 iterations.
``--scored=PATH`` adds the scores of an earlier ``model_selection.json`` written
with the same column, task count, seed and split: the checkpoints it names are
not evaluated again and need not be on disk (a run trained a stretch at a time
on machines that keep only its newest state: ``reproduce/run.py --resume`` scores
each stretch's checkpoints when it stops and keeps the best one's files).
"""
import csv
import dataclasses
import json
import os
import sys
import time

import numpy as np

from maml_tf.run.config import UsageError
from maml_tf.runtime import tool_args

SEED = 2  # --select_seed's default: the validation tasks' own seed

@dataclasses.dataclass
class Selection:
    exp_dir: str
    column: int
    metric: str                # 'accuracy' or 'mse'
    iterations: list           # [itr]
    means: np.ndarray          # [n_ckpt] value in `column`
    ci95: np.ndarray
    best_iteration: int

    def table(self):
        unit = "accuracy (%)" if self.metric == "accuracy" else "MSE"
        scale = 100.0 if self.metric == "accuracy" else 1.0
        lines = [f"| checkpoint | {unit} after {self.column} steps |", "|---|---|"]
        for itr, m, c in zip(self.iterations, self.means, self.ci95):
            mark = " **best**" if itr == self.best_iteration else ""
            lines.append(f"| model{itr} | {scale * m:.3f} ± {scale * c:.3f}{mark} |")
        return "\n".join(lines)


class ScoresUnusable(UsageError):
    """Saved scores that cannot be used: ``problem`` says why in words that fit any caller
    (this tool advises its own flags; ``reproduce/run.py`` advises its own); ``got``: the file's
    column, tasks, seed and split where it was readable."""

    def __init__(self, path, problem, got=None):
        self.path, self.problem, self.got = path, problem, got
        super().__init__(f"--scored={path}: {problem}: give a model_selection.json scored with the same "
                         f"--column, --num_tasks, --select_seed and --split, or drop --scored")


def read_scores(path, column, num_tasks, seed, split):
    """The scores ``{itr: (mean, ci95)}`` in the ``model_selection.json`` at ``path``;
    :class:`ScoresUnusable` if it is unreadable or was written with other settings."""
    try:
        with open(path) as f:
            rec = json.load(f)
        got = (rec["column"], rec["num_tasks"], rec["seed"], rec["split"])
        scores = {int(k[len("model"):]): tuple(v) for k, v in rec["results"].items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ScoresUnusable(path, f"not a readable model_selection.json ({type(e).__name__}: {e})") from None
    want = (column, num_tasks, seed, split)
    if got != want:
        raise ScoresUnusable(path, f"scored with column, tasks, seed, split = {got}, not {want}", got)
    return scores


def select_checkpoint(cfg, column=None, num_tasks=600, seed=SEED, split="val", out=print, scored=None):
    """Evaluate every checkpoint of ``cfg``'s run; returns a :class:`Selection`.

    ``cfg`` is a test-mode Config (train=False) whose exp_dir is the run's folder.
    ``scored``: ``{itr: (mean, ci95)}`` known from an earlier selection with the same
    settings; those checkpoints are not evaluated again (their files may be gone).
    """
    from maml_tf.run.checkpoints import CheckpointManager
    from maml_tf.paper.results import checkpoint_iterations
    from maml_tf.run.train import evaluate_tasks
    from maml_tf.run.model import build_model

    scored = dict(scored or {})
    on_disk = [itr for itr in checkpoint_iterations(cfg.exp_dir) if itr not in scored]
    iterations = sorted(set(on_disk) | set(scored))
    if not iterations:
        raise UsageError(f"no checkpoint model<itr> in {cfg.exp_dir}: pass the training command's flags "
                         f"(--logdir and the ones that name the run's folder)")
    column = cfg.eval_num_updates if column is None or column < 0 else column
    if column > cfg.eval_num_updates:
        raise UsageError(f"--column={column}: the evaluation runs {cfg.eval_num_updates} inner steps")
    model = build_model(cfg) if on_disk else None
    manager = CheckpointManager(cfg.exp_dir, model) if on_disk else None
    means, cis = [], []
    for itr in iterations:
        if itr in scored:
            means.append(scored[itr][0])
            cis.append(scored[itr][1])
            out(f"model{itr}: {means[-1]:.4f} ± {cis[-1]:.4f} after {column} steps (scored before)")
            continue
        t0 = time.time()
        manager.restore(manager.path_for(itr), weights_only=True)
        rows = evaluate_tasks(cfg, model, split, num_tasks=num_tasks, seed=seed)
        col = rows[:, column]
        means.append(col.mean())
        cis.append(1.96 * col.std() / np.sqrt(len(col)))
        out(f"model{itr}: {means[-1]:.4f} ± {cis[-1]:.4f} after {column} steps ({time.time() - t0:.1f}s)")
    means, cis = np.array(means), np.array(cis)
    metric = "accuracy" if cfg.classification else "mse"
    best = int(np.argmax(means) if metric == "accuracy" else np.argmin(means))
    return Selection(cfg.exp_dir, column, metric, iterations, means, cis, iterations[best])


def write_selection(sel, split, num_tasks, seed):
    with open(os.path.join(sel.exp_dir, "model_selection.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", f"mean_update{sel.column}", f"ci95_update{sel.column}"])
        for itr, m, c in zip(sel.iterations, sel.means, sel.ci95):
            w.writerow([itr, repr(float(m)), repr(float(c))])
    record = {"best_iteration": sel.best_iteration, "column": sel.column, "metric": sel.metric,
              "split": split, "num_tasks": num_tasks, "seed": seed,
              "results": {f"model{i}": [float(m), float(c)]
                          for i, m, c in zip(sel.iterations, sel.means, sel.ci95)}}
    path = os.path.join(sel.exp_dir, "model_selection.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return path


def main(argv=None):
    argv = tool_args(argv, __doc__)
    if argv is None:
        return 0
    from maml_tf.paper.experiments import config_from_flags, parse_tool_flags
    try:
        values, opts = parse_tool_flags(argv, {"column": (int, -1), "num_tasks": (int, 600),
                                               "select_seed": (int, SEED), "split": (str, "val"),
                                               "scored": (str, "")})
        if opts["split"] not in ("val", "test", "train"):
            raise UsageError(f"--split={opts['split']}: use val (the meta-validation set)")
        values["train"] = False
        cfg = config_from_flags(values)
        column = cfg.eval_num_updates if opts["column"] < 0 else opts["column"]
        scored = read_scores(opts["scored"], column, opts["num_tasks"], opts["select_seed"],
                             opts["split"]) if opts["scored"] else None
        sel = select_checkpoint(cfg, column, opts["num_tasks"], opts["select_seed"], opts["split"],
                                scored=scored)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = write_selection(sel, opts["split"], opts["num_tasks"], opts["select_seed"])
    print(sel.table())
    print(f"Best: model{sel.best_iteration} (wrote {path}); test it with --train=False "
          f"--test_iter={sel.best_iteration}")
    return 0


if __name__ == "__main__":
    from maml_tf.runtime import quiet_start
    quiet_start()
    sys.exit(main())
