#!/usr/bin/env python
"""main.py's training speed beside the benchmarked step, from one run of each, interleaved.

    python bench/main_speed.py --config omniglot5w1s [--first_order] [--iters 310] [--warmup 10]
                               (sinusoid: --iters 3000 --warmup 300 by default)
                               [--slice 10] [--rounds 1] [--data_dir ./data] [--threads 2]

Runs ``main.py`` with the configuration's original usage-line flags (as
bench/meta_step.py's CONFIGS), ``--metatrain_iterations=ITERS``, no checkpoint until
the end and ``--step_times`` (every iteration's end time), and ``bench/meta_step.py``
on the same configuration, interleaved: the two processes take turns of ``--slice``
seconds, one stopped (SIGSTOP) while the other runs (SIGCONT), so that both are
measured over the same stretch of time (a machine that slows down, a neighbour on the
host, a change of clock speed hits both alike) and never compete for the CPUs.  The
step starts first and runs alone through its start-up and warm-up (any path timing
of the autotuner happens then, undisturbed, and main.py reads the cached choice),
then main.py starts; from there only one of them runs at any moment.  Each one's
iteration times leave out the seconds it spent stopped (the clock is the system's
monotonic clock, time.perf_counter in both processes), so an iteration cut by a
turn counts with its running time only and none is dropped.

main.py's steady state is its iterations after ``--warmup`` (start-up: imports, data
loading, tracing) and without a checkpoint write; it still holds everything a training
run does per iteration (drawing tasks in the prefetch thread, the summaries and
validation every 100 iterations, the checks, the progress lines); the default
``--iters`` holds 3 summary iterations in 300 steady ones, as a long run does.
Printed: one JSON line per run, then a summary line with main.py's mean and median
seconds per iteration, the step's median and the ratio main.py mean / step median
(target: at most 1.1), with the CPU model and its vector extensions; and main.py's time
split in two, each over the step's median: its ordinary iterations
(``ratio_ordinary_over_step``) and what its summary iterations add
(``summaries_over_step``: every 100 iterations the original evaluates a training and a
validation meta-batch over max(test_num_updates, num_updates) = 10 inner steps for its
TensorBoard summaries, which main.py does too).

Image data: Omniglot is read from ``--data_dir`` (prepare it first: README); for
miniImageNet a synthetic folder of the real layout (64/16/20 classes, 20 JPEG images of
84x84 each) is made in a temporary folder, since the speed does not depend on content.
"""
import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from meta_step import CONFIGS, READY_MARKER as READY  # noqa: E402
from maml_tf.run.autotune import cpu_description  # noqa: E402

SUMMARY_INTERVAL = 100  # maml_tf.run.train's (the original's); not imported: the parent needs no TensorFlow


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


class _Proc:
    """A child process whose stopped stretches are recorded (perf_counter pairs)."""

    def __init__(self, name, cmd, log, **kw):
        self.name, self.stops, self._stopped_at = name, [], None
        self.log = open(log, "w")
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        self.ready = threading.Event()
        self.lines = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)
            self.log.write(line)
            if READY in line:
                self.ready.set()
        self.ready.set()  # ended

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.alive() and self._stopped_at is None:
            self._stopped_at = time.perf_counter()
            self.p.send_signal(signal.SIGSTOP)

    def cont(self):
        if self._stopped_at is not None:
            self.p.send_signal(signal.SIGCONT)
            self.stops.append((self._stopped_at, time.perf_counter()))
            self._stopped_at = None

    def finish(self, timeout, others=()):
        """Wait for the end (continuing it if stopped); if it failed, kill ``others`` and exit."""
        self.cont()
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        if self.alive():
            self.p.kill()
            self.p.wait()
        self._reader.join(5)
        self.log.close()
        if self.p.returncode != 0:
            for other in others:
                other.cont()
                if other.alive():
                    other.p.kill()
            sys.exit(f"{self.name} failed (exit {self.p.returncode}):\n{''.join(self.lines)[-3000:]}")


def running_seconds(start, end, stops):
    """Seconds of [start, end] outside the stopped stretches ``stops`` ((from, to) pairs)."""
    return (end - start) - sum(max(0.0, min(end, b) - max(start, a)) for a, b in stops)


def main_steady(times, warmup, stops):
    """(iteration numbers, seconds) of main.py's steady-state iterations from its
    --step_times rows (iteration, end, checkpoint written): after ``warmup``, no
    checkpoint, stopped stretches left out."""
    t = np.asarray(times)
    keep = [k for k in range(1, len(t)) if t[k, 0] >= warmup and t[k, 2] == 0]
    seconds = np.array([running_seconds(t[k - 1, 1], t[k, 1], stops) for k in keep])
    return t[keep, 0].astype(int), seconds


def split_summaries(iterations, seconds, interval=SUMMARY_INTERVAL):
    """(how many summary iterations, mean seconds of the ordinary iterations, extra
    seconds per iteration that the summary iterations (every ``interval``: the original's
    summaries over max(test_num_updates, num_updates) inner steps of a training and a
    validation meta-batch) add over an ordinary one, averaged over all iterations)."""
    summary = np.asarray(iterations) % interval == 0
    ordinary = float(np.mean(seconds[~summary])) if (~summary).any() else float("nan")
    extra = float(np.sum(seconds[summary] - ordinary)) / len(seconds) if summary.any() else 0.0
    return int(summary.sum()), ordinary, extra


