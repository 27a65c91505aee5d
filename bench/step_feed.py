#!/usr/bin/env python
"""What feeding real meta-batches costs the step: the step on one fixed batch (as
bench/meta_step.py and the anchors time it) against fresh batches.

    python bench/step_feed.py --config omniglot5w1s [--first_order] [--data_dir ./data]
                              [--block 40] [--rounds 4]

Builds the model as main.py does (the autotuned path) and times ``MAML.metatrain_step``
in alternating blocks of ``--block`` steps, ``--rounds`` times (so drift hits every way
alike), fed four ways: ``fixed`` (one batch, already tensors), ``numpy_same`` (one batch as
numpy arrays, converted each step), ``fresh`` (a new batch each step, drawn outside the
timer), ``prefetch`` (main.py's prefetch thread drawing the next batches while the step
runs).  Prints one JSON line: each way's median milliseconds and its ratio to ``fixed``,
with the CPU.  Omniglot configurations (prepare the data first: README).
"""
import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from meta_step import CONFIGS, _config  # noqa: E402

WAYS = ("fixed", "numpy_same", "fresh", "prefetch")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=[c for c in CONFIGS if CONFIGS[c]["datasource"] == "omniglot"],
                    default="omniglot5w1s")
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--data_dir", default=str(REPO / "data"))
    ap.add_argument("--block", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    if not (pathlib.Path(args.data_dir) / "omniglot_resized").is_dir():
        sys.exit(f"no omniglot_resized in {args.data_dir}: run data/prepare_omniglot.py first (README)")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from maml_tf.runtime import import_tensorflow
    import_tensorflow()
    import numpy as np
    from maml_tf.data.tasks import Prefetcher, make_task_source
    from maml_tf.methods.maml import configure_threads
    from maml_tf.run.autotune import cpu_description
    from maml_tf.run.model import build_model, network_spec

    import dataclasses
    # the usage line's Config as main.py makes it (bench/meta_step.py), on this data folder
    cfg = dataclasses.replace(_config(args.config, args.first_order), data_dir=args.data_dir)
    configure_threads(network_spec(cfg))
    model = build_model(cfg, tune=True, out=lambda line: print(line, file=sys.stderr))
    source = make_task_source(cfg, "train")
    raw = source.sample()
    fixed = model._inputs(raw)
    prefetch = Prefetcher(make_task_source(cfg, "train", seed=cfg.seed + 7))
    for _ in range(5):
        model.metatrain_step(*fixed)
    times = {w: [] for w in WAYS}
    try:
        for _ in range(args.rounds):
            for way in WAYS:
                for _ in range(args.block):
                    batch = (fixed if way == "fixed" else raw if way == "numpy_same"
                             else source.sample() if way == "fresh" else prefetch.next()[0])
                    t0 = time.perf_counter()
                    model.metatrain_step(*batch)
                    times[way].append(time.perf_counter() - t0)
    finally:
        prefetch.close()
    med = {w: float(np.median(times[w])) * 1e3 for w in WAYS}
    print(json.dumps({"config": args.config, "first_order": args.first_order, "path": model.task_mode,
                      "median_ms": med, "ratio_to_fixed": {w: med[w] / med["fixed"] for w in WAYS},
                      "steps_each": args.block * args.rounds, "cpu": cpu_description()}))


if __name__ == "__main__":
    main()
