#!/usr/bin/env python
"""Budget-length comparisons under one protocol: the meta-gradient engines, and the MAML family.

    python reproduce/variants.py --table engines [--iterations 1000] [--logroot logs/variants]
    python reproduce/variants.py --table methods [--iterations 1000 --iterations20 300]
    python reproduce/variants.py --table methods --summary          # the table from what exists
    python reproduce/variants.py --table own --cost 10 [--cores 0 1]   # each row's seconds per iteration

Every row trains with ``main.py`` on the same data, seed (0) and number of meta-training
iterations, then tests with the original's protocol (``--train=False --test_set=True``:
600 fixed meta-test tasks, meta-batch 1, the paper's column: 3 inner steps for Omniglot
5-way, 5 for 20-way), and the table prints the accuracy with its 95% interval beside
the published number of the row's own paper (full length: these are budget runs,
marked as such).  Runs already trained or tested are not repeated.

``engines``: Omniglot 5-way 1-shot, MAML's usage line with each ``--meta_gradient``
(and DropGrad).  ``methods``: Omniglot 5-way and 20-way 1-shot with each ``--method``
and MAML++ (every component on, 5 inner steps of 0.1), MAML's settings otherwise.
``own``: each method (and iMAML, DropGrad) at its own paper's settings, from
docs/methods.md, with its schedules scaled to the budget.  ``precision``: MAML with
``--precision=bfloat16`` beside float32, seeds 0 and 1 each.

``--cost N``: instead of the table, what each row costs here: every row trains ``N``
iterations with its own flags (``main.py --step_times``; its schedules scaled to ``N``,
so a row's multi-step loss or first-order phase covers the same share of them), one
row per core at a time, each ``main.py`` pinned to one of ``--cores`` (``taskset``), with
the static default path (``MAML_TF_AUTOTUNE=0``: no timing trials, the same path for every
row); the table gives the median seconds of an iteration from the fifth on (tracing),
the ratio to the table's first row on the same configuration, and the training time
the budget would take on one core.  A benchmark: run it with nothing else on the cores.
"""
import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from maml_tf.paper.experiments import python_main  # noqa: E402
from maml_tf.run.config import config_from_flags  # noqa: E402

