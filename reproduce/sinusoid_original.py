#!/usr/bin/env python
"""Sinusoid K=5 and K=10, full length, maml-tf beside the authors' own code, several seeds.

    python reproduce/sinusoid_original.py --seeds 0 1 2 [--iterations 70000]
        [--logroot logs/sine_vs_original] [--only original|ours] [--summary]

For every seed, as the paper's Section 5.1 (alpha = 0.01, K = 10 for meta-training,
meta-batch 25, 70,000 iterations; the README's usage line with --update_lr=0.01):

* the original (``python -m maml_tf.paper.original --seed S -- <its flags>``: cbfinn/maml on
  TensorFlow 2, with numpy, random and TF seeded) trains, then tests itself with its own
  ``--train=False`` at K=10 and at K=5 (``--update_batch_size=5
  --train_update_batch_size=10``);
* maml-tf (``main.py --seed S``) does the same;
* maml-tf's ``--train=False --init_checkpoint`` evaluates the original's trained weights,
  and its per-task MSEs are compared with the original's own (``test_ubs*.pkl``).

Then (or with ``--summary`` alone) it writes ``LOGROOT/summary.json`` and prints a
Markdown table: mean MSE after 1, 5 and 10 inner steps, the median, and how many of the
600 test tasks diverge (MSE above 25 after 10 steps: worse than predicting 0 for any
sinusoid of amplitude <= 5).  Each step is skipped when its output already exists, so
an interrupted run resumes.  About 25 minutes per original run on one core, 3 minutes per
maml-tf run.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from maml_tf.paper.figures import diverged, medians, read_mses  # noqa: E402  (test .pkl files: numpy only)
EXP = "cls_5.mbs_25.ubs_10.numstep1.updatelr0.01nonorm"


def flags(logdir, iterations):
    return [f"--datasource=sinusoid", f"--logdir={logdir}", f"--metatrain_iterations={iterations}",
            "--norm=None", "--update_batch_size=10", "--update_lr=0.01"]


TESTS = {10: ["--train=False"], 5: ["--train=False", "--update_batch_size=5", "--train_update_batch_size=10"]}


def run(cmd, log):
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"failed (exit {r.returncode}): see {log}")


def pkl(folder, k):
    return os.path.join(folder, EXP, f"test_ubs{k}_stepsize0.01.pkl")


def one_seed(seed, root, iterations, only):
    py = sys.executable
    sides = {"original": [py, "-m", "maml_tf.paper.original", f"--seed={seed}", "--"],
             "ours": [py, "main.py", f"--seed={seed}"]}
    for side, prefix in sides.items():
        if only and side != only:
            continue
        logdir = os.path.join(root, side, f"seed{seed}")
        os.makedirs(logdir, exist_ok=True)
        log = os.path.join(logdir, "log.txt")
        base = flags(logdir, iterations)
        if not os.path.exists(os.path.join(logdir, EXP, "checkpoint")) or not all(
                os.path.exists(pkl(logdir, k)) for k in TESTS):
            run(prefix + base, log)
        for k, extra in TESTS.items():
            if not os.path.exists(pkl(logdir, k)):
                run(prefix + base + extra, log)
    # maml-tf's evaluation of the original's trained weights.
    orig = os.path.join(root, "original", f"seed{seed}")
    ckpt = os.path.join(orig, EXP, f"model{iterations - 1}")
    if os.path.exists(ckpt + ".index") and only != "original":
        cross = os.path.join(root, "ours_on_original", f"seed{seed}")
        for k, extra in TESTS.items():
            if not os.path.exists(pkl(cross, k)):
                run([py, "main.py"] + flags(cross, iterations) + extra + [f"--init_checkpoint={ckpt}"],
                    os.path.join(root, "ours_on_original_log.txt"))


def stats(path):
    m = read_mses(path)
    with np.errstate(invalid="ignore", over="ignore"):
        return {"mean": [float(m[:, j].mean()) for j in (1, 5, 10)],
                "ci95": [float(1.96 * m[:, j].std() / np.sqrt(len(m))) for j in (1, 5, 10)],
                "median": [float(medians(m)[j]) for j in (1, 5, 10)],
                "diverged": int(diverged(m).sum()), "tasks": int(len(m))}


def summary(root, seeds):
    out = {"runs": {}, "cross": {}}
    for seed in seeds:
        for side in ("original", "ours"):
            for k in TESTS:
                p = pkl(os.path.join(root, side, f"seed{seed}"), k)
                if os.path.exists(p):
                    out["runs"][f"{side}/seed{seed}/K{k}"] = stats(p)
        for k in TESTS:
            a = pkl(os.path.join(root, "original", f"seed{seed}"), k)
            b = pkl(os.path.join(root, "ours_on_original", f"seed{seed}"), k)
            if os.path.exists(a) and os.path.exists(b):
                ma, mb = read_mses(a), read_mses(b)
                with np.errstate(invalid="ignore", over="ignore"):
                    rel = np.abs(ma - mb) / np.maximum(np.abs(ma), 1e-12)
                finite = ~diverged(ma)
                both_gone = ~np.isfinite(ma) & ~np.isfinite(mb)  # diverged in both (inf / nan)
                rel = np.where(both_gone, 0.0, rel)
                out["cross"][f"seed{seed}/K{k}"] = {
                    "max_rel_diff_all_steps": float(rel.max()),
                    "max_rel_diff_non_diverged": float(rel[finite].max()) if finite.any() else None,
                    "same_diverged_tasks": bool((diverged(ma) == diverged(mb)).all())}
    with open(os.path.join(root, "summary.json"), "w") as f:
        json.dump(out, f, indent=1)
    lines = ["| code | seed | K | 1 step | 5 steps | 10 steps | median 1 / 5 / 10 | diverged (of 600) |",
             "|---|---|---|---|---|---|---|---|"]
    for key, s in sorted(out["runs"].items(), key=lambda kv: (kv[0].split("/")[2], kv[0])):
        side, seed, k = key.split("/")
        cells = [f"{m:.3f} +- {c:.3f}" if m < 100 else ("diverges" if not m == m or m > 1e6 else f"{m:.3g}")
                 for m, c in zip(s["mean"], s["ci95"])]
        lines.append(f"| {'cbfinn/maml' if side == 'original' else 'maml-tf'} | {seed[4:]} | {k[1:]} | "
                     + " | ".join(cells) + f" | {' / '.join(f'{x:.3f}' for x in s['median'])} | {s['diverged']} |")
    for key, c in out["cross"].items():
        lines.append(f"\nmaml-tf evaluating the original's weights ({key}): largest per-task relative "
                     f"difference {c['max_rel_diff_all_steps']:.2e} (tasks that do not diverge: "
                     f"{c['max_rel_diff_non_diverged']:.2e}); same diverging tasks: {c['same_diverged_tasks']}")
    print("\n".join(lines))
    return out


def figure(root, seeds, path):
    """Figure 3's MAML curves, both codes: per K a panel of the mean (solid) and the median
    (dotted) test MSE after 0..10 steps for every seed, log scale, diverged tasks counted
    in the legend (the mean of a seed that diverges leaves the plot)."""
    from maml_tf.paper.figures import pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, len(TESTS), figsize=(6 * len(TESTS), 4.5), squeeze=False)
    colours = {"original": "tab:orange", "ours": "tab:green"}
    for ax, k in zip(axes[0], sorted(TESTS)):
        for side in ("original", "ours"):
            for i, seed in enumerate(seeds):
                p = pkl(os.path.join(root, side, f"seed{seed}"), k)
                if not os.path.exists(p):
                    continue
                m = read_mses(p)
                with np.errstate(invalid="ignore", over="ignore"):
                    mean = m.mean(axis=0)
                median = medians(m)
                gone = int(diverged(m).sum())
                name = "cbfinn/maml" if side == "original" else "maml-tf"
                shade = 1.0 - 0.25 * i
                ax.plot(np.arange(m.shape[1]), np.where(np.isfinite(mean) & (mean < 1e3), mean, np.nan),
                        "-", color=colours[side], alpha=shade, marker="o", ms=3,
                        label=f"{name} seed {seed}: mean ({gone} of {len(m)} diverge)")
                ax.plot(np.arange(m.shape[1]), median, ":", color=colours[side], alpha=shade,
                        label=f"{name} seed {seed}: median")
        ax.set_yscale("log")
        ax.set_title(f"MAML, K={k} at test (trained K=10, alpha 0.01)")
        ax.set_xlabel("number of gradient steps")
        ax.set_ylabel("MSE on 600 test tasks")
        ax.legend(fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"Wrote {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=70000)
    p.add_argument("--logroot", default="logs/sine_vs_original")
    p.add_argument("--only", choices=["original", "ours"], default=None)
    p.add_argument("--summary", action="store_true", help="only summarise what exists")
    p.add_argument("--figure", default=None, metavar="PNG",
                   help="also draw both codes' MAML curves (mean and median per seed) into PNG")
    args = p.parse_args()
    root = os.path.abspath(args.logroot)
    if not args.summary:
        for seed in args.seeds:
            one_seed(seed, root, args.iterations, args.only)
    summary(root, args.seeds)
    if args.figure:
        figure(root, args.seeds, args.figure)


if __name__ == "__main__":
    main()
