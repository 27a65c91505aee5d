"""Export a trained model for deployment: a TensorFlow SavedModel that adapts and predicts.

    python -m maml_tf.run.export --pretrained NAME --out DIR [--num_steps N] [--step_size A]
    python -m maml_tf.run.export --out DIR [--num_steps N] [--step_size A] <main.py training flags> [--test_iter I]

writes a SavedModel whose signature ``adapt_and_predict`` takes one task's support set
and query inputs and returns the query predictions after ``num_steps`` inner gradient
steps of size ``step_size`` from the meta-learned weights (both fixed at export;
defaults: the paper's test column for the data source (3 steps for Omniglot 5-way, 5 for
20-way, 10 for miniImageNet and sinusoid) and the model's ``--update_lr``).  The inner
loop is the one maml-tf evaluates with (same loss and scaling, batch statistics in batch
norm), traced into the SavedModel's graph: loading it needs TensorFlow only::

    import tensorflow as tf
    m = tf.saved_model.load("DIR")
    out = m.adapt_and_predict(support_inputs=xs, support_labels=ys, query_inputs=xq)
    out["logits"], out["probabilities"], out["classes"]     # classification
    out["predictions"]                                      # regression (sinusoid)

Inputs are flattened as the data pipeline gives them: [examples, dim_input] (Omniglot
28*28 with 1 - pixel/255, miniImageNet 84*84*3 in HWC order with pixel/255; sinusoid
[examples, 1]); support labels one-hot [examples, N] (regression: targets [examples, 1]).
K for the original's loss scaling (cross-entropy summed / K) is the support size / N, so
any N-way K-shot support set of the exported N works.
"""
import argparse
import os
import sys

from maml_tf.run.config import UsageError


def make_module(model, cfg, num_steps, step_size):
    """A tf.Module with the model's weights (copied) and the ``adapt_and_predict`` function."""
    import tensorflow as tf
    from maml_tf.core import losses

    spec = model.spec
    weights = {k: tf.Variable(v.numpy(), name=k.replace("/", "_")) for k, v in model.weights.items()}
    norms = {k: tf.Variable(v.numpy(), name=k.replace("/", "_")) for k, v in model.norm_params.items()}
    n_out = spec.dim_output
    classification = cfg.classification

    def loss_fn(pred, label):
        if classification:
            k = tf.cast(tf.shape(pred)[0], pred.dtype) / n_out
            return losses.xent(pred, label, k)
        return losses.mse(pred, label)

    class Exported(tf.Module):
        def __init__(self):
            super().__init__(name="maml_adapt_and_predict")
            self.weights, self.norms = weights, norms
            self.num_steps = tf.constant(num_steps, tf.int32, name="num_steps")
            self.step_size = tf.constant(step_size, tf.float32, name="step_size")

        @tf.function(input_signature=[tf.TensorSpec([None, spec.dim_input], tf.float32, "support_inputs"),
                                      tf.TensorSpec([None, n_out], tf.float32, "support_labels"),
                                      tf.TensorSpec([None, spec.dim_input], tf.float32, "query_inputs")],
                     autograph=False)
        def adapt_and_predict(self, support_inputs, support_labels, query_inputs):
            fast = {k: tf.convert_to_tensor(v) for k, v in self.weights.items()}
            for _ in range(num_steps):  # unrolled: the steps are fixed at export
                with tf.GradientTape() as tape:
                    tape.watch(list(fast.values()))
                    loss = loss_fn(spec.forward(support_inputs, fast, self.norms), support_labels)
                grads = tape.gradient(loss, fast, unconnected_gradients=tf.UnconnectedGradients.ZERO)
                fast = {k: fast[k] - step_size * grads[k] for k in fast}
            out = spec.forward(query_inputs, fast, self.norms)
            if classification:
                return {"logits": out, "probabilities": tf.nn.softmax(out),
                        "classes": tf.argmax(out, axis=-1, output_type=tf.int32)}
            return {"predictions": out}

    return Exported()


def export(model, cfg, out_dir, num_steps=None, step_size=None):
    """Write the SavedModel to ``out_dir``; returns (num_steps, step_size) used."""
    import tensorflow as tf
    num_steps = cfg.reported_steps[-1] if num_steps is None else int(num_steps)
    step_size = cfg.update_lr if step_size is None else float(step_size)
    if num_steps < 0 or step_size < 0:
        raise UsageError("--num_steps and --step_size must not be negative")
    module = make_module(model, cfg, num_steps, step_size)
    tmp = out_dir.rstrip("/") + f".tmp-{os.getpid()}"
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.adapt_and_predict})
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return num_steps, step_size


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m maml_tf.run.export",
                                description="Export a trained maml-tf model as a TensorFlow SavedModel.")
    p.add_argument("--out", required=True, help="folder for the SavedModel")
    p.add_argument("--pretrained", default="", help="a published model (pretrained/NAME) or its folder")
    p.add_argument("--num_steps", type=int, default=None)
    p.add_argument("--step_size", type=float, default=None)
    args, rest = p.parse_known_args(argv)
    try:
        from maml_tf.run.config import config_from_flags, parse_flags
        values, leftover = parse_flags(rest)
        if leftover:
            raise UsageError(f"not an export option or main.py flag: {' '.join(leftover)}")
        values["train"] = False
        if args.pretrained:
            values["pretrained"] = args.pretrained
        cfg = config_from_flags(values)
        from maml_tf.runtime import import_tensorflow
        import_tensorflow()
        from maml_tf.run.train import load_for_test
        model, cfg, origin = load_for_test(cfg)
        steps, size = export(model, cfg, args.out, args.num_steps, args.step_size)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Exported {origin} to {args.out}: adapt_and_predict takes a support set and query inputs, "
          f"adapts with {steps} step{'s' * (steps != 1)} of size {size}, returns the query predictions "
          f"(load with tf.saved_model.load; TensorFlow only)")
    return 0


if __name__ == "__main__":
    from maml_tf.runtime import quiet_start
    quiet_start()
    sys.exit(main())