BASE = {
    "5w1s": dict(datasource="omniglot", meta_batch_size=32, update_batch_size=1, update_lr=0.4,
                 num_updates=1, num_classes=5),
    "20w1s": dict(datasource="omniglot", meta_batch_size=16, update_batch_size=1, num_classes=20,
                  update_lr=0.1, num_updates=5),
}
# (name, {config: extra flags}, {config: (paper mean %, 95% interval or None, source)})
ROWS = {
    "engines": [
        ("MAML, nested (the original's)", {"5w1s": {}}, {"5w1s": (98.7, 0.4, "Finn et al. 2017")}),
        ("checkpointed (exact, bounded memory)", {"5w1s": dict(meta_gradient="checkpointed",
                                                               _folder="checkpointed")},
         {"5w1s": (98.7, 0.4, "= MAML")}),
        ("truncated, k = 0 (first order)", {"5w1s": dict(meta_gradient="truncated", truncate_steps=0)},
         {"5w1s": (98.3, 0.5, "first-order MAML, Finn et al.")}),
        ("implicit (iMAML, lambda 2.5, 5 CG steps)", {"5w1s": dict(meta_gradient="implicit", imaml_lambda=2.5,
                                                                    cg_steps=5)},
         {"5w1s": (99.16, 0.35, "iMAML, Rajeswaran et al. 2019")}),
        ("es (ES-MAML, 8 pairs, sigma 0.01)", {"5w1s": dict(meta_gradient="es", es_samples=8, es_sigma=0.01)},
         {"5w1s": None}),
        ("nested + DropGrad (Bernoulli 0.1)", {"5w1s": dict(dropgrad=0.1)}, {"5w1s": None}),
    ],
    "methods": [
        ("MAML", {"5w1s": {}, "20w1s": {}},
         {"5w1s": (98.7, 0.4, "Finn et al. 2017"), "20w1s": (95.8, 0.3, "Finn et al. 2017")}),
        ("Meta-SGD", {"5w1s": dict(method="metasgd"), "20w1s": dict(method="metasgd")},
         {"5w1s": (99.53, 0.26, "Li et al. 2017"), "20w1s": (95.93, 0.38, "Li et al. 2017")}),
        ("ANIL", {"5w1s": dict(method="anil"), "20w1s": dict(method="anil")},
         {"5w1s": None, "20w1s": None}),
        ("Reptile (Adam inner, 5 steps of 0.001, outer 1.0 annealed, meta-batch 5)",
         {c: dict(method="reptile", reptile_inner="adam", update_lr=0.001, num_updates=5, meta_lr=1.0,
                  meta_batch_size=5) for c in ("5w1s", "20w1s")},
         {"5w1s": (97.68, 0.04, "Nichol et al. 2018, transductive"),
          "20w1s": (89.43, 0.14, "Nichol et al. 2018, transductive")}),
        ("MAML++ (LSLR, MSL, BNWB, DA, CA; 5 steps of 0.1)",
         {c: dict(lslr=True, bnwb=True, cosine_annealing=True, num_updates=5, update_lr=0.1,
                  msl_iterations="10%", da_iterations="33%", _column=5) for c in ("5w1s", "20w1s")},
         {"5w1s": (99.47, None, "Antoniou et al. 2019"), "20w1s": (97.65, 0.05, "Antoniou et al. 2019")}),
    ],
    # Each method at its own paper's settings (docs/methods.md, "Each method with its own paper's
    # settings", for every value's source), its schedules scaled to the budget.  Step sizes of
    # the mean-loss codes (MAML++, iMAML) are divided by N, iMAML's lambda multiplied by N: this
    # loss is the original's, N times the mean cross-entropy.
    "own": [
        ("MAML (the original's usage lines)", {"5w1s": {}, "20w1s": {}},
         {"5w1s": (98.7, 0.4, "Finn et al. 2017"), "20w1s": (95.8, 0.3, "Finn et al. 2017")}),
        ("Meta-SGD (one step, trained and tested)",
         {"5w1s": dict(method="metasgd", _column=1),
          "20w1s": dict(method="metasgd", num_updates=1, _column=1)},
         {"5w1s": (99.53, 0.26, "Li et al. 2017"), "20w1s": (95.93, 0.38, "Li et al. 2017")}),
        ("Reptile (Adam inner, 10 training shots, 1 query, meta-batch 5, outer 1.0 annealed)",
         {"5w1s": dict(method="reptile", reptile_inner="adam", update_batch_size=10, num_query=1,
                       update_lr=0.001, num_updates=5, meta_lr=1.0, meta_batch_size=5,
                       _test=dict(update_batch_size=1, train_update_batch_size=10, num_query=1)),
          "20w1s": dict(method="reptile", reptile_inner="adam", update_batch_size=10, num_query=1,
                        update_lr=0.0005, num_updates=10, meta_lr=1.0, meta_batch_size=5,
                        _test=dict(update_batch_size=1, train_update_batch_size=10, num_query=1))},
         {"5w1s": (97.68, 0.04, "Nichol et al. 2018, transductive, 50 test steps"),
          "20w1s": (89.43, 0.14, "Nichol et al. 2018, transductive, 50 test steps")}),
        ("MAML++ (LSLR, MSL 10%, BNWB, CA; 5 steps, meta-batch 8, max-pool)",
         {c: dict(lslr=True, bnwb=True, cosine_annealing=True, min_meta_lr=1e-5, num_updates=5,
                  update_lr=lr, meta_batch_size=8, max_pool=True, msl_iterations="10%", _column=5)
          for c, lr in (("5w1s", 0.1 / 5), ("20w1s", 0.1 / 20))},
         {"5w1s": (99.47, None, "Antoniou et al. 2019"), "20w1s": (97.65, 0.05, "Antoniou et al. 2019")}),
        ("iMAML (16 / 25 steps, lambda 2 per mean loss, 5 CG steps, the code's damped system)",
         {"5w1s": dict(meta_gradient="implicit", num_updates=16, update_lr=0.1 / 5, imaml_lambda=2.0 * 5,
                       cg_steps=5, cg_damping=1.0, lam_damping=10.0 * 5, _column=16),
          "20w1s": dict(meta_gradient="implicit", num_updates=25, update_lr=0.1 / 20, imaml_lambda=2.0 * 20,
                        cg_steps=5, cg_damping=1.0, lam_damping=10.0 * 20, meta_batch_size=32, _column=25)},
         {"5w1s": (99.16, 0.35, "iMAML-GD, Rajeswaran et al. 2019"),
          "20w1s": (94.46, 0.42, "iMAML-GD, Rajeswaran et al. 2019")}),
        ("DropGrad (Bernoulli 0.1 on first-order MAML)",
         {c: dict(stop_grad=True, dropgrad=0.1) for c in ("5w1s", "20w1s")}, {"5w1s": None, "20w1s": None}),
        # ES-MAML's defaults (google-research es_maml config.py); each iteration costs ~150 / 8
        # times the 8-pair row of the engines table, so it runs a tenth of the budget.
        ("ES-MAML (its defaults: 150 antithetic pairs, sigma 0.1; a tenth of the iterations)",
         {"5w1s": dict(meta_gradient="es", es_samples=150, es_sigma=0.1, _length="10%")}, {"5w1s": None}),
    ],
    # --precision=bfloat16 against float32, MAML's usage lines, two seeds each (docs/speed.md,
    # "bfloat16"): whether the rounded meta-gradient still trains as well.
    "precision": [
        (f"MAML, {precision}, seed {seed}",
         {c: dict(({} if precision == "float32" else dict(precision=precision)),
                  **({} if seed == 0 else dict(seed=seed, _folder=f"seed{seed}"))) for c in ("5w1s", "20w1s")},
         {"5w1s": (98.7, 0.4, "Finn et al. 2017, float32"), "20w1s": (95.8, 0.3, "Finn et al. 2017, float32")})
        for precision in ("float32", "bfloat16") for seed in (0, 1)
    ],
}


