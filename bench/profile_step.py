#!/usr/bin/env python
"""Where the time of one meta-training step goes: TF op-level profile.

    python bench/profile_step.py --config omniglot5w1s [--first_order] [--iters 3] [--top 25]
                                 [--by type|name] [--task_mode M] [--xla on|off]
                                 [--evaluate STEPS]

Builds the model and data as ``bench/meta_step.py``, runs the step once to
compile, then ``--iters`` steps under ``tf.profiler`` and prints a table of
kernel time per step, grouped by op type (``--by type``, default) or op name,
with the share of the summed kernel time and the wall time of a step.  Kernel
times of ops that ran in parallel on the two cores add up, so the kernel total
can exceed the wall time.  XLA-compiled steps show up as one XlaLaunch op (use
``--xla off`` to see the ops).  ``--evaluate STEPS`` profiles ``MAML.evaluate`` over STEPS
inner steps instead (what main.py's summaries run every 100 iterations, STEPS = 10 for
Omniglot) on the same meta-batches.  The last line sums the convolutions (forward and both
gradients) apart from the rest, as ``bench/anchor_profile.py`` does for the torch.func anchor.
"""
import argparse
import collections
import glob
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meta_step  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(meta_step.CONFIGS), default="omniglot5w1s")
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--by", choices=["type", "name", "scope"], default="type",
                    help="group by op type, full op name, or the network layer (name scope) + type")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--task_mode", default=None)
    ap.add_argument("--xla", choices=["on", "off"], default=None)
    ap.add_argument("--evaluate", type=int, default=None, metavar="STEPS",
                    help="profile MAML.evaluate over STEPS inner steps instead of the training step")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    meta_step.choose_threads(args.config, args.threads, args.first_order, args.task_mode, args.xla)  # as main.py
    meta_step.set_threads(args.threads, args.config)
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    model, cfg, next_batch = meta_step.build(args.config, args.first_order, args.task_mode,
                                             args.xla)
    if args.evaluate is None:
        run = model.metatrain_step
    else:
        def run(*batch):
            return model.evaluate(*batch, num_steps=args.evaluate)
    run(*next_batch())
    run(*next_batch())
    batches = [next_batch() for _ in range(args.iters)]
    logdir = tempfile.mkdtemp(prefix="maml_profile_")
    tf.profiler.experimental.start(logdir)
    t0 = time.perf_counter()
    for b in batches:
        run(*b)
    wall = (time.perf_counter() - t0) / args.iters
    tf.profiler.experimental.stop()

    path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    total = collections.Counter()
    count = collections.Counter()
    for plane in space.planes:
        md = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and "Xla" not in line.name:
                continue
            for ev in line.events:
                name = md[ev.metadata_id].name
                if ":" not in name or "::" in name:  # executor bookkeeping, not a kernel
                    continue
                op_name, op_type = name.rsplit(":", 1)
                if args.by == "type":
                    key = op_type
                elif args.by == "name":
                    key = name
                else:
                    scope = next((p for p in op_name.split("/") if p.startswith("layer")), "other")
                    key = f"{scope} {op_type}"
                total[key] += ev.duration_ps / 1e9 / args.iters  # ms per call
                count[key] += 1 / args.iters
    kernel = sum(total.values())
    what = "step" if args.evaluate is None else f"evaluate({args.evaluate} steps)"
    print(f"config {args.config} {what} first_order={args.first_order} tasks={model.task_mode} "
          f"xla={bool(model.jit_compile)}: wall {wall * 1e3:.1f} ms/call, kernel time {kernel:.1f} ms/call "
          f"over {sum(count.values()):.0f} kernels/call")
    print(f"{'ms/call':>9} {'share':>6} {'count':>6}  op")
    for key, ms in total.most_common(args.top):
        print(f"{ms:9.2f} {100 * ms / kernel:5.1f}% {count[key]:6.0f}  {key}")
    conv = sum(ms for key, ms in total.items() if "Conv2D" in key)  # forward and both gradients
    print(f"convolutions (forward and both gradients): {conv:.1f} ms/call ({100 * conv / kernel:.0f}%); "
          f"the rest {kernel - conv:.1f} ms (bench/anchor_profile.py: the same for the torch.func anchor)")


if __name__ == "__main__":
    main()
