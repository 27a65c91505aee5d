"""Choose the fastest way to run the training step on this machine, by measuring it.

The same meta-training step can run several ways, all computing the same numbers
(``tests/test_fast_paths.py`` checks each against the reference meta-gradient):

* ``task_mode='batched'``: the meta-batch's tasks together (theta broadcast to T
  per-task copies; one grouped convolution per layer for the conv nets, factored fast
  weights for the fc nets);
* ``task_mode='loop'``: the tasks one after another inside one graph;
* ``jit_compile``: the step compiled with XLA, or run as a TensorFlow graph.

Which is fastest depends on the machine, not only on the network: on a CPU with
AVX-512 TensorFlow's oneDNN kernels run the grouped convolution and its gradient, and
``batched`` wins (mini5w1s 1.1 s vs 1.7 s per step); where oneDNN cannot differentiate
grouped convolutions (AMD EPYC with AVX2, ARM, macOS; ``TF_ENABLE_ONEDNN_OPTS=0``) the
batched conv path falls back to per-task convolutions glued with Concat/Slice and
``loop`` wins; XLA fuses the fc nets' hundred tiny kernels (sinusoid 2x faster) but runs
CPU convolutions several times slower than oneDNN.  So the first run of a configuration
times each candidate on a few steps of random data of the right shapes (a fresh model
per candidate, timed interleaved; the real model is untouched) and keeps the fastest; the choice is cached
per machine (CPU model, vector extensions, CPUs available, GPUs, TensorFlow version)
and configuration in ``$MAML_TF_CACHE_DIR`` or ``~/.cache/maml_tf/autotune.json``, so
later runs start at once.  ``MAML_TF_AUTOTUNE=0`` skips the measurement and takes the
static default (batched, XLA for fc nets only; loop for conv nets without a grouped-conv
gradient).  An explicit ``--task_mode`` / ``--xla`` is always obeyed.

oneDNN itself is a choice, made before TensorFlow is imported (:func:`choose_onednn`).
On Linux, TensorFlow turns its oneDNN kernels on by default only on CPUs with neural-
network extensions (AVX512_VNNI, AVX512_BF16, AVX_VNNI, AMX: ``DefaultOneDnnPolicy`` in
tensorflow/core/util/port.cc); on an AVX2-only x86 CPU (AMD EPYC before Zen 4, Intel
before Cascade Lake) it runs Eigen's kernels, which have no grouped-convolution
gradient and convolve slower.  oneDNN has AVX2 kernels too.  So for a conv net on such
a CPU, main.py times the step (all of the above, in two short child processes) with
``TF_ENABLE_ONEDNN_OPTS=0`` and ``=1``, keeps the faster and caches it like the rest.
Measured on this project's machine with oneDNN, ATen and XLA capped at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``, the EPYC's instruction set): mini5w1s 2.43 s per step with
Eigen (its best path, loop) against 1.20 s with oneDNN (loop) and torch.func's 2.08 s
(docs/speed.md, "On a CPU without AVX-512").  A ``TF_ENABLE_ONEDNN_OPTS`` set by the user is
always obeyed.
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

THREAD_SPLIT = "MAML_TF_THREAD_SPLIT"  # maml_tf.methods.maml reads it (configure_threads)
CACHE_NAME = "autotune.json"
CACHE_VERSION = 1


def cpu_description():
    """{'model': ..., 'id': ..., 'extensions': [...], 'cpus': n}: what decides which path is
    fastest.  ``id`` is the processor's family/model/stepping numbers (ARM: implementer/part):
    virtual machines often show one ``model name`` ("Intel(R) Xeon(R) Processor") for
    different generations, whose fastest paths differ."""
    model, flags, ids = platform.processor() or platform.machine(), set(), {}
    id_keys = ("cpu family", "model", "stepping", "CPU implementer", "CPU part", "CPU variant")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in id_keys and key not in ids:
                    ids[key] = value.strip()
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "id": " ".join(f"{k.replace('cpu ', '').replace('CPU ', '').lower()} {v}"
                                           for k, v in ids.items()),
            "extensions": [e for e in wanted if e in flags], "cpus": cpus}


# CPU extensions for which TensorFlow's Linux build turns oneDNN on by default
# (tensorflow/core/util/port.cc, DefaultOneDnnPolicy; plus the ARM Neoverse V1).
ONEDNN_DEFAULT_EXTENSIONS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")


def tf_onednn_default(extensions, system=None, machine=None):
    """Whether TensorFlow turns oneDNN on by itself on a CPU with these extensions
    (/proc/cpuinfo flag names), without ``TF_ENABLE_ONEDNN_OPTS``.  None where this
    module does not decide (not Linux on x86-64)."""
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    if system != "Linux" or machine.lower() not in ("x86_64", "amd64"):
        return None
    return any(e in extensions for e in ONEDNN_DEFAULT_EXTENSIONS)


def _tf_version():
    from importlib import metadata
    for dist in ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tf-nightly", "tf-nightly-cpu"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


# Config fields that do not change the work of one training step (run bookkeeping,
# schedules, step sizes): left out of the key of the oneDNN decision.
_NOT_STEP = {"logdir", "log", "resume", "train", "test_iter", "test_set", "seed", "data_dir", "save_interval",
             "max_to_keep", "num_test_tasks", "test_seed", "task_pool", "metatrain_iterations",
             "pretrain_iterations", "explicit", "step_times", "init_checkpoint", "pretrained", "fuse_steps",
             "meta_lr", "update_lr", "train_update_lr", "min_meta_lr", "msl_iterations", "da_iterations",
             "cosine_annealing", "imaml_lambda", "cg_damping", "lam_damping", "es_sigma", "baseline"}


def _config_fields(cfg):
    import dataclasses
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def onednn_trial(cfg):
    """Seconds of the fastest training-step path for ``cfg`` in a child process run
    with ``TF_ENABLE_ONEDNN_OPTS`` = 0 and = 1: {'0': s, '1': s} (a setting whose child
    failed is left out)."""
    return _trials(cfg, "TF_ENABLE_ONEDNN_OPTS")


def threads_trial(cfg):
    """The same with each op over every core (``MAML_TF_THREAD_SPLIT=0``) and with ops side
    by side, one core each (``=1``; :func:`maml_tf.methods.maml.thread_settings`)."""
    return _trials(cfg, THREAD_SPLIT)


def _trials(cfg, variable):
    """{value: seconds of the fastest path} for ``variable`` = 0 and = 1, one child each."""
    payload = json.dumps({k: v for k, v in _config_fields(cfg).items() if k != "explicit"}, default=str)
    # The child imports this package from where this process found it.
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    base["PYTHONPATH"] = os.pathsep.join([root] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else []))
    seconds = {}
    for value in ("0", "1"):
        env = dict(base, **{variable: value})
        try:
            proc = subprocess.run([sys.executable, "-m", "maml_tf.run.autotune", "--trial", payload],
                                  env=env, capture_output=True, text=True, timeout=900)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode == 0 and lines:
                seconds[value] = float(json.loads(lines[-1])["seconds"])
        except (subprocess.TimeoutExpired, OSError, ValueError, KeyError):
            continue
    return seconds


def choose_onednn(cfg, out=None, extensions=None, trial=onednn_trial, before_trial=None):
    """Set ``TF_ENABLE_ONEDNN_OPTS`` for ``cfg``'s run where measuring shows it matters;
    call before TensorFlow is imported.  Returns the value set, or None (left alone).

    Decides only for conv nets (the fc nets run XLA, which does not use oneDNN), on
    Linux x86-64 CPUs where TensorFlow would leave oneDNN off, when the user has not
    set the variable and ``MAML_TF_AUTOTUNE`` is not 0.  A training run measures
    (``trial``) once per machine and configuration and caches the choice; an
    evaluation, a distributed run and a machine with a GPU only read the cache.
    ``before_trial``: called just before a trial (main.py checks the data folder
    there, so a missing dataset is reported before minutes of timing); ``extensions``:
    the CPU's (tests).
    """
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ or os.environ.get("MAML_TF_AUTOTUNE", "1") == "0":
        return None
    if cfg.datasource == "sinusoid" or not cfg.conv:
        return None
    cpu = cpu_description()
    if extensions is not None:
        cpu["extensions"] = list(extensions)
    if tf_onednn_default(cpu["extensions"]) is not False:
        return None
    machine = f"{_cpu_key(cpu)}|tf={_tf_version()}|onednn-choice"

    def told(seconds, choice):
        times = ", ".join(f"{'oneDNN' if v == '1' else 'Eigen (oneDNN off)'} {t:.3g} s"
                          for v, t in sorted(seconds.items(), reverse=True))
        return (f"Timed the step's kernels on this CPU ({times} per step): oneDNN "
                f"{'on' if choice == '1' else 'off'} (cached in {_cache_path()}; "
                f"TF_ENABLE_ONEDNN_OPTS=0/1 decides it yourself)")
    choice = _measured_choice(cfg, machine, trial, out, before_trial, told,
                              "This CPU has no AVX-512 VNNI/BF16 or AMX, so TensorFlow leaves its oneDNN "
                              "kernels off: timing the step with and without them (once per machine and "
                              "configuration)...")
    if choice is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = choice
    return choice


def _measured_choice(cfg, machine, trial, out, before_trial, told, intro):
    """The cached choice ('0' / '1') for ``cfg`` on ``machine``, or measured now by
    ``trial`` and cached; None where nothing is decided (see :func:`choose_onednn`)."""
    key = json.dumps({k: v for k, v in _config_fields(cfg).items() if k not in _NOT_STEP},
                     sort_keys=True, default=str)
    entry = _read_cache().get(machine, {}).get(key)
    if entry is None:
        # Measured by a training run on this machine only: not by an evaluation, nor by
        # each worker of a distributed run, nor where a GPU does the convolutions.
        gpu = os.path.exists("/dev/nvidia0") and os.environ.get("CUDA_VISIBLE_DEVICES", "x") not in ("", "-1")
        if not cfg.train or cfg.distribution != "none" or gpu:
            return None
        if before_trial is not None:
            before_trial()
        if out is not None:
            out(intro)
        seconds = trial(cfg)
        if not seconds:
            return None
        choice = min(seconds, key=seconds.get)
        entry = {"choice": choice, "seconds": seconds, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
        _store(machine, key, entry)
        if out is not None:
            out(told(seconds, choice))
    return entry["choice"]


def choose_threads(cfg, out=None, trial=threads_trial, before_trial=None, cpus=None):
    """Set ``MAML_TF_THREAD_SPLIT`` for ``cfg``'s run where measuring shows it matters: each
    op over every core (0, TensorFlow's way) or ops side by side, one core each (1;
    :func:`maml_tf.methods.maml.thread_settings`).  Call before TensorFlow runs an op.
    Returns the value set, or None (left alone).

    Decides for conv nets on two or more CPUs (the fc nets run on one intra-op thread
    anyway), when the user has not set the variable and ``MAML_TF_AUTOTUNE`` is not 0;
    measured once per machine, oneDNN setting and configuration, by a training run, in
    two child processes (each also times and caches its best path), as
    :func:`choose_onednn`.  ``cpus``: the CPUs this process may use (tests).
    """
    if THREAD_SPLIT in os.environ or os.environ.get("MAML_TF_AUTOTUNE", "1") == "0":
        return None
    if cfg.datasource == "sinusoid" or not cfg.conv:
        return None
    cpu = cpu_description()
    if cpus is not None:
        cpu["cpus"] = cpus
    if cpu["cpus"] < 2:
        return None
    machine = f"{_cpu_key(cpu)}|tf={_tf_version()}|onednn={os.environ.get('TF_ENABLE_ONEDNN_OPTS', '')}|threads-choice"

    def told(seconds, choice):
        times = ", ".join(f"{'ops side by side, one core each' if v == '1' else 'each op over every core'} "
                          f"{t:.3g} s" for v, t in sorted(seconds.items()))
        return (f"Timed the step's use of the {cpu['cpus']} cores ({times} per step): "
                f"{'ops side by side' if choice == '1' else 'each op over every core'} "
                f"(cached in {_cache_path()}; {THREAD_SPLIT}=0/1 decides it yourself)")
    choice = _measured_choice(cfg, machine, trial, out, before_trial, told,
                              f"Timing the step with each op over all {cpu['cpus']} cores and with ops side "
                              f"by side, one core each (once per machine and configuration)...")
    if choice is not None:
        os.environ[THREAD_SPLIT] = choice
    return choice


def _cpu_key(cpu):
    ident = f" ({cpu['id']})" if cpu.get("id") else ""
    return f"{cpu['model']}{ident}|{','.join(cpu['extensions'])}|cpus={cpu['cpus']}"


def _machine_key(tf):
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")
    split = "|threads=split" if os.environ.get(THREAD_SPLIT) == "1" else ""  # another step speed
    return f"{_cpu_key(cpu_description())}|gpus={','.join(gpus)}|tf={tf.__version__}|onednn={onednn}{split}"


def _cache_path():
    folder = os.environ.get("MAML_TF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "maml_tf")
    return os.path.join(folder, CACHE_NAME)


def _read_cache():
    try:
        with open(_cache_path()) as f:
            data = json.load(f)
        return data if data.get("version") == CACHE_VERSION else {"version": CACHE_VERSION}
    except (OSError, ValueError):
        return {"version": CACHE_VERSION}


def _store(machine, key, entry):
    """Add ``entry`` under ``machine`` / ``key`` to the cache file.

    The file is read again just before writing, under an exclusive lock, and only this
    entry is added: two runs started together (one pinned to each core, say) each take
    minutes to measure, and writing back the copy read before measuring would drop the
    entry the other run stored meanwhile (that happened: two runs started side by side
    kept one choice of two, and the other was timed again at its next start)."""
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(f"{path}.lock", "a") as lock:
            try:
                import fcntl
                fcntl.flock(lock, fcntl.LOCK_EX)
            except (ImportError, OSError):  # no flock (Windows): the merge alone
                pass
            data = _read_cache()
            data.setdefault(machine, {})[key] = entry
            tmp = f"{path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
    except OSError:  # a read-only home: measure again next time
        pass


def static_choice(spec, tf):
    """(task_mode, jit_compile) without measuring: what is usually fastest."""
    from maml_tf.core.networks import grouped_conv_differentiable
    if spec.kind == "conv" and not tf.config.list_physical_devices("GPU") and not grouped_conv_differentiable():
        return "loop", False
    return "batched", spec.kind == "fc"


def candidates(spec, tf, task_mode=None, jit_compile=None):
    """The (task_mode, jit_compile) pairs worth timing for ``spec``, respecting what the
    user fixed."""
    modes = [task_mode] if task_mode else ["batched", "loop"]
    gpu = bool(tf.config.list_physical_devices("GPU"))
    if jit_compile is not None:
        jits = [jit_compile]
    elif spec.kind == "fc" or gpu:
        jits = [True, False]
    else:
        jits = [False]  # XLA:CPU convolutions: several times slower than oneDNN's
    return [(m, j) for m in modes for j in jits]


def _signature(spec, settings, shapes):
    return json.dumps({"spec": {k: getattr(spec, k) for k in spec.__dataclass_fields__},
                       "settings": settings, "shapes": shapes}, sort_keys=True, default=str)


def choose(spec, settings, shapes, task_mode=None, jit_compile=None, out=None, steps=None):
    """(task_mode, jit_compile) for training ``spec``.

    settings: MAML keyword arguments that change the step's work (loss,
    update_batch_size, update_lr, num_updates, first_order, clip_value).  shapes: the
    four input shapes ([T, NK, D], [T, NK, N], [T, NQ, D], [T, NQ, N]).  Pairs the user
    fixed are obeyed; the rest is measured once per machine and configuration (see the
    module docstring).  ``out`` receives one line when a measurement is made.
    """
    return _choose(spec, settings, shapes, task_mode, jit_compile, out, steps)[0]


def _path_name(opt):
    return f"{opt[0]}/{'xla' if opt[1] else 'graph'}"


def _choose(spec, settings, shapes, task_mode, jit_compile, out, steps):
    """:func:`choose`'s (task_mode, jit_compile) and the chosen path's seconds per step
    as this call measured them (None where it measured nothing: a single candidate,
    autotuning off, or the choice read from the cache)."""
    from maml_tf.runtime import import_tensorflow
    tf = import_tensorflow()
    options = candidates(spec, tf, task_mode, jit_compile)
    if len(options) == 1:
        return options[0], None
    if os.environ.get("MAML_TF_AUTOTUNE", "1") == "0":
        mode, jit = static_choice(spec, tf)
        return (task_mode or mode, jit if jit_compile is None else jit_compile), None
    machine, sig = _machine_key(tf), _signature(spec, settings, shapes)
    entry = _read_cache().get(machine, {}).get(sig)
    if entry is not None and tuple(entry["choice"]) in options:
        return tuple(entry["choice"]), None
    timings = measure_all(spec, settings, shapes, options, steps=steps)
    best = min(timings, key=timings.get)
    _store(machine, sig, {
        "choice": list(best), "seconds": {_path_name(opt): t for opt, t in timings.items()},
        "measured": time.strftime("%Y-%m-%d %H:%M:%S")})
    if out is not None:
        table = ", ".join(f"{m}{'+XLA' if j else ''} {t * 1e3:.3g} ms" for (m, j), t in timings.items())
        out(f"Timed the step's paths on this machine ({table}): using {best[0]}"
            f"{' with XLA' if best[1] else ''} (cached in {_cache_path()})")
    return best, timings[best]


def _random_batch(shapes, tf):
    rng = np.random.default_rng(0)
    batch = []
    for i, shape in enumerate(shapes):
        if i % 2:  # labels: one-hot (classification) or values (regression)
            lab = rng.integers(0, shape[-1], shape[:-1]) if shape[-1] > 1 else None
            x = np.eye(shape[-1], dtype=np.float32)[lab] if lab is not None else rng.standard_normal(shape)
        else:
            x = rng.uniform(0, 1, shape)
        batch.append(tf.constant(np.asarray(x, np.float32)))
    return batch


def measure_all(spec, settings, shapes, options, steps=None):
    """{(task_mode, jit_compile): median seconds of one meta-training step} for each
    of ``options``, fresh models on random data.

    The candidates are timed interleaved, one step of each in turn (the order rotating
    every round), not one after another: a burst of load from elsewhere, or the
    process being paused, then lands on every candidate alike instead of making one
    of them look slow, and the cached choice is not decided by it.  Each model is
    compiled and run twice before timing; ``steps`` rounds (default: about a second of
    the slowest candidate, at least 3, at most 200)."""
    from maml_tf.methods.maml import MAML
    import tensorflow as tf
    batch = _random_batch(shapes, tf)
    models = {}
    for opt in options:
        models[opt] = MAML(spec, task_mode=opt[0], jit_compile=opt[1], **settings)
        models[opt].metatrain_step(*batch)  # trace / compile
        models[opt].metatrain_step(*batch)
    if steps is None:
        slowest = 0.0
        for model in models.values():
            t0 = time.perf_counter()
            model.metatrain_step(*batch)
            slowest = max(slowest, time.perf_counter() - t0)
        steps = int(min(200, max(3, 1.0 / max(slowest, 1e-6))))
    times = {opt: [] for opt in options}
    order = list(options)
    for r in range(steps):
        for opt in order[r % len(order):] + order[:r % len(order)]:
            t0 = time.perf_counter()
            models[opt].metatrain_step(*batch)
            times[opt].append(time.perf_counter() - t0)
    return {opt: statistics.median(t) for opt, t in times.items()}


def measure(spec, settings, shapes, task_mode, jit_compile, steps=None):
    """Median seconds of one meta-training step of a fresh model on random data."""
    return measure_all(spec, settings, shapes, [(task_mode, jit_compile)], steps)[(task_mode, jit_compile)]


def _trial_main(payload):
    """Child of :func:`onednn_trial` / :func:`threads_trial`: the best path's seconds per
    step for the config in ``payload`` under this process's TF_ENABLE_ONEDNN_OPTS and
    MAML_TF_THREAD_SPLIT, as one JSON line."""
    from maml_tf.runtime import import_tensorflow
    import_tensorflow()
    from maml_tf.run.config import Config
    from maml_tf.run.model import input_shapes, network_spec, step_settings
    from maml_tf.methods.maml import configure_threads
    cfg = Config(**json.loads(payload))
    spec, shapes, settings = network_spec(cfg), input_shapes(cfg), step_settings(cfg)
    configure_threads(spec)  # as the run will: MAML_TF_THREAD_SPLIT from this child's environment
    task_mode = None if cfg.task_mode == "auto" else cfg.task_mode
    best, seconds = _choose(spec, settings, shapes, task_mode, cfg.xla, None, None)
    if seconds is None:
        # The path came from the cache (or was the only one): time it now, so that both
        # children of a trial are measured minutes apart at most, not one of them in an
        # earlier session.  A path measured just now is not timed twice.
        seconds = measure(spec, settings, shapes, *best)
    print(json.dumps({"choice": list(best), "seconds": seconds}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--trial":
        _trial_main(sys.argv[2])
    else:
        print("usage: python -m maml_tf.run.autotune --trial CONFIG_JSON (used by choose_onednn)", file=sys.stderr)
        sys.exit(2)
