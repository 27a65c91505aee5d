#!/usr/bin/env python
"""Time maml-tf's full meta-training step on the five paper configurations.

    python bench/meta_step.py --config omniglot5w1s [--first_order] [--iters N] [--warmup N]
                              [--threads N] [--compare]

Without ``--compare``: builds the model as ``maml_tf.run.train.build_model`` does for
the original usage line of the configuration, puts the data for the step in
memory, runs ``warmup + iters`` calls of ``MAML.metatrain_step`` (inner loop,
second- or first-order meta-gradient, clipping for miniImageNet, TF1 Adam
update; everything the training loop calls per iteration) and prints one JSON
line with the keys of the speed anchors in ../shared/anchors:
``stack, config, first_order, sec_per_iter_median, sec_per_iter_min, iters,
peak_rss_mb, final_meta_loss, initial_meta_loss`` plus ``compile_s`` (the
first call: trace + graph optimisation / XLA compilation + one step), and the step's
floating-point work and how close it runs to the machine's limit (``bench/flops.py``):
``flops_per_step`` and ``product_flops_per_step`` (the convolutions and matrix products,
counted from the step's graph), ``product_gflops_per_s`` (those over the median time),
``peak_gflops`` (TensorFlow's own large matrix product, same precision and threads,
measured after the timed steps; ``--no_peak`` skips it; ``peak_chains`` products side by
side where the step's ops run side by side, one core each) and ``percent_of_peak``.

Parameters and data are drawn exactly as the anchors draw them (one
``np.random.default_rng(0)`` stream: the weights, then the data), so
``initial_meta_loss`` must agree with theirs up to float32 rounding.
Sinusoid gets fresh real tasks before every step (outside the timer);
the image configs use one fixed random batch.

``--compare`` runs this script and the anchors' commands as separate
processes, interleaved (``--rounds`` times: ours, anchor 1, anchor 2, ...),
prints every run's JSON line, then one summary JSON line with the ratios
ours / fastest anchor of the medians (and of peak RSS).
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
sys.path.insert(0, str(REPO))  # maml_tf from this checkout, installed or not

# The original usage lines (main.py flags) of the anchors' five configurations.
CONFIGS = {
    "sinusoid": dict(datasource="sinusoid", norm="None", meta_batch_size=25, update_batch_size=10,
                     num_updates=1, update_lr=1e-3),
    "omniglot5w1s": dict(datasource="omniglot", num_classes=5, meta_batch_size=32,
                         update_batch_size=1, num_updates=1, update_lr=0.4, num_filters=64),
    "omniglot20w1s": dict(datasource="omniglot", num_classes=20, meta_batch_size=16,
                          update_batch_size=1, num_updates=5, update_lr=0.1, num_filters=64),
    # The paper's other Omniglot rows (its 1-shot usage lines with --update_batch_size=5): the
    # long runs of the Omniglot table.  The anchors have no such configuration; --compare needs
    # one, so these run alone.
    "omniglot5w5s": dict(datasource="omniglot", num_classes=5, meta_batch_size=32,
                         update_batch_size=5, num_updates=1, update_lr=0.4, num_filters=64),
    "omniglot20w5s": dict(datasource="omniglot", num_classes=20, meta_batch_size=16,
                          update_batch_size=5, num_updates=5, update_lr=0.1, num_filters=64),
    "mini5w1s": dict(datasource="miniimagenet", num_classes=5, meta_batch_size=4,
                     update_batch_size=1, num_updates=5, update_lr=0.01, num_filters=32,
                     max_pool=True),
    "mini5w5s": dict(datasource="miniimagenet", num_classes=5, meta_batch_size=4,
                     update_batch_size=5, num_updates=5, update_lr=0.01, num_filters=32,
                     max_pool=True),
}
READY_MARKER = "meta_step: warm-up done"
# (iters, warmup) of our step by default.
DEFAULT_ITERS = {"sinusoid": (300, 30), "omniglot5w1s": (30, 3), "omniglot20w1s": (10, 2),
                 "omniglot5w5s": (10, 2), "omniglot20w5s": (4, 1),
                 "mini5w1s": (6, 1), "mini5w5s": (3, 1)}
# Anchor runs of --compare: (stack, tasks, iters, warmup) per config and order.  The
# fastest cells of the anchors' README table, and the runner-up where it is close;
# the cells that take tens of seconds per iteration are left out (--anchors adds them).
ANCHORS = {
    "sinusoid": [("jax", "vmap", 300, 30), ("jax", "loop", 300, 30), ("torch", "vmap", 200, 20)],
    "omniglot5w1s": [("torch", "vmap", 30, 3), ("torch", "loop", 20, 2), ("jax", "loop", 10, 1)],
    "omniglot20w1s": [("torch", "vmap", 10, 2), ("torch", "loop", 10, 2)],
    "mini5w1s": [("torch", "loop", 6, 1), ("torch", "vmap", 5, 1)],
    "mini5w5s": [("torch", "loop", 3, 1)],
}


# ---------------------------------------------------------------------------- data
def make_batch(name, cfg, rng):
    """(inputa, labela, inputb, labelb) as the anchors draw them, in our layout
    ([T, examples, dim]: images flattened in NHWC order, as the data pipeline gives them)."""
    import numpy as np
    t = cfg.meta_batch_size
    if cfg.datasource == "sinusoid":
        k, q = cfg.update_batch_size, cfg.query_per_class
        amp = rng.uniform(0.1, 5.0, (t, 1, 1))
        phase = rng.uniform(0.0, np.pi, (t, 1, 1))
        x = rng.uniform(-5.0, 5.0, (t, k + q, 1))
        y = amp * np.sin(x - phase)
        x, y = x.astype(np.float32), y.astype(np.float32)
        return x[:, :k], y[:, :k], x[:, k:], y[:, k:]
    n, d = cfg.num_classes, cfg.dim_input

    def split(per_class):
        x = rng.uniform(0.0, 1.0, (t, n * per_class, d)).astype(np.float32)
        lab = np.stack([np.concatenate([rng.permutation(n) for _ in range(per_class)])
                        for _ in range(t)])
        return x, np.eye(n, dtype=np.float32)[lab]

    xa, ya = split(cfg.update_batch_size)
    xb, yb = split(cfg.query_per_class)
    return xa, ya, xb, yb


def pin(n):
    """Run on n CPUs (as the anchors' --threads does)."""
    avail = sorted(os.sched_getaffinity(0))
    if n < len(avail):
        os.sched_setaffinity(0, avail[:n])


def set_threads(n, config=None, intra=None, inter=None):
    """Pin the process to n CPUs and size TF's thread pools as main.py would for that many
    CPUs (maml_tf.methods.maml.thread_settings, with the measured MAML_TF_THREAD_SPLIT of
    :func:`choose_threads`), unless ``intra`` / ``inter`` say otherwise."""
    pin(n)
    sys.path.insert(0, str(REPO))
    from maml_tf.runtime import import_tensorflow
    tf = import_tensorflow()
    from maml_tf.methods.maml import thread_settings
    rec_intra, rec_inter = (n, n) if config is None else thread_settings(_spec(config), n)
    tf.config.threading.set_intra_op_parallelism_threads(intra or rec_intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter or rec_inter)
    return intra or rec_intra, inter or rec_inter


def peak_chains(pools):
    """How many matrix-product chains the peak runs side by side (bench/flops.py, ``peak``):
    one per inter-op thread where each op runs on one core (intra-op pool 1: the conv nets'
    ops side by side, ``MAML_TF_THREAD_SPLIT=1``, and the fc nets), else one chain over the
    intra-op pool.  Either way the peak is that of every core the step may use."""
    intra, inter = pools
    return inter if intra == 1 else 1


def _spec(config):
    sys.path.insert(0, str(REPO))
    from maml_tf.run.config import Config
    from maml_tf.core.networks import build_network
    cfg = Config(**CONFIGS[config])
    return build_network(cfg.datasource, cfg.dim_input, cfg.dim_output, conv=cfg.conv,
                         num_filters=cfg.num_filters, max_pool=cfg.max_pool, norm=cfg.norm)


# ---------------------------------------------------------------------------- ours
def _config(config, first_order=False, task_mode=None, xla=None, precision="float32"):
    """The Config of ``config``'s usage line as main.py would make it."""
    sys.path.insert(0, str(REPO))
    from maml_tf.run.config import Config
    fields = dict(CONFIGS[config], stop_grad=first_order, seed=0, precision=precision)
    if task_mode:
        fields["task_mode"] = task_mode
    # None: what main.py runs (maml_tf.run.autotune: measured on this machine, cached)
    fields["xla"] = None if xla is None else xla == "on"
    return Config(**fields)


def build(config, first_order=False, task_mode=None, xla=None, precision="float32"):
    """(model, cfg, next_batch): the model of ``config`` as build_model makes it, and the
    data source of the anchors (weights and data from one default_rng(0) stream)."""
    import numpy as np
    sys.path.insert(0, str(REPO))
    from maml_tf.run.model import build_model

    cfg = _config(config, first_order, task_mode, xla, precision)
    model = build_model(cfg, tune=True, out=lambda line: print(line, file=sys.stderr))
    rng = np.random.default_rng(0)
    model.spec.init(rng=rng)  # advance the stream past the weights, as the anchors do
    fixed = None if cfg.datasource == "sinusoid" else make_batch(config, cfg, rng)

    def next_batch():
        return fixed if fixed is not None else make_batch(config, cfg, rng)
    return model, cfg, next_batch


def cpu_description():
    sys.path.insert(0, str(REPO))
    from maml_tf.run.autotune import cpu_description as describe
    return describe()


def choose_threads(config, threads, first_order=False, task_mode=None, xla=None):
    """As main.py, on ``threads`` CPUs: the conv nets' ops over every core or side by side
    (maml_tf.run.autotune.choose_threads, measured once and cached)."""
    pin(threads)
    from maml_tf.run.autotune import choose_threads as choose
    choose(_config(config, first_order, task_mode, xla), out=lambda line: print(line, file=sys.stderr))
    return os.environ.get("MAML_TF_THREAD_SPLIT", "0")


def choose_onednn(config, first_order=False, task_mode=None, xla=None):
    """As main.py, before TensorFlow loads: oneDNN on or off where TensorFlow's default
    leaves it off (maml_tf.run.autotune.choose_onednn); returns what the step runs with."""
    from maml_tf.run.autotune import choose_onednn as choose
    choose(_config(config, first_order, task_mode, xla), out=lambda line: print(line, file=sys.stderr))
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "tf-default")


