#!/usr/bin/env python
"""The first meta-loss of a benchmark configuration in float32 and float64, ours and torch's.

    python bench/first_loss.py --config omniglot5w1s [--torch_python PY] [--anchors_dir DIR]

Same weights and data as meta_step.py and the anchors (one default_rng(0)
stream).  Prints one JSON line: our meta-loss (the query loss after the inner
steps, before any outer update; compiled as the training step) in float32 and float64,
and, where the torch anchor's Python is found, the anchor's own functions
(``../shared/anchors/torch_maml_bench.py``) evaluated in float32 and float64
(its sequential task loop).  The float64 values say which float32 result is
the more accurate one when the stacks disagree in the 4th digit.
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import meta_step

_TORCH = """
import sys
sys.path.insert(0, {anchors!r})
import numpy as np, torch
import torch_maml_bench as tb
cfg = tb.CONFIGS[{config!r}]
rng = np.random.default_rng(tb.SEED)
inner_np, outer_np = tb.init_params_np(cfg, rng)
batch_np = tb.make_batch_np(cfg, rng)
for dt in (torch.float32, torch.float64):
    inner, outer = tb.to_torch_params(cfg, inner_np, outer_np, dt)
    meta_loss = tb.make_meta_loss(cfg, tb.build_model(cfg, inner, outer), {first_order}, "loop")
    print(repr(float(meta_loss((inner, outer), *tb.to_torch_batch(cfg, batch_np, dt)))))
"""


def ours(config, first_order):
    meta_step.set_threads(len(os.sched_getaffinity(0)), config)
    import numpy as np
    import tensorflow as tf
    from maml_tf.methods.maml import MAML
    model, cfg, next_batch = meta_step.build(config, first_order)
    batch = next_batch()
    out = {}
    for dtype in (tf.float32, tf.float64):
        m = MAML(model.spec, loss="mse" if cfg.datasource == "sinusoid" else "xent",
                 update_batch_size=cfg.update_batch_size, update_lr=cfg.update_lr,
                 num_updates=cfg.num_updates, first_order=first_order, dtype=dtype,
                 task_mode=model.task_mode)
        for src, dst in ((model.weights, m.weights), (model.norm_params, m.norm_params)):
            for k in src:
                dst[k].assign(tf.cast(src[k], dtype))
        # compiled as the training step is (a TF graph, XLA for the fc nets)
        fn = tf.function(lambda *b: m.meta_loss(*b)[0], jit_compile=model.jit_compile,
                         autograph=False)
        out[dtype.name] = float(fn(*[tf.constant(np.asarray(a, dtype.as_numpy_dtype))
                                     for a in batch]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="omniglot5w1s", choices=sorted(meta_step.CONFIGS))
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--torch_python", default=os.environ.get(
        "MAML_TORCH_PYTHON", "/work/venvs/torch/bin/python"))
    ap.add_argument("--anchors_dir", default=os.environ.get(
        "MAML_ANCHORS_DIR", str(meta_step.REPO.parent / "shared" / "anchors")))
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = {"config": args.config, "first_order": args.first_order,
              "maml-tf": ours(args.config, args.first_order)}
    if pathlib.Path(args.torch_python).exists():
        code = _TORCH.format(anchors=args.anchors_dir, config=args.config,
                             first_order=args.first_order)
        proc = subprocess.run([args.torch_python, "-c", code], capture_output=True, text=True,
                              check=True)
        f32, f64 = (float(v) for v in proc.stdout.split()[-2:])
        result["torch.func"] = {"float32": f32, "float64": f64}
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
