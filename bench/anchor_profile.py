#!/usr/bin/env python
"""Where the time of the torch.func anchor's step goes, beside bench/profile_step.py's table of ours.

    /work/venvs/torch/bin/python bench/anchor_profile.py --config omniglot5w1s [--first_order]
        [--tasks vmap|loop] [--threads 1] [--iters 5] [--top 15] [--anchors_dir ../shared/anchors]

Run it with the anchor's interpreter (the one that has torch; bench/README.md).  It imports
``torch_maml_bench.py`` from the anchors folder as it is (nothing of it is copied here), builds
its training step exactly as its ``benchmark()`` does (the same weights, the same fixed
meta-batch), runs two steps to warm up, then ``--iters`` steps under ``torch.profiler`` and
prints the self CPU time of each op per step, the convolutions (forward, and backward: one
aten op gives the input and filter gradients together) summed apart from the rest.

Compare it with ``python bench/profile_step.py --config C --threads 1``: with one thread the
kernel times of both profiles add up to their steps' wall times (with more threads, TF's
profile sums the kernels of both cores while torch's counts the calling thread's time), so
"our convolutions take X ms against torch's Y ms" reads directly.  Both profilers add
overhead per op, so read the shares and the convolution totals, not the walls, against
bench/meta_step.py's timings.
"""
import argparse
import collections
import importlib.util
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_anchor(anchors_dir):
    path = pathlib.Path(anchors_dir) / "torch_maml_bench.py"
    if not path.is_file():
        sys.exit(f"error: no {path}: give --anchors_dir, the folder of the torch.func anchor")
    spec = importlib.util.spec_from_file_location("torch_maml_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def is_conv(name):
    """aten::mkldnn_convolution, aten::_convolution, aten::convolution_backward, aten::conv2d, ..."""
    name = name.lower()
    return "convolution" in name or "conv2d" in name


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="omniglot5w1s")
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--tasks", choices=["vmap", "loop"], default="vmap")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--anchors_dir", default=os.environ.get("MAML_ANCHORS_DIR", str(REPO.parent / "shared" / "anchors")))
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = ap.parse_args()
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        sys.exit("error: torch is not installed in this interpreter: run this script with the anchor's "
                 "(e.g. /work/venvs/torch/bin/python; bench/README.md says how to make it)")
    tb = load_anchor(args.anchors_dir)
    if args.config not in tb.CONFIGS:
        sys.exit(f"error: --config={args.config} is not one of the anchor's: {', '.join(tb.CONFIGS)}")
    tb.set_threads(args.threads)
    # As the anchor's benchmark(): its weights, its state, its step, its fixed meta-batch.
    cfg = tb.CONFIGS[args.config]
    rng = tb.np.random.default_rng(tb.SEED)
    inner, outer = tb.to_torch_params(cfg, *tb.init_params_np(cfg, rng), torch.float32)
    model = tb.build_model(cfg, inner, outer)
    state = tb.TrainState(inner, outer)
    step = tb.make_train_step(cfg, model, args.first_order, args.tasks)
    batch = tb.to_torch_batch(cfg, tb.make_batch_np(cfg, rng), torch.float32)
    for _ in range(2):
        step(state, batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.iters):
            step(state, batch)
        wall = (time.perf_counter() - t0) / args.iters
    ms = collections.Counter()
    count = collections.Counter()
    for ev in prof.key_averages():
        ms[ev.key] += ev.self_cpu_time_total / 1e3 / args.iters
        count[ev.key] += ev.count / args.iters
    total = sum(ms.values())
    conv = sum(v for k, v in ms.items() if is_conv(k))
    if args.json:
        print(json.dumps({"stack": "torch.func", "config": args.config, "first_order": args.first_order,
                          "tasks": args.tasks, "threads": args.threads, "wall_ms": round(wall * 1e3, 2),
                          "op_ms": round(total, 2), "conv_ms": round(conv, 2),
                          "ops": {k: round(v, 3) for k, v in ms.most_common(args.top)}}))
        return
    print(f"torch.func {args.config} first_order={args.first_order} tasks={args.tasks} "
          f"threads={args.threads}: wall {wall * 1e3:.1f} ms/step under the profiler, "
          f"self CPU time {total:.1f} ms/step over {sum(count.values()):.0f} ops/step")
    print(f"{'ms/step':>9} {'share':>6} {'count':>6}  op")
    for key, v in ms.most_common(args.top):
        print(f"{v:9.2f} {100 * v / total:5.1f}% {count[key]:6.0f}  {key}")
    print(f"convolutions (forward and backward): {conv:.1f} ms/step ({100 * conv / total:.0f}%); "
          f"the rest {total - conv:.1f} ms")


if __name__ == "__main__":
    main()
