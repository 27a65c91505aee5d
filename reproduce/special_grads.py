#!/usr/bin/env python
"""What the original's special_grads.py did to the second-order miniImageNet meta-gradient.

    python reproduce/special_grads.py [--batches 4] [--checkpoint PREFIX] [--seed 0]

On TensorFlow < 1.2 MaxPoolGrad had no registered gradient and the original registered
its own (special_grads.py): (max_pool_grad(x, output, grad), 0, 0) for MaxPoolGrad's
inputs (x, pooled x, incoming gradient).  MaxPoolGrad is linear in the incoming gradient
and piecewise constant in the others, so its one nonzero derivative is the one set to 0:
every second-order term that passes through a max-pool layer's gradient routing is lost.
(The first value is not a derivative of anything; it depends on how that TensorFlow's
kernel read mis-shaped arguments, so it is left out here.)  TF 1.2 registered the exact
MaxPoolGradGrad, which maml-tf uses.

This computes, in float64, the miniImageNet 5-way 1-shot second-order meta-gradient (the
usage line: 32 filters, max-pool, 5 inner steps of 0.01) exactly, with the max-pool
routing's derivative set to 0 as special_grads did, and in first order, on the authors'
released model (``--checkpoint``, default the shared copy; random initial weights if
absent) and synthetic image batches, and prints how far apart they are: the cosine
similarity and the relative difference of the whole meta-gradient and per layer.
"""
import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
RELEASED = os.path.join(os.path.dirname(REPO), "shared", "data", "cbfinn_maml_checkpoint",
                        "miniimagenet1shot", "model59000")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--checkpoint", default=RELEASED)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from maml_tf.runtime import import_tensorflow
    tf = import_tensorflow()
    from maml_tf.core.networks import build_network, tf_before_1_2_max_pool
    from maml_tf.methods.maml import MAML
    from maml_tf.paper.crosscheck import _synthetic_images
    from maml_tf.data.image_data import EpisodeSampler

    spec = build_network("miniimagenet", 84 * 84 * 3, 5, num_filters=32, max_pool=True)
    models = {name: MAML(spec, loss="xent", update_batch_size=1, update_lr=0.01, num_updates=5,
                         first_order=(name == "first order"), dtype=tf.float64, task_mode="loop")
              for name in ("exact", "special_grads", "first order")}
    origin = "random initial weights (seed 0)"
    if args.checkpoint and os.path.exists(args.checkpoint + ".index"):
        from maml_tf.run.tf1_checkpoint import load_tf1_checkpoint
        for m in models.values():
            load_tf1_checkpoint(m, args.checkpoint)
        origin = f"the authors' released model ({args.checkpoint})"
    sampler = EpisodeSampler(_synthetic_images("miniimagenet", 64, 20, args.seed), 5, 1, 15,
                             seed=args.seed, meta_batch_size=4)
    keys = list(models["exact"].weights) + list(models["exact"].norm_params)
    totals = {name: [] for name in models}
    for _ in range(args.batches):
        batch = [tf.constant(a, tf.float64) for a in sampler.sample()]
        grads = {}
        for name, m in models.items():
            if name == "special_grads":
                with tf_before_1_2_max_pool():
                    grads[name] = [g.numpy() for g in m.meta_gradients(*batch)[1]]
            else:
                grads[name] = [g.numpy() for g in m.meta_gradients(*batch)[1]]
        for name in models:
            totals[name].append(grads[name])
    print(f"miniImageNet 5-way 1-shot, 5 inner steps of 0.01, second order; {origin}; "
          f"{args.batches} synthetic meta-batches of 4 tasks")

    def flat(gs):
        return np.concatenate([g.ravel() for g in gs])

    def compare(a, b):
        cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        return cos, float(np.linalg.norm(a - b) / np.linalg.norm(a))
    ex = [flat(g) for g in totals["exact"]]
    for name in ("special_grads", "first order"):
        other = [flat(g) for g in totals[name]]
        cs = [compare(a, b) for a, b in zip(ex, other)]
        print(f"  exact vs {name:14s}: cosine {np.mean([c for c, _ in cs]):.4f} "
              f"(min {min(c for c, _ in cs):.4f}), relative difference {np.mean([d for _, d in cs]):.3f}")
    print("  per layer (mean over batches), relative difference to exact: special_grads / first order")
    for j, key in enumerate(keys):
        e = [g[j].ravel() for g in totals["exact"]]
        s = [g[j].ravel() for g in totals["special_grads"]]
        f = [g[j].ravel() for g in totals["first order"]]
        if max(np.linalg.norm(x) for x in e) < 1e-12:
            continue
        rs = np.mean([np.linalg.norm(a - b) / np.linalg.norm(a) for a, b in zip(e, s)])
        rf = np.mean([np.linalg.norm(a - b) / np.linalg.norm(a) for a, b in zip(e, f)])
        print(f"    {key:8s} {rs:.3f} / {rf:.3f}")


if __name__ == "__main__":
    main()