def flags_for(config, extra, iterations, logroot, data_dir):
    """main.py's flags for a row.  ``_folder``: a log folder of the row's own, for a variant
    whose run folder is MAML's (checkpointed computes the same numbers, so main.py gives it
    the same name: the table must train it separately)."""
    extra = dict(extra)
    folder = config + ("-" + extra.pop("_folder") if "_folder" in extra else "")
    extra.pop("_column", None)
    extra.pop("_test", None)
    extra.pop("_length", None)
    values = dict(BASE[config], metatrain_iterations=iterations, logdir=os.path.join(logroot, folder),
                  data_dir=data_dir, seed=0)
    for k, v in extra.items():  # fractions of the run's length (MAML++'s schedules)
        values[k] = _percent_of(v, iterations) if isinstance(v, str) and v.endswith("%") else v
    return values


def row_iterations(extra, budget):
    """The row's meta-training iterations: the budget, or ``_length`` of it ("10%": a row
    whose iteration costs many times the others')."""
    length = extra.get("_length")
    return budget if length is None else max(1, _percent_of(length, budget))


def _percent_of(text, total):
    """ "10%" of ``total``, rounded down."""
    return int(total * float(text[:-1]) / 100)


def _cmd(values, *more):
    return [*python_main(), *[f"--{k}={v}" for k, v in values.items()], *more]


def test_values(values, extra):
    """The test command's flags: the training flags, --train=False --test_set=True, and the
    row's own test-time changes (``_test``: Reptile trains on 10 shots and tests on 1)."""
    return {**values, "train": False, "test_set": True, **extra.get("_test", {})}


def train_and_test(train_flags, test_flags, csv_path, log, record=".variant.json"):
    """Train with main.py, then test, unless ``csv_path`` (the test's CSV) exists already; each
    command's output is appended to ``log``, the flags and seconds go beside the CSV (``record``).
    Returns ``csv_path``, or None if a command failed."""
    if os.path.exists(csv_path):
        return csv_path
    t0 = time.time()
    for flags in (train_flags, test_flags):
        cmd = _cmd(flags)
        print("$ " + " ".join(cmd), flush=True)
        with open(log, "a") as f:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        if r.returncode != 0:
            print(f"failed (exit {r.returncode}): see {log}", flush=True)
            return None
    with open(csv_path.replace(".csv", record), "w") as f:
        json.dump({"flags": train_flags, "seconds": round(time.time() - t0, 1)}, f)
    return csv_path


