#!/usr/bin/env python
"""How far --precision=bfloat16 moves the network's outputs, its gradient and its meta-gradient,
against float64, beside float32: one JSON line.

    python bench/precision_error.py [--config omniglot5w1s] [--seed 1]

One task of the configuration's usage line (N-way K-shot, random binary images for Omniglot,
uniform ones for miniImageNet), the network at its initialisation (``--seed``), the usage line's
inner step size and number of steps, second order.  Relative errors: the logits' largest
difference over their largest value; the gradients' norm of the difference over the reference's
norm, all weights together.  Seconds on a CPU.
"""
import argparse
import dataclasses
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meta_step  # noqa: E402


def _error(g, ref):
    return float(np.sqrt(sum(np.sum((g[k] - ref[k]) ** 2) for k in ref))
                 / np.sqrt(sum(np.sum(ref[k] ** 2) for k in ref)))


def measure(config="omniglot5w1s", seed=1):
    import tensorflow as tf
    from maml_tf import meta_gradient
    from maml_tf.core import losses
    from maml_tf.run.model import network_spec
    cfg = meta_step._config(config)
    spec = network_spec(cfg)
    rng = np.random.default_rng(seed)
    n, k = cfg.num_classes, cfg.update_batch_size
    draw = (lambda: (rng.random((n * k, cfg.dim_input)) < 0.2).astype(np.float64)) \
        if cfg.datasource == "omniglot" else (lambda: rng.random((n * k, cfg.dim_input)))
    y = np.eye(n)[np.repeat(np.arange(n), k)]
    support, query = (draw(), y), (draw(), y)
    w, nparams = spec.init(seed=seed, dtype=np.float64)
    loss_fn = losses.make_xent(k)

    def run(precision, dtype):
        s = dataclasses.replace(spec, precision=precision)
        c = lambda t: tf.constant(np.asarray(t), dtype)
        W, P = {a: c(v) for a, v in w.items()}, {a: c(v) for a, v in nparams.items()}
        with tf.GradientTape() as tape:
            tape.watch(list(W.values()))
            logits = s.forward(c(support[0]), W, P)
            loss = loss_fn(logits, c(support[1]))
        grad = tape.gradient(loss, W)
        _, meta = meta_gradient(lambda x, ww: s.forward(x, ww, P), W, (c(support[0]), c(y)),
                                (c(query[0]), c(y)), loss_fn, cfg.update_lr, cfg.num_updates)
        as64 = lambda d: {a: v.numpy().astype(np.float64) for a, v in d.items()}
        return logits.numpy().astype(np.float64), as64(grad), as64(meta)

    ref = run("float32", tf.float64)
    out = {"config": config, "seed": seed, "inner_steps": cfg.num_updates, "update_lr": cfg.update_lr}
    for name, precision in (("float32", "float32"), ("bfloat16", "bfloat16")):
        logits, grad, meta = run(precision, tf.float32)
        out[name] = {"logits": float(np.abs(logits - ref[0]).max() / np.abs(ref[0]).max()),
                     "gradient": _error(grad, ref[1]), "meta_gradient": _error(meta, ref[2])}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=[c for c, v in meta_step.CONFIGS.items() if v["datasource"] != "sinusoid"],
                    default="omniglot5w1s")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(json.dumps(measure(args.config, args.seed)))


if __name__ == "__main__":
    main()