def run_ours(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    onednn = choose_onednn(args.config, args.first_order, args.task_mode, args.xla)
    if args.intra_threads is None and args.inter_threads is None:
        choose_threads(args.config, args.threads, args.first_order, args.task_mode, args.xla)
    pools = set_threads(args.threads, args.config, args.intra_threads, args.inter_threads)
    import numpy as np
    import tensorflow as tf

    model, cfg, next_batch = build(args.config, args.first_order, args.task_mode, args.xla, args.precision)
    iters, warmup = DEFAULT_ITERS[args.config]
    iters = args.iters if args.iters is not None else iters
    warmup = max(1, args.warmup if args.warmup is not None else warmup)
    times, losses = [], []
    # As the anchors: warmup + iters steps, the first (trace + compile) among the warm-up ones.
    cpu, spans = [], []
    for i in range(warmup + iters):
        if i == warmup and args.ready_marker:  # bench/main_speed.py: start-up and warm-up done
            print(READY_MARKER, file=sys.stderr, flush=True)
        # As the anchors: the step's data are tensors before the timer starts.
        batch = [tf.constant(a) for a in next_batch()]
        c0 = time.process_time()
        t0 = time.perf_counter()
        metrics = model.metatrain_step(*batch)  # returns numpy values: the step is done
        t1 = time.perf_counter()
        times.append(t1 - t0)
        spans.append((t0, t1))
        cpu.append(time.process_time() - c0)
        losses.append(float(metrics["postloss"]))
    if args.step_times:  # every timed step's (start, end), time.perf_counter (CLOCK_MONOTONIC)
        np.save(args.step_times, np.array(spans[warmup:], dtype=np.float64))
    timed = times[warmup:]
    # The step's floating-point work, counted from its traced graph, and TensorFlow's own
    # matrix-product peak on this machine with the same threads (bench/flops.py).
    import flops as flop_count
    work = flop_count.step_flops(model, next_batch())
    chains = peak_chains(pools)
    peak_gflops = None if args.no_peak else flop_count.peak(args.precision, chains=chains)[0]
    rate = work["products"] / statistics.median(timed) / 1e9
    return {
        "stack": "maml-tf", "config": args.config, "first_order": args.first_order,
        "precision": args.precision,
        "tasks": model.task_mode, "xla": bool(model.jit_compile),
        "sec_per_iter_median": statistics.median(timed), "sec_per_iter_min": min(timed),
        "iters": iters,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "final_meta_loss": losses[-1], "initial_meta_loss": losses[0],
        "compile_s": times[0], "cpu_sec_per_iter_median": statistics.median(cpu[warmup:]),
        "flops_method": "graph ops, shapes (bench/flops.py)", "flops_per_step": work["total"],
        "product_flops_per_step": work["products"], "product_gflops_per_s": round(rate, 2),
        "peak_gflops": None if peak_gflops is None else round(peak_gflops, 1), "peak_chains": chains,
        "percent_of_peak": None if peak_gflops is None else round(100 * rate / peak_gflops, 1),
        "load_avg": os.getloadavg()[0], "warmup": warmup, "threads": args.threads,
        "cpu": cpu_description(), "onednn": onednn,
        "tf_intra_inter_threads": list(pools),
        "versions": {"python": sys.version.split()[0], "tensorflow": tf.__version__,
                     "numpy": np.__version__},
    }


# ---------------------------------------------------------------------------- compare
def _anchor_python(stack, args):
    return args.torch_python if stack == "torch" else args.jax_python


def _busy_cpu_seconds():
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_until_quiet(max_wait, threshold=0.2):
    """Wait (up to max_wait s) until other processes use < threshold CPUs over 1 s."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        b0 = _busy_cpu_seconds()
        if b0 is None:
            return
        time.sleep(1.0)
        if _busy_cpu_seconds() - b0 < threshold:
            return


def _run_json(cmd, timeout):
    busy0, wall0 = _busy_cpu_seconds(), time.time()
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            res = json.loads(line)
            if busy0 is not None:  # CPUs other processes kept busy, on average, during the run
                own = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
                res["others_cpus"] = round(max(0.0, (_busy_cpu_seconds() - busy0 - own)
                                               / max(time.time() - wall0, 1e-9)), 3)
            return res
    raise RuntimeError(f"no JSON line from {' '.join(cmd)} (exit {proc.returncode}):\n"
                       f"{proc.stderr[-3000:]}")


def parse_anchors(spec, config):
    if not spec:
        if config not in ANCHORS:
            raise SystemExit(f"--compare: the anchors have no {config} configuration "
                             f"(run it without --compare, or name --anchors)")
        return ANCHORS[config]
    out = []
    for item in spec.split(","):
        parts = item.split(":")
        stack, tasks = parts[0], parts[1] if len(parts) > 1 else "vmap"
        iters = int(parts[2]) if len(parts) > 2 else None
        warmup = int(parts[3]) if len(parts) > 3 else None
        default = {(s, t): (i, w) for s, t, i, w in ANCHORS.get(config, [])}.get((stack, tasks))
        if default is None:
            default = DEFAULT_ITERS[config]
        out.append((stack, tasks, iters if iters is not None else default[0],
                    warmup if warmup is not None else default[1]))
    return out


def compare(args):
    anchors_dir = pathlib.Path(args.anchors_dir)
    ours_cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--config", args.config,
                "--threads", str(args.threads)]
    for flag, value in (("--iters", args.iters), ("--warmup", args.warmup),
                        ("--task_mode", args.task_mode), ("--xla", args.xla),
                        ("--intra_threads", args.intra_threads),
                        ("--inter_threads", args.inter_threads)):
        if value is not None:
            ours_cmd += [flag, str(value)]
    if args.first_order:
        ours_cmd.append("--first_order")
    if args.no_peak:
        ours_cmd.append("--no_peak")
    if args.precision != "float32":
        ours_cmd += ["--precision", args.precision]
    runs = [("maml-tf", None, ours_cmd)]
    for stack, tasks, iters, warmup in parse_anchors(args.anchors, args.config):
        script = anchors_dir / ("torch_maml_bench.py" if stack == "torch" else "jax_maml_bench.py")
        cmd = [_anchor_python(stack, args), str(script), "--config", args.config, "--tasks", tasks,
               "--iters", str(iters), "--warmup", str(warmup), "--threads", str(args.threads)]
        if args.first_order:
            cmd.append("--first_order")
        runs.append((stack, tasks, cmd))
    results = {}
    for r in range(args.rounds):
        for stack, tasks, cmd in runs:
            key = stack if tasks is None else f"{stack}:{tasks}"
            if args.quiet_wait:
                _wait_until_quiet(args.quiet_wait)
            res = _run_json(cmd, args.timeout)
            res["round"] = r
            print(json.dumps(res), flush=True)
            results.setdefault(key, []).append(res)

    def med(key, field):
        return statistics.median(x[field] for x in results[key])

    ours = "maml-tf"
    anchor_keys = [k for k in results if k != ours]
    fastest = min(anchor_keys, key=lambda k: med(k, "sec_per_iter_median"))
    summary = {
        "summary": True, "config": args.config, "first_order": args.first_order,
        "rounds": args.rounds, "threads": args.threads,
        "sec_per_iter_median": {k: med(k, "sec_per_iter_median") for k in results},
        "sec_per_iter_min": {k: min(x["sec_per_iter_min"] for x in results[k]) for k in results},
        "peak_rss_mb": {k: max(x["peak_rss_mb"] for x in results[k]) for k in results},
        "initial_meta_loss": {k: results[k][0]["initial_meta_loss"] for k in results},
        "compile_s": med(ours, "compile_s"),
        "others_cpus_max": max(x.get("others_cpus", 0.0) for k in results for x in results[k]),
        "fastest_anchor": fastest,
        "ratio_median": med(ours, "sec_per_iter_median") / med(fastest, "sec_per_iter_median"),
        "ratio_peak_rss": max(x["peak_rss_mb"] for x in results[ours])
                          / max(x["peak_rss_mb"] for x in results[fastest]),
        "path": f"{results[ours][0].get('tasks')}{'+xla' if results[ours][0].get('xla') else ''}",
        "cpu": cpu_description(),
    }
    print(json.dumps(summary), flush=True)
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), default="sinusoid")
    ap.add_argument("--first_order", action="store_true", help="first-order MAML (--stop_grad)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default per config)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed iterations after the first call (default per config)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="CPUs to use (pins the process, as the anchors' --threads)")
    ap.add_argument("--intra_threads", type=int, default=None,
                    help="TF intra-op threads (default: maml_tf.methods.maml.thread_settings)")
    ap.add_argument("--inter_threads", type=int, default=None,
                    help="TF inter-op threads (default: maml_tf.methods.maml.thread_settings)")
    ap.add_argument("--task_mode", default=None, help="override MAML's task_mode")
    ap.add_argument("--xla", choices=["on", "off"], default=None,
                    help="override jit_compile (default: the model's own choice)")
    ap.add_argument("--step_times", default="",
                    help="write every timed step's (start, end) (time.perf_counter) to this .npy file "
                         "(bench/main_speed.py)")
    ap.add_argument("--ready_marker", action="store_true",
                    help=f"print {READY_MARKER!r} to stderr when the warm-up is done (bench/main_speed.py)")
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                    help="the conv nets' products (main.py's --precision); the peak is measured in it")
    ap.add_argument("--no_peak", action="store_true",
                    help="skip the matrix-product peak (a few seconds; percent_of_peak then null)")
    ap.add_argument("--compare", action="store_true",
                    help="also run the anchors, interleaved, and print the ratios")
    ap.add_argument("--rounds", type=int, default=1, help="--compare: rounds of interleaved runs")
    ap.add_argument("--anchors", default=None,
                    help="--compare: comma list of stack:tasks[:iters[:warmup]], e.g. "
                         "torch:loop,jax:vmap:300:30 (default: the fastest cells per config)")
    ap.add_argument("--anchors_dir", default=os.environ.get(
        "MAML_ANCHORS_DIR", str(REPO.parent / "shared" / "anchors")))
    ap.add_argument("--torch_python", default=os.environ.get(
        "MAML_TORCH_PYTHON", "/work/venvs/torch/bin/python"))
    ap.add_argument("--jax_python", default=os.environ.get(
        "MAML_JAX_PYTHON", "/work/venvs/jax/bin/python"))
    ap.add_argument("--timeout", type=float, default=3600, help="--compare: seconds per run")
    ap.add_argument("--quiet_wait", type=float, default=0,
                    help="--compare: before each run wait up to this many seconds for the other "
                         "processes on the machine to go quiet (each run reports others_cpus: "
                         "the CPUs other processes kept busy during it)")
    args = ap.parse_args()
    if args.compare:
        compare(args)
    else:
        print(json.dumps(run_ours(args)), flush=True)


if __name__ == "__main__":
    main()
