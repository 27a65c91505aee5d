#!/usr/bin/env python
"""Seconds per meta-iteration and peak memory against the number of inner steps, per engine.

    python bench/inner_steps.py --config mini5w1s --engine checkpointed --steps 20 [--first_order]
    python bench/inner_steps.py --config mini5w1s --sweep [--steps_list 1 5 10 20 50]
                                [--engines nested checkpointed implicit] [--max_rss_gb 20]
                                [--out docs/inner_steps] [--reuse earlier.jsonl]

One run: the training step of ``config`` (bench/meta_step.py's configurations, their
data drawn as there) with ``--num_updates=STEPS`` and ``--meta_gradient=ENGINE``, timed as
bench/meta_step.py times it (warm-up calls first), printing one JSON line with the speed
anchors' keys (``sec_per_iter_median``, ``peak_rss_mb``, ...) plus ``engine``, ``steps``
and the CPU.  ``--sweep`` runs every (engine, steps) as its own process (so each peak is
its own), plus first order for reference, writes the JSON lines, a Markdown table and a
PNG plot (matplotlib) to ``--out``; a run whose memory, extrapolated from the smaller
step counts of its engine, would exceed ``--max_rss_gb`` is not started and the table
says so.
"""
import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from meta_step import CONFIGS, make_batch, set_threads  # noqa: E402


def run_one(args):
    set_threads(args.threads, args.config)
    import numpy as np
    import tensorflow as tf
    sys.path.insert(0, str(REPO))
    from maml_tf.run.autotune import cpu_description
    from maml_tf.run.config import Config
    from maml_tf.run.model import build_model
    fields = dict(CONFIGS[args.config], stop_grad=args.first_order, seed=0, num_updates=args.steps,
                  meta_gradient=args.engine)
    if args.engine == "implicit":
        fields.update(imaml_lambda=args.imaml_lambda, cg_steps=args.cg_steps)
    cfg = Config(**fields).validate()
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    model.spec.init(rng=rng)
    batch = [tf.constant(a) for a in make_batch(args.config, cfg, rng)]
    times = []
    t0 = time.perf_counter()
    model.metatrain_step(*batch)
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        model.metatrain_step(*batch)
    for _ in range(args.iters):
        t0 = time.perf_counter()
        m = model.metatrain_step(*batch)
        times.append(time.perf_counter() - t0)
    return {"stack": "maml-tf", "config": args.config, "engine": args.engine, "steps": args.steps,
            "first_order": args.first_order, "sec_per_iter_median": statistics.median(times),
            "sec_per_iter_min": min(times), "iters": args.iters,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "final_meta_loss": float(m["postloss"]), "first_iter_sec": first, "threads": args.threads,
            "cpu": cpu_description(), "tasks": model.task_mode}


def sweep(args):
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines_path = out / f"{args.config}.jsonl"
    runs = [(e, s, False) for e in args.engines for s in args.steps_list]
    runs += [("nested", s, True) for s in args.steps_list]  # first order, for reference
    results = []
    reuse = []
    if args.reuse:  # earlier runs' JSON lines (same machine): taken instead of running again
        with open(args.reuse) as f:
            reuse = [json.loads(l) for l in f if l.startswith("{")]
    for engine, steps, fo in runs:
        label = f"{engine}{' (first order)' if fo else ''}"
        old = next((r for r in reuse if r.get("engine") == engine and r.get("steps") == steps
                    and bool(r.get("first_order")) == fo and "sec_per_iter_median" in r), None)
        if old is not None:
            results.append(dict(old, label=label))
            print(json.dumps(results[-1]), flush=True)
            continue
        done = [r for r in results if r["label"] == label]
        if len(done) >= 2:  # extrapolate the peak linearly in the steps from the last two
            a, b = done[-2], done[-1]
            slope = (b["peak_rss_mb"] - a["peak_rss_mb"]) / max(b["steps"] - a["steps"], 1)
            guess = b["peak_rss_mb"] + slope * (steps - b["steps"])
            if guess > args.max_rss_gb * 1024:
                results.append({"label": label, "engine": engine, "steps": steps, "first_order": fo,
                                "skipped": f"~{guess / 1024:.0f} GB extrapolated > {args.max_rss_gb} GB"})
                print(json.dumps(results[-1]), flush=True)
                continue
        cmd = [sys.executable, __file__, "--config", args.config, "--engine", engine, "--steps", str(steps),
               "--threads", str(args.threads), "--iters", str(args.iters), "--warmup", str(args.warmup)]
        if fo:
            cmd.append("--first_order")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        res = next((json.loads(l) for l in reversed(proc.stdout.splitlines()) if l.startswith("{")), None)
        if res is None:
            res = {"engine": engine, "steps": steps, "first_order": fo,
                   "failed": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
        res["label"] = label
        results.append(res)
        print(json.dumps(res), flush=True)
    with open(lines_path, "w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    write_table(results, out / f"{args.config}.md", args)
    write_plot(results, out / f"{args.config}.png", args)


def write_table(results, path, args):
    labels = list(dict.fromkeys(r["label"] for r in results))
    head = "| engine | " + " | ".join(f"{s} steps" for s in args.steps_list) + " |"
    lines = [f"{args.config}, seconds per meta-iteration / peak RSS (GB):", "", head,
             "|---|" + "---|" * len(args.steps_list)]
    for label in labels:
        cells = []
        for s in args.steps_list:
            r = next((r for r in results if r["label"] == label and r["steps"] == s), None)
            if r is None:
                cells.append("")
            elif "skipped" in r:
                cells.append(f"not run ({r['skipped']})")
            elif "failed" in r:
                cells.append("failed")
            else:
                cells.append(f"{r['sec_per_iter_median']:.2f} s / {r['peak_rss_mb'] / 1024:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    cpu = next((r["cpu"] for r in results if "cpu" in r), {})
    lines += ["", f"CPU: {cpu.get('model')} ({', '.join(cpu.get('extensions', []))}), {cpu.get('cpus')} CPUs"]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def write_plot(results, path, args):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[plot]')", file=sys.stderr)
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for label in dict.fromkeys(r["label"] for r in results):
        rs = [r for r in results if r["label"] == label and "sec_per_iter_median" in r]
        if not rs:
            continue
        a1.plot([r["steps"] for r in rs], [r["peak_rss_mb"] / 1024 for r in rs], "o-", label=label)
        a2.plot([r["steps"] for r in rs], [r["sec_per_iter_median"] for r in rs], "o-", label=label)
    a1.set(xlabel="inner steps", ylabel="peak RSS (GB)", title=f"{args.config}: memory")
    a2.set(xlabel="inner steps", ylabel="seconds per meta-iteration", title=f"{args.config}: time")
    a1.legend(fontsize=8)
    for a in (a1, a2):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="mini5w1s")
    ap.add_argument("--engine", default="nested")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--imaml_lambda", type=float, default=1.0)
    ap.add_argument("--cg_steps", type=int, default=5)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--steps_list", type=int, nargs="+", default=[1, 5, 10, 20, 50])
    ap.add_argument("--engines", nargs="+", default=["nested", "checkpointed", "implicit"])
    ap.add_argument("--max_rss_gb", type=float, default=20.0)
    ap.add_argument("--out", default=str(REPO / "docs" / "inner_steps"))
    ap.add_argument("--reuse", default=None, metavar="JSONL",
                    help="JSON lines of earlier runs on this machine to take instead of running them again")
    args = ap.parse_args()
    if args.sweep:
        sweep(args)
    else:
        print(json.dumps(run_one(args)))


if __name__ == "__main__":
    main()
