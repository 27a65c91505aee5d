"""Our test results beside the paper's: ``python -m maml_tf.paper.results --logdir LOGS``.

Reads every ``test_ubs{K}_stepsize{alpha}.csv`` under LOGS (the files
``main.py --train=False`` writes: a header ``update0..updateN``, then rows of
means, standard deviations and 95% confidence half-widths over the test tasks)
and prints Markdown tables: accuracy (classification) and MSE (sinusoid), each
row with the paper's number, the test column it reports and the run's length.

Which experiment a CSV belongs to: the record ``<stem>.reproduce.json`` that
``reproduce/run.py`` writes beside it (experiment, full/budget, the commands,
the iterations trained, the checkpoint tested), or else the experiment of
:mod:`maml_tf.paper.experiments` whose experiment folder name and CSV name match
(and whose log group matches, where two do).

Run length ("full" or "budget"): the record's variant; without a record, the
iterations of the newest checkpoint ``model<itr>`` in the run's folder (itr + 1
iterations done) against the paper's length.  The tested checkpoint is the
record's, or else marked as assumed (the newest one, what ``--test_iter=-1`` loads).
"""
import argparse
import csv
import dataclasses
import glob
import json
import os
import re
import sys
from typing import List, Optional

import numpy as np

CSV_GLOB = "test_ubs*_stepsize*.csv"
_CSV_RE = re.compile(r"^test_ubs(\d+)_stepsize(.+)\.csv$")
_MODEL_RE = re.compile(r"^model(\d+)\.index$")
MANIFEST_SUFFIX = ".reproduce.json"


class ResultsError(ValueError):
    """A bad results folder or file; the message names it."""


@dataclasses.dataclass
class TestCSV:
    path: str
    means: np.ndarray
    stds: np.ndarray
    ci95: np.ndarray

    @property
    def num_steps(self):
        return len(self.means) - 1


def read_test_csv(path):
    """The three rows of a test CSV as a :class:`TestCSV`."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError as e:
        raise ResultsError(f"cannot read {path}: {e.strerror}") from None
    if len(rows) != 4 or rows[0] != [f"update{i}" for i in range(len(rows[0]))]:
        raise ResultsError(f"{path} is not a test CSV (header update0..updateN, then 3 rows: means, stds, ci95)")
    try:
        vals = [np.array([float(v) for v in r]) for r in rows[1:]]
    except ValueError:
        raise ResultsError(f"{path} has a value that is not a number") from None
    if any(len(v) != len(rows[0]) for v in vals):
        raise ResultsError(f"{path}: rows do not have {len(rows[0])} values")
    return TestCSV(path, *vals)


def find_test_csvs(logdir):
    """Every test CSV under ``logdir``, sorted."""
    return sorted(p for p in glob.glob(os.path.join(logdir, "**", CSV_GLOB), recursive=True)
                  if _CSV_RE.match(os.path.basename(p)))


def manifest_path(csv_path):
    return csv_path[:-len(".csv")] + MANIFEST_SUFFIX


def read_manifest(csv_path):
    p = manifest_path(csv_path)
    if not os.path.exists(p):
        return None
    try:
        with open(p) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_manifest(csv_path, record):
    p = manifest_path(csv_path)
    tmp = p + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(tmp, p)
    return p


def checkpoint_iterations(exp_dir):
    """Sorted iterations ``itr`` of the ``model<itr>`` checkpoints in ``exp_dir``."""
    try:
        names = os.listdir(exp_dir)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(_MODEL_RE.match, names) if m)


def indexed_checkpoint(exp_dir):
    """The iteration the ``checkpoint`` state file names (whether or not its files are
    there), or None."""
    try:
        with open(os.path.join(exp_dir, "checkpoint")) as f:
            m = re.search(r'^model_checkpoint_path:\s*"(?:.*[/\\])?model(\d+)"', f.read(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def latest_checkpoint_iteration(exp_dir):
    """The newest checkpoint's iteration, as main.py --train=False picks it (the
    ``checkpoint`` state file's entry when present, else the highest), or None."""
    itr = indexed_checkpoint(exp_dir)
    if itr is not None and os.path.exists(os.path.join(exp_dir, f"model{itr}.index")):
        return itr
    its = checkpoint_iterations(exp_dir)
    return its[-1] if its else None


# ------------------------------------------------------------------------------ matching
def _registry():
    from maml_tf.paper import experiments
    out = []
    for e in experiments.EXPERIMENTS:
        cfg = e.config(test=True)
        out.append((e, cfg.exp_string, cfg.test_csv_stem))
    return out


def match_experiment(csv_path, logdir, registry=None):
    """The Experiment a test CSV belongs to, or None."""
    from maml_tf.paper import experiments
    record = read_manifest(csv_path)
    if record and record.get("experiment") in experiments.BY_NAME:
        return experiments.BY_NAME[record["experiment"]]
    registry = _registry() if registry is None else registry
    exp_dir = os.path.dirname(os.path.abspath(csv_path))
    stem = os.path.basename(csv_path)[:-len(".csv")]
    hits = [e for e, name, s in registry if name == os.path.basename(exp_dir) and s == stem]
    if len(hits) > 1:
        group_path = os.path.dirname(exp_dir).replace("\\", "/")
        hits = [e for e in hits if group_path.endswith("/" + e.group) or group_path == e.group]
    return hits[0] if len(hits) == 1 else None


@dataclasses.dataclass
class ResultRow:
    csv: TestCSV
    experiment: Optional[object]
    variant: str          # 'full', 'budget' or '?'
    iterations: Optional[int]
    tested: str
    record: Optional[dict]


def _stderr(msg):
    print(f"warning: {msg}", file=sys.stderr)


