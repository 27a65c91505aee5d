#!/usr/bin/env python
"""Sinusoid regression with MAML, Meta-SGD and Reptile, each seed its own run, under one protocol.

    python reproduce/sine_methods.py [--seeds 0 1] [--shots 5 10 20] [--rows maml metasgd reptile]
    python reproduce/sine_methods.py --summary          # the table from what exists

``maml`` and ``metasgd``: the Meta-SGD paper's regression comparison (Li et al. 2017,
its few-shot regression experiment): for K = 5, 10, 20 a model is meta-trained on K-shot tasks and tested on
K-shot tasks after one adaptation step, MAML with a fixed step of 0.01 and Meta-SGD with a
learned step per weight entry (here started at 0.01).  The protocol is MAML's sinusoid one
(``main.py``'s: amplitude in [0.1, 5], phase in [0, pi], x in [-5, 5], meta-batch 25,
70,000 iterations, Adam 1e-3; 600 test tasks of K support and K query points), the same
for both methods, so the two can be compared with each other; the Meta-SGD paper's own
meta-batch, length and initial step sizes could not be checked against its text
(docs/methods.md).

``reptile``: the setting of Reptile's sine-wave demonstration (Nichol et al. 2018,
Section 4 and Figure 1; the code is John Schulman's gist ``reptile-sinewaves-demo.py``,
linked from the OpenAI blog): 30,000 outer iterations of one task each, plain SGD inner
steps of 0.02 on 10 points, outer step 0.1 annealed linearly to 0.  The gist makes 5 inner
steps per task (its 50 points in mini-batches of 10); here that is 5 full-batch steps on
the 10 support points.  Tested with 10 steps (the gist plots 32), column ``update10``.

Runs already trained or tested are not repeated; each run's log is under the log root.
"""
import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from maml_tf.paper.results import read_test_csv  # noqa: E402
from maml_tf.run.config import config_from_flags  # noqa: E402
from variants import train_and_test  # noqa: E402  (reproduce/, this script's folder)

SINE = dict(datasource="sinusoid", norm="None")
# row: (label, flags for K shots, test column, paper's numbers by K: (mean, 95% interval, source))
ROWS = {
    "maml": ("MAML (1 step of 0.01)",
             lambda k: dict(SINE, update_batch_size=k, update_lr=0.01, num_updates=1,
                            metatrain_iterations=70000),
             1, {5: (1.13, 0.18, "Li et al. 2017, Table 1, as a secondary copy quotes it")}),
    "metasgd": ("Meta-SGD (1 learned step)",
                lambda k: dict(SINE, method="metasgd", update_batch_size=k, update_lr=0.01,
                               num_updates=1, metatrain_iterations=70000),
                1, {5: (0.90, 0.16, "Li et al. 2017, Table 1, as a secondary copy quotes it")}),
    "reptile": ("Reptile (the sine demo's SGD setting)",
                lambda k: dict(SINE, method="reptile", reptile_inner="sgd", update_batch_size=k,
                               update_lr=0.02, num_updates=5, meta_lr=0.1, meta_batch_size=1,
                               metatrain_iterations=30000),
                10, {}),
}
REPTILE_SHOTS = (10,)  # the demonstration's 10 points


def shots_of(row, shots):
    """The K a row runs at: the asked ones, Reptile's demonstration only its own 10 points."""
    return REPTILE_SHOTS if row == "reptile" else tuple(shots)


def run_flags(row, k, seed, logroot, iterations=None):
    """main.py's flags for one run (``iterations``: another length than the setting's)."""
    values = {**ROWS[row][1](k), "seed": seed,
              "logdir": os.path.join(logroot, f"{row}_k{k}_seed{seed}")}
    if iterations:
        values["metatrain_iterations"] = iterations
    return values


def csv_path(values):
    cfg = config_from_flags({**values, "train": False})
    return cfg.test_csv_path


def run(values, log):
    """Train, then test; returns the test CSV's path, or None if a command failed."""
    return train_and_test(values, {**values, "train": False}, csv_path(values), log, ".sine_methods.json")


def cells(rows, shots, seeds, logroot, train, iterations=None):
    """{(row, k): [(seed, mse, ci95), ...]} for every run that has a test CSV."""
    out = {}
    log = os.path.join(logroot, "sine_methods.log")
    for row in rows:
        for k in shots_of(row, shots):
            for seed in seeds:
                values = run_flags(row, k, seed, logroot, iterations)
                path = run(values, log) if train else csv_path(values)
                if path and os.path.exists(path):
                    t = read_test_csv(path)
                    col = ROWS[row][2]
                    out.setdefault((row, k), []).append((seed, float(t.means[col]), float(t.ci95[col])))
    return out


def table(results, rows, shots):
    lines = ["| method | K | MSE per seed (600 tasks, 95% interval) | mean over seeds | paper |",
             "|---|---|---|---|---|"]
    for row in rows:
        label, _, col, paper = ROWS[row]
        for k in shots_of(row, shots):
            got = results.get((row, k), [])
            per = ", ".join(f"seed {s}: {m:.3f} +- {c:.3f}" for s, m, c in got) or "not run"
            mean = f"{np.mean([m for _, m, _ in got]):.3f}" if got else "—"
            p = paper.get(k)
            ptxt = f"{p[0]:.2f} +- {p[1]:.2f} ({p[2]})" if p else "—"
            lines.append(f"| {label} | {k} | {per} (after {col} step{'s' if col > 1 else ''}) | {mean} | {ptxt} |")
    return "\n".join(lines)


def main():
    from maml_tf.runtime import import_tensorflow
    import_tensorflow()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", nargs="+", choices=sorted(ROWS), default=["maml", "metasgd", "reptile"])
    p.add_argument("--shots", nargs="+", type=int, default=[5, 10, 20])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--logroot", default="logs/sine_methods")
    p.add_argument("--iterations", type=int, default=None,
                   help="meta-training iterations of every run (default: each setting's own)")
    p.add_argument("--summary", action="store_true", help="only print the table of what exists")
    args = p.parse_args()
    logroot = os.path.abspath(args.logroot)
    os.makedirs(logroot, exist_ok=True)
    results = cells(args.rows, args.shots, args.seeds, logroot, train=not args.summary,
                    iterations=args.iterations)
    print(table(results, args.rows, args.shots))


if __name__ == "__main__":
    main()
