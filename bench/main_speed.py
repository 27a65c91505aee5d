#!/usr/bin/env python
"""main.py's training speed beside the benchmarked step, from one run of each, interleaved.

    python bench/main_speed.py --config omniglot5w1s [--first_order] [--iters 110] [--warmup 10]
                               (sinusoid: --iters 3000 --warmup 300 by default)
                               [--rounds 1] [--data_dir ./data] [--threads 2]

Runs ``main.py`` with the configuration's original usage-line flags (as
bench/meta_step.py's CONFIGS), ``--metatrain_iterations=ITERS``, no checkpoint until
the end and ``--step_times`` (every iteration's end time), then ``bench/meta_step.py``
on the same configuration, ``--rounds`` times alternately.  main.py's steady state is
its iterations after ``--warmup`` (start-up: imports, data loading, path timing, tracing)
and without a checkpoint write; it still holds everything a training run does per
iteration (drawing tasks in the prefetch thread, the summaries and validation every 100
iterations, the checks, the progress lines).  Printed: one JSON line per run, then a
summary line with main.py's mean and median seconds per iteration, the step's median
and the ratio main.py mean / step median (target: at most 1.1), with the CPU model and
its vector extensions.

Image data: Omniglot is read from ``--data_dir`` (prepare it first: README); for
miniImageNet a synthetic folder of the real layout (64/16/20 classes, 20 JPEG images of
84x84 each) is made in a temporary folder, since the speed does not depend on content.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from meta_step import CONFIGS  # noqa: E402
from maml_tf.run.autotune import cpu_description  # noqa: E402


def synthetic_miniimagenet(root):
    """DATA_DIR with miniImagenet/{train,val,test}/<wnid>/*.jpg (random content)."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split, classes in (("train", 64), ("val", 16), ("test", 20)):
        for c in range(classes):
            folder = root / "miniImagenet" / split / f"n{split[:2]}{c:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(20):
                Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)).save(
                    folder / f"{folder.name}{i:08d}.jpg")
    return root


def flag_args(config, first_order):
    args = [f"--{k}={v}" for k, v in CONFIGS[config].items()]
    return args + (["--stop_grad=True"] if first_order else [])


def run_main(args, data_dir, work):
    times = work / "times.npy"
    cmd = [sys.executable, str(REPO / "main.py")] + flag_args(args.config, args.first_order) + [
        f"--metatrain_iterations={args.iters}", f"--save_interval={args.iters + 1}",
        f"--logdir={work / 'logs'}", f"--data_dir={data_dir}", f"--step_times={times}",
        "--resume=False"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run(["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:args.threads]))] + cmd,
                       capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"main.py failed:\n{r.stderr[-3000:]}")
    t = np.load(times)
    d = np.diff(t[:, 1])
    keep = (t[1:, 0] >= args.warmup) & (t[1:, 2] == 0)
    steady = d[keep]
    return {"run": "main.py", "config": args.config, "first_order": args.first_order,
            "iters": int(keep.sum()), "sec_per_iter_mean": float(steady.mean()),
            "sec_per_iter_median": float(np.median(steady)),
            "sec_per_iter_max": float(steady.max())}


def run_step(args):
    cmd = [sys.executable, str(REPO / "bench" / "meta_step.py"), "--config", args.config,
           "--threads", str(args.threads)] + (["--first_order"] if args.first_order else [])
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if r.returncode != 0:
        sys.exit(f"bench/meta_step.py failed:\n{r.stderr[-3000:]}")
    line = json.loads(r.stdout.strip().splitlines()[-1])
    return {"run": "bench/meta_step.py", "config": args.config, "first_order": args.first_order,
            "iters": line["iters"], "sec_per_iter_median": line["sec_per_iter_median"],
            "tasks": line.get("tasks"), "xla": line.get("xla")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--iters", type=int, default=None,
                    help="main.py's iterations (default 110; sinusoid 3000: its steps take 0.3 ms)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="iterations left out as start-up (default 10; sinusoid 300: the first fused call "
                         "compiles the 99-step loop)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--data_dir", default=str(REPO / "data"))
    args = ap.parse_args()
    source = CONFIGS[args.config]["datasource"]
    sine = source == "sinusoid"
    args.iters = args.iters or (3000 if sine else 110)
    args.warmup = args.warmup if args.warmup is not None else (300 if sine else 10)
    if args.iters <= args.warmup + 1:
        sys.exit("--iters must exceed --warmup by at least 2")
    with tempfile.TemporaryDirectory(prefix="main_speed_") as tmp:
        tmp = pathlib.Path(tmp)
        data_dir = args.data_dir
        if source == "omniglot" and not (pathlib.Path(data_dir) / "omniglot_resized").is_dir():
            sys.exit(f"no omniglot_resized in {data_dir}: run data/prepare_omniglot.py first (README)")
        if source == "miniimagenet":
            data_dir = str(synthetic_miniimagenet(tmp / "data"))
        mains, steps = [], []
        for r in range(args.rounds):
            work = tmp / f"round{r}"
            work.mkdir()
            mains.append(run_main(args, data_dir, work))
            print(json.dumps(mains[-1]), flush=True)
            steps.append(run_step(args))
            print(json.dumps(steps[-1]), flush=True)
    main_mean = statistics.median(m["sec_per_iter_mean"] for m in mains)
    step = statistics.median(s["sec_per_iter_median"] for s in steps)
    print(json.dumps({"summary": args.config, "first_order": args.first_order, "rounds": args.rounds,
                      "main_sec_per_iter_mean": main_mean,
                      "main_sec_per_iter_median": statistics.median(m["sec_per_iter_median"] for m in mains),
                      "step_sec_per_iter_median": step, "ratio_main_mean_over_step": main_mean / step,
                      "path": f"{steps[-1]['tasks']}{'+xla' if steps[-1]['xla'] else ''}",
                      "cpu": cpu_description(), "load_avg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