def interleaved(args, data_dir, work):
    """One main.py run and one bench/meta_step.py run in turns of args.slice seconds."""
    first_order = ["--first_order"] if args.first_order else []
    step_cmd = [sys.executable, str(REPO / "bench" / "meta_step.py"), "--config", args.config,
                "--threads", str(args.threads), "--iters", str(max(args.iters - args.warmup, 3)),
                "--step_times", str(work / "step_times.npy"), "--ready_marker"] + first_order
    main_cmd = ["taskset", "-c", ",".join(map(str, sorted(os.sched_getaffinity(0))[:args.threads])),
                sys.executable, str(REPO / "main.py")] + flag_args(args.config, args.first_order) + [
        f"--metatrain_iterations={args.iters}", f"--save_interval={args.iters + 1}",
        f"--logdir={work / 'logs'}", f"--data_dir={data_dir}", f"--step_times={work / 'main_times.npy'}",
        "--resume=False"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    step = _Proc("bench/meta_step.py", step_cmd, work / "step.log", cwd=REPO, env=env)
    step.ready.wait(args.timeout)  # alone through start-up, path timing and warm-up
    if step.p.poll() not in (None, 0):
        step.finish(1)  # it failed: say why now
    step.stop()
    main = _Proc("main.py", main_cmd, work / "main.log", cwd=REPO, env=env)
    running, other = main, step
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        turn_end = time.perf_counter() + args.slice
        while time.perf_counter() < turn_end and running.alive():
            time.sleep(0.02)
        if not running.alive():
            break
        if other.alive():
            running.stop()
            other.cont()
            running, other = other, running
    main.finish(max(deadline - time.time(), 1), others=[step])
    step.finish(max(deadline - time.time(), 1))
    iterations, steady = main_steady(np.load(work / "main_times.npy"), args.warmup, main.stops)
    summary_iters, ordinary, summaries = split_summaries(iterations, steady)
    spans = np.load(work / "step_times.npy")
    step_times = np.array([running_seconds(a, b, step.stops) for a, b in spans])
    line = json.loads(step.lines[-1])
    turns = len(main.stops) + len(step.stops)
    return ({"run": "main.py", "config": args.config, "first_order": args.first_order,
             "iters": len(steady), "sec_per_iter_mean": float(steady.mean()),
             "sec_per_iter_median": float(np.median(steady)), "sec_per_iter_max": float(steady.max()),
             "summary_iters": summary_iters,
             "sec_per_iter_mean_ordinary": ordinary, "summaries_sec_per_iter": summaries,
             "stopped_turns": len(main.stops)},
            {"run": "bench/meta_step.py", "config": args.config, "first_order": args.first_order,
             "iters": len(step_times), "sec_per_iter_median": float(np.median(step_times)),
             "sec_per_iter_median_own_timer": line["sec_per_iter_median"],
             "stopped_turns": len(step.stops), "tasks": line.get("tasks"), "xla": line.get("xla"),
             "turns": turns})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--iters", type=int, default=None,
                    help="main.py's iterations (default 310: 3 summary iterations in 300 steady ones; "
                         "miniImageNet 110; sinusoid 3000: its steps take 0.3 ms)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="iterations left out as start-up (default 10; sinusoid 300: the first fused call "
                         "compiles the 99-step loop)")
    ap.add_argument("--slice", type=float, default=None,
                    help="seconds of each turn (default 10; miniImageNet 20: a step takes seconds)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved pairs of runs (the summary takes medians)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per interleaved pair")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--data_dir", default=str(REPO / "data"))
    args = ap.parse_args()
    source = CONFIGS[args.config]["datasource"]
    sine = source == "sinusoid"
    args.iters = args.iters or (3000 if sine else 110 if source == "miniimagenet" else 310)
    args.slice = args.slice or (20.0 if source == "miniimagenet" else 10.0)
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
            m, st = interleaved(args, data_dir, work)
            mains.append(m)
            steps.append(st)
            print(json.dumps(m), flush=True)
            print(json.dumps(st), flush=True)
    main_mean = statistics.median(m["sec_per_iter_mean"] for m in mains)
    step = statistics.median(s["sec_per_iter_median"] for s in steps)
    ordinary = statistics.median(m["sec_per_iter_mean_ordinary"] for m in mains)
    summaries = statistics.median(m["summaries_sec_per_iter"] for m in mains)
    print(json.dumps({"summary": args.config, "first_order": args.first_order, "rounds": args.rounds, "slice_s": args.slice,
                      "main_sec_per_iter_mean": main_mean,
                      "main_sec_per_iter_median": statistics.median(m["sec_per_iter_median"] for m in mains),
                      "step_sec_per_iter_median": step, "ratio_main_mean_over_step": main_mean / step,
                      # main.py's time split: its ordinary iterations, and what the original's
                      # summary evaluations (every 100 iterations) add, each over the step
                      "ratio_ordinary_over_step": ordinary / step,
                      "summaries_over_step": summaries / step,
                      "path": f"{steps[-1]['tasks']}{'+xla' if steps[-1]['xla'] else ''}",
                      "cpu": cpu_description(), "load_avg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
