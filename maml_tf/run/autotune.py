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
per candidate; the real model is untouched) and keeps the fastest; the choice is cached
per machine (CPU model, vector extensions, CPUs available, GPUs, TensorFlow version)
and configuration in ``$MAML_TF_CACHE_DIR`` or ``~/.cache/maml_tf/autotune.json``, so
later runs start at once.  ``MAML_TF_AUTOTUNE=0`` skips the measurement and takes the
static default (batched, XLA for fc nets only; loop for conv nets without a grouped-conv
gradient).  An explicit ``--task_mode`` / ``--xla`` is always obeyed.
"""
import json
import os
import platform
import statistics
import time

import numpy as np

CACHE_NAME = "autotune.json"
CACHE_VERSION = 1


def cpu_description():
    """{'model': ..., 'extensions': [...], 'cpus': n}: what decides which path is fastest."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
              "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "extensions": [e for e in wanted if e in flags], "cpus": cpus}


def _machine_key(tf):
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    cpu = cpu_description()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")
    return (f"{cpu['model']}|{','.join(cpu['extensions'])}|cpus={cpu['cpus']}|gpus={','.join(gpus)}|"
            f"tf={tf.__version__}|onednn={onednn}")


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


def _write_cache(data):
    path = _cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
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
    from maml_tf.runtime import import_tensorflow
    tf = import_tensorflow()
    options = candidates(spec, tf, task_mode, jit_compile)
    if len(options) == 1:
        return options[0]
    if os.environ.get("MAML_TF_AUTOTUNE", "1") == "0":
        mode, jit = static_choice(spec, tf)
        return (task_mode or mode, jit if jit_compile is None else jit_compile)
    machine, sig = _machine_key(tf), _signature(spec, settings, shapes)
    cache = _read_cache()
    entry = cache.get(machine, {}).get(sig)
    if entry is not None and tuple(entry["choice"]) in options:
        return tuple(entry["choice"])
    timings = {opt: measure(spec, settings, shapes, *opt, steps=steps) for opt in options}
    best = min(timings, key=timings.get)
    cache.setdefault(machine, {})[sig] = {
        "choice": list(best), "seconds": {f"{m}/{'xla' if j else 'graph'}": t for (m, j), t in timings.items()},
        "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    _write_cache(cache)
    if out is not None:
        table = ", ".join(f"{m}{'+XLA' if j else ''} {t * 1e3:.3g} ms" for (m, j), t in timings.items())
        out(f"Timed the step's paths on this machine ({table}): using {best[0]}"
            f"{' with XLA' if best[1] else ''} (cached in {_cache_path()})")
    return best


def measure(spec, settings, shapes, task_mode, jit_compile, steps=None):
    """Median seconds of one meta-training step of a fresh model on random data."""
    from maml_tf.methods.maml import MAML
    import tensorflow as tf
    model = MAML(spec, task_mode=task_mode, jit_compile=jit_compile, **settings)
    rng = np.random.default_rng(0)
    batch = []
    for i, shape in enumerate(shapes):
        if i % 2:  # labels: one-hot (classification) or values (regression)
            lab = rng.integers(0, shape[-1], shape[:-1]) if shape[-1] > 1 else None
            x = np.eye(shape[-1], dtype=np.float32)[lab] if lab is not None else rng.standard_normal(shape)
        else:
            x = rng.uniform(0, 1, shape)
        batch.append(tf.constant(np.asarray(x, np.float32)))
    model.metatrain_step(*batch)  # trace / compile
    model.metatrain_step(*batch)
    if steps is None:  # about a second of timing, at least 3 steps
        t0 = time.perf_counter()
        model.metatrain_step(*batch)
        steps = int(min(200, max(3, 1.0 / max(time.perf_counter() - t0, 1e-6))))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.metatrain_step(*batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