def collect(logdir, warn=_stderr):
    """A ResultRow per test CSV under ``logdir``, in the registry's order (unmatched last);
    unreadable CSVs are reported through ``warn`` and skipped."""
    if not os.path.isdir(logdir):
        raise ResultsError(f"--logdir={logdir} is not a folder")
    from maml_tf.paper import experiments
    registry = _registry()
    order = {e.name: i for i, e in enumerate(experiments.EXPERIMENTS)}
    rows = []
    for path in find_test_csvs(logdir):
        try:
            data = read_test_csv(path)
        except ResultsError as e:
            warn(f"skipped: {e}")
            continue
        exp = match_experiment(path, logdir, registry)
        record = read_manifest(path)
        exp_dir = os.path.dirname(path)
        latest = latest_checkpoint_iteration(exp_dir)
        iterations = record.get("iterations") if record else None
        if iterations is None and latest is not None:
            iterations = latest + 1
        if record and record.get("variant") in ("full", "budget"):
            variant = record["variant"]
        elif exp is not None and iterations is not None:
            variant = "full" if iterations >= exp.full_iterations else "budget"
        else:
            variant = "?"
        if record and record.get("tested_checkpoint"):
            tested = record["tested_checkpoint"]
        elif latest is not None:
            tested = f"model{latest} (assumed: newest)"
        else:
            tested = "?"
        rows.append(ResultRow(data, exp, variant, iterations, tested, record))
    rows.sort(key=lambda r: (order.get(r.experiment.name, len(order)) if r.experiment else len(order),
                             r.variant != "full", r.csv.path))
    return rows


# ------------------------------------------------------------------------------ formatting
def _pct(mean, ci, digits=2):
    return f"{100 * mean:.{digits}f} ± {100 * ci:.{digits}f}"


def _mse(mean, ci):
    return f"{mean:.3f} ± {ci:.3f}"


def _length(row):
    full = row.experiment.full_iterations if row.experiment else None
    its = f"{row.iterations:,}" if row.iterations is not None else "?"
    trains = bool(row.experiment and row.experiment.trains)
    if row.variant == "full" and trains and row.iterations is not None and row.iterations < full:
        text = f"**short of full length** ({its} of {full:,} itr)"  # a long run stopped part way
    elif row.variant == "full":
        text = f"full ({its} itr)"
    elif row.variant == "budget":
        text = f"**budget** ({its}" + (f" of {full:,}" if full else "") + " itr)"
    else:
        text = f"? ({its} itr)"
    tasks = (row.record or {}).get("num_test_tasks")
    if tasks is not None and tasks != 600:
        text += f", {tasks} test tasks (not 600)"
    return text


def _where(row, logdir):
    try:
        return os.path.relpath(row.csv.path, logdir)
    except ValueError:
        return row.csv.path


def _cell(values, col, fmt):
    if col >= len(values.means):
        return "n/a"
    return fmt(values.means[col], values.ci95[col])


def markdown(rows: List[ResultRow], logdir="."):
    """The Markdown tables (a string)."""
    out = []
    cls = [r for r in rows if r.experiment is not None and r.experiment.metric == "accuracy"]
    reg = [r for r in rows if r.experiment is not None and r.experiment.metric == "mse"]
    other = [r for r in rows if r.experiment is None]
    if cls:
        out.append("### Few-shot classification: accuracy (%), mean ± 95% confidence interval over the test tasks\n")
        out.append("| Experiment | Test column | Ours | Paper (Table 1) | Length | Tested | CSV |")
        out.append("|---|---|---|---|---|---|---|")
        for r in cls:
            e = r.experiment
            col = e.columns[0]
            paper = _pct(*e.paper[col], digits=e.paper_digits) if e.paper else "—"
            out.append(f"| {e.title} | {col} steps | {_cell(r.csv, col, _pct)} | {paper} | "
                       f"{_length(r)} | {r.tested} | `{_where(r, logdir)}` |")
        out.append("")
    if reg:
        out.append("### Sinusoid regression: mean squared error, mean ± 95% confidence interval over the test tasks\n")
        out.append("| Experiment | 0 steps | 1 step | 5 steps | 10 steps | Paper | Length | Tested | CSV |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in reg:
            e = r.experiment
            cells = " | ".join(_cell(r.csv, c, _mse) for c in (0, 1, 5, 10))
            out.append(f"| {e.title} | {cells} | {e.paper_ref or '—'} | {_length(r)} | "
                       f"{r.tested} | `{_where(r, logdir)}` |")
        out.append("")
        out.append("Column 0 is the pre-update loss on the K support points (the original's update0); "
                   "column j the loss on the query points after j inner steps.\n")
    if other:
        out.append("### Other test results (not one of the paper's experiments)\n")
        out.append("| CSV | update0 | update1 | last column | Length | Tested |")
        out.append("|---|---|---|---|---|---|")
        for r in other:
            last = r.csv.num_steps
            out.append(f"| `{_where(r, logdir)}` | {_cell(r.csv, 0, _raw)} | {_cell(r.csv, 1, _raw)} | "
                       f"update{last}: {_cell(r.csv, last, _raw)} | {_length(r)} | {r.tested} |")
        out.append("")
    if not rows:
        out.append(f"No test results (test_ubs*_stepsize*.csv) under {logdir}: run main.py with --train=False, "
                   f"or python reproduce/run.py --experiment NAME.")
    return "\n".join(out).rstrip() + "\n"


def _raw(mean, ci):
    return f"{mean:.4g} ± {ci:.2g}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m maml_tf.paper.results",
        description="Markdown tables of the test CSVs under a log folder beside the paper's numbers.")
    parser.add_argument("--logdir", required=True, help="folder searched (recursively) for test_ubs*_stepsize*.csv")
    parser.add_argument("--out", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    try:
        text = markdown(collect(args.logdir), args.logdir)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