def run_row(config, extra, iterations, logroot, data_dir, log):
    values = flags_for(config, extra, iterations, logroot, data_dir)
    cfg = config_from_flags(test_values(values, extra))
    csv_path = cfg.test_csv_path
    return cfg, train_and_test(values, test_values(values, extra), csv_path, log)


def read(cfg, csv_path, column=None):
    """(mean %, 95% interval %, column): the paper's column (3 inner steps for 5-way, 5 for
    20-way), or the row's own (``_column``: a method whose paper tests with the number of
    steps it trained per-step parameters for, as MAML++'s 5)."""
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    col = column or cfg.reported_steps[-1]
    return 100 * float(rows[1][col]), 100 * float(rows[3][col]), col


def table(name, iterations, logroot, data_dir, run, configs=tuple(BASE)):
    log = os.path.join(logroot, f"{name}.log")
    os.makedirs(logroot, exist_ok=True)
    what = {"engines": "engine", "methods": "method", "own": "method, its own settings",
            "precision": "precision"}.get(name, name)
    lines = [f"| {what} | config | meta-test accuracy (budget: {{it}} iterations) | paper (full length) |",
             "|---|---|---|---|"]
    for row, extras, papers in ROWS[name]:
        for config, extra in extras.items():
            its = row_iterations(extra, iterations[config])
            values = flags_for(config, extra, its, logroot, data_dir)
            cfg = config_from_flags(test_values(values, extra))
            csv_path = cfg.test_csv_path
            if run and config in configs:
                cfg, csv_path = run_row(config, extra, its, logroot, data_dir, log)
            if csv_path is None:
                ours = f"failed (see {log})"
            elif os.path.exists(csv_path):
                mean, ci, col = read(cfg, csv_path, extra.get("_column"))
                ours = f"{mean:.1f} +- {ci:.1f}% ({its} it., {col} steps)"
            else:
                ours = "not run"
            paper = papers.get(config)
            ptxt = "—" if paper is None else (f"{paper[0]}" + (f" +- {paper[1]}" if paper[1] else "")
                                              + f"% ({paper[2]})")
            lines.append(f"| {row} | Omniglot {config.replace('w', '-way ').replace('1s', '1-shot')} | {ours} | {ptxt} |")
    used = {c for _, extras, _ in ROWS[name] for c in extras}
    lines[0] = lines[0].replace("{it}", "/".join(str(iterations[c]) for c in sorted(used)))
    return "\n".join(lines)


