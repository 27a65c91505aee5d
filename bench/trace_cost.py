#!/usr/bin/env python
"""What a run pays once, before its first step: building and optimising the step's graphs.

    python bench/trace_cost.py --config omniglot5w1s [--task_mode loop] [--first_order]
                               [--num_steps N] [--skip_unrolled]

A training run calls two compiled functions before it trains: the evaluation (the
summary at iteration 0 and the validation, ``--num_steps`` inner steps, default the
usage line's evaluation steps as main.py takes them) and the training step.  Their first call
traces the Python into a graph, lets TensorFlow optimise it, and runs it once; the second
call runs it only.  For each this prints the tracing alone (``*_trace_s``: the Python run
once to build the graph, ``get_concrete_function``), the first call after it (optimisation
and one run) and the second call's seconds, one JSON line, with the CPU (model, vector
extensions) and TensorFlow's kernel library:

* ``eval_mapped_first_s`` / ``eval_mapped_second_s``: the evaluation as main.py runs it
  (loop mode: the tasks inside ``tf.map_fn``, one task's graph);
* ``eval_unrolled_first_s`` / ``eval_unrolled_second_s``: the same evaluation with the
  tasks unrolled (``MAML.map_eval_tasks = False``; a fresh model), the graph T times larger
  (``--skip_unrolled`` leaves it out: minutes on a CPU without AVX-512);
* ``train_first_s`` / ``train_second_s``: the training step.

Each model is built as ``bench/meta_step.py`` builds it (``build_model``); the task mode is
the machine's choice unless ``--task_mode`` fixes it (the map applies to the loop mode only).
Run it with nothing else on the cores: the numbers are single measurements of one-off costs.
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


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return round(time.perf_counter() - t0, 3)


def main(argv=None):
    import meta_step
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--config", default="omniglot5w1s", choices=sorted(meta_step.CONFIGS))
    p.add_argument("--task_mode", choices=["batched", "loop"], default=None)
    p.add_argument("--first_order", action="store_true")
    p.add_argument("--num_steps", type=int, default=None,
                   help="inner steps of the evaluation (default: the config's eval_num_updates)")
    p.add_argument("--skip_unrolled", action="store_true")
    args = p.parse_args(argv)
    model, cfg, next_batch = meta_step.build(args.config, args.first_order, args.task_mode)
    steps = args.num_steps or cfg.eval_num_updates
    batch = next_batch()
    row = {"config": args.config, "task_mode": model.task_mode, "first_order": args.first_order,
           "tasks": cfg.meta_batch_size, "eval_steps": steps, "cpu": meta_step.cpu_description(),
           "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "TensorFlow's default")}
    evaluate = lambda m: (lambda: m.evaluate(*batch, num_steps=steps))  # noqa: E731
    inputs = model._inputs(batch)  # pylint: disable=protected-access
    row["eval_mapped_trace_s"] = _timed(lambda: model._evaluate.get_concrete_function(*inputs, steps))
    row["eval_mapped_first_s"] = _timed(evaluate(model))
    row["eval_mapped_second_s"] = _timed(evaluate(model))
    row["train_trace_s"] = _timed(lambda: model._metatrain.fn.get_concrete_function(*inputs))
    row["train_first_s"] = _timed(lambda: model.metatrain_step(*batch))
    row["train_second_s"] = _timed(lambda: model.metatrain_step(*batch))
    if not args.skip_unrolled and model.task_mode == "loop":
        unrolled, _, _ = meta_step.build(args.config, args.first_order, "loop")
        unrolled.map_eval_tasks = False
        row["eval_unrolled_trace_s"] = _timed(
            lambda: unrolled._evaluate.get_concrete_function(*inputs, steps))
        row["eval_unrolled_first_s"] = _timed(evaluate(unrolled))
        row["eval_unrolled_second_s"] = _timed(evaluate(unrolled))
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
