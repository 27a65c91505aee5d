#!/usr/bin/env python
"""Where the peak memory of the training step goes, stage by stage.

    python bench/memory_profile.py --config omniglot5w1s [--first_order] [--threads N]
    python bench/memory_profile.py --import_only

Prints one JSON line: the process's resident high-water mark (``VmHWM``, MB;
the quantity ``peak_rss_mb`` of meta_step.py reports at the end) after
importing TensorFlow (as the entry points do, :mod:`maml_tf.runtime`), after
building the model, after tracing the training step, after the first step and
after four steps, and ``tensors_peak_mb``: the peak of the bytes held by
tensors, read from TensorFlow's BFC allocator (the script re-runs itself with
``TF_CPU_ALLOCATOR_USE_BFC=true`` for that number, since switching allocators
changes the other figures slightly).  Model, weights and data are those of
meta_step.py.  ``--import_only`` stops after the import and lists the largest
resident mappings (shared libraries, anonymous memory) from /proc/self/smaps;
``--plain_import`` imports TensorFlow the usual way (with its eager Keras import)
for comparison.
"""
import argparse
import json
import os
import subprocess
import sys

import meta_step


def _hwm_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def _largest_mappings(n=5):
    """{file or '[anonymous]': resident MB}, the n largest, from /proc/self/smaps."""
    rss, name = {}, None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts[0] == "Rss:":
                rss[name] = rss.get(name, 0) + int(parts[1]) / 1024.0
            elif not parts[0].endswith(":"):  # a mapping's header line
                path = parts[5] if len(parts) > 5 else ""
                name = os.path.basename(path) if path.startswith("/") else "[anonymous]"
    return dict(sorted(rss.items(), key=lambda kv: -kv[1])[:n])


def stages(args):
    if args.plain_import:
        import tensorflow  # noqa: F401  (set_threads then finds it imported)
    meta_step.set_threads(args.threads, None if args.import_only else args.config)
    import tensorflow as tf  # already imported by set_threads (without Keras)
    out = {"config": args.config, "first_order": args.first_order, "import_mb": _hwm_mb()}
    if args.import_only:
        out["largest_mappings_mb"] = {k: round(v, 1) for k, v in _largest_mappings().items()}
        return out
    model, _, next_batch = meta_step.build(args.config, args.first_order)
    batch = [tf.constant(a) for a in next_batch()]
    out["build_mb"] = _hwm_mb()
    model._metatrain.fn.get_concrete_function(*batch)  # pylint: disable=protected-access
    out["trace_mb"] = _hwm_mb()
    model.metatrain_step(*batch)
    out["first_step_mb"] = _hwm_mb()
    for _ in range(3):
        model.metatrain_step(*batch)
    out["four_steps_mb"] = _hwm_mb()
    if os.environ.get("TF_CPU_ALLOCATOR_USE_BFC") == "true":
        out["tensors_peak_mb"] = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2**20
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="omniglot5w1s", choices=sorted(meta_step.CONFIGS))
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--import_only", action="store_true")
    ap.add_argument("--plain_import", action="store_true")
    ap.add_argument("--_bfc_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = stages(args)
    if not args._bfc_child and not args.import_only:
        cmd = [sys.executable, __file__] + sys.argv[1:] + ["--_bfc_child"]
        env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        out["tensors_peak_mb"] = json.loads(proc.stdout.strip().splitlines()[-1])["tensors_peak_mb"]
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