def cost(name, iterations, budget, logroot, data_dir, cores):
    """Each row's seconds per iteration (see the module docstring): the markdown table."""
    jobs, logroot = [], os.path.join(logroot, time.strftime("%Y%m%d-%H%M%S"))  # a fresh folder each time
    for index, (row, extras, _) in enumerate(ROWS[name]):
        for config, extra in extras.items():
            values = flags_for(config, extra, iterations, logroot, data_dir)
            values["logdir"] = os.path.join(logroot, f"{len(jobs):02d}-{config}")
            values["step_times"] = values["logdir"] + ".npy"
            jobs.append(dict(row=row, first=index == 0, config=config, values=values, ok=False,
                             budget=row_iterations(extra, budget[config])))
    log = os.path.join(logroot, f"{name}-cost.log")
    os.makedirs(logroot, exist_ok=True)
    env = dict(os.environ, MAML_TF_AUTOTUNE="0")
    todo, lock = list(jobs), threading.Lock()

    def lane(core):
        while True:
            with lock:
                if not todo:
                    return
                job = todo.pop(0)
            cmd = ["taskset", "-c", str(core), *_cmd(job["values"])]  # pinned from its start
            print(f"[core {core}] $ " + " ".join(cmd), flush=True)
            t0 = time.time()
            with lock, open(log, "a") as f:
                f.write(f"[core {core}] $ {' '.join(cmd)}\n")
            try:
                r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                   text=True)
                output, code = r.stdout, r.returncode
            except OSError as e:
                output, code = f"{e}\n", None
            with lock, open(log, "a") as f:
                f.write(output)
            job["seconds"] = time.time() - t0
            job["ok"] = code == 0 and os.path.exists(job["values"]["step_times"])
            if not job["ok"]:
                print(f"[core {core}] failed (exit {code}): see {log}", flush=True)

    threads = [threading.Thread(target=lane, args=(c,)) for c in cores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    import numpy as np
    from maml_tf.run.autotune import cpu_description
    cpu = cpu_description()
    lines = [f"| {name} row | config | s / iteration, one core | x the first row | budget iterations | "
             "training at the budget, one core |", "|---|---|---|---|---|---|"]
    for job in jobs:
        if job["ok"]:
            # main.py's step times are each iteration's end: diff k is iteration k + 1's time.
            # Iterations 1-3 trace (and iteration 0 has no start): the median from the fifth on.
            ends = np.load(job["values"]["step_times"])[:, 1]
            job["per"] = statistics.median(np.diff(ends)[3:])
    base = {job["config"]: job.get("per") for job in jobs if job["first"]}
    records = []
    for job in jobs:
        if not job["ok"]:
            lines.append(f"| {job['row']} | {job['config']} | failed (see {log}) | | | |")
            continue
        per = job["per"]
        ratio = f"{per / base[job['config']]:.2f}" if base.get(job["config"]) else "n/a (the first row failed)"
        hours = per * job["budget"] / 3600
        took = f"{hours:.1f} h" if hours >= 1 else f"{hours * 60:.0f} min"
        lines.append(f"| {job['row']} | {job['config']} | {per:.3g} s | {ratio} | {job['budget']} | {took} |")
        records.append({"row": job["row"], "config": job["config"], "sec_per_iter_median": per,
                        "iterations": iterations, "budget": job["budget"], "flags": job["values"],
                        "wall_s": round(job["seconds"], 1), "cpu": cpu, "static_path": True})
    with open(os.path.join(logroot, f"{name}-cost.jsonl"), "a") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    lines.append(f"\nCPU: {cpu['model']} [{cpu['id']}] ({', '.join(cpu['extensions'])}), one core per row")
    return "\n".join(lines)


def main():
    from maml_tf.runtime import import_tensorflow
    import_tensorflow()  # without TensorFlow's start-up lines (the flag parsing below loads it)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", choices=sorted(ROWS), required=True)
    p.add_argument("--iterations", type=int, default=1000, help="meta-training iterations (5-way)")
    p.add_argument("--iterations20", type=int, default=300, help="meta-training iterations (20-way)")
    p.add_argument("--logroot", default="logs/variants")
    p.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    p.add_argument("--summary", action="store_true", help="only print the table of what exists")
    p.add_argument("--configs", nargs="+", choices=sorted(BASE), default=sorted(BASE),
                   help="train and test these configurations only (the others: what exists)")
    p.add_argument("--cost", type=int, default=0, metavar="N",
                   help="time N iterations of every row instead (each row's seconds per iteration)")
    p.add_argument("--cores", type=int, nargs="+", default=None,
                   help="--cost: the cores to run rows on, one row per core at a time (default: every core)")
    args = p.parse_args()
    iterations = {"5w1s": args.iterations, "20w1s": args.iterations20}
    logroot = os.path.abspath(os.path.join(args.logroot, args.table))
    if args.cost:
        if args.cost < 6:
            p.error(f"--cost {args.cost}: too few iterations to time (iterations 1-3 trace and iteration 0 "
                    "has no start, so the median is over iteration 4 on); give 6 or more")
        import shutil
        if shutil.which("taskset") is None:
            p.error("--cost pins each row to a core with taskset (Linux, util-linux), which is not on PATH: "
                    "install util-linux")
        cores = args.cores or sorted(os.sched_getaffinity(0))
        print(cost(args.table, args.cost, iterations, logroot + "-cost", args.data_dir, cores))
        return
    print(table(args.table, iterations, logroot, args.data_dir, run=not args.summary,
                configs=args.configs))


if __name__ == "__main__":
    main()
