#!/usr/bin/env python
"""The training step's floating-point work, and the machine's peak, measured through TensorFlow.

    python bench/flops.py --config omniglot5w1s [--first_order] [--peak] [--threads N]

**The step's work** is counted from the graph TensorFlow traces for it (the concrete function
behind ``MAML.metatrain_step``: inner loop, meta-gradient, Adam update), op by op, from the
shapes each op reads and writes (:func:`op_flops`):

* a convolution, its input gradient and its filter gradient each cost 2 * (elements of the
  convolution's output) * kh * kw * (input channels per group) multiply-adds counted as two
  floating-point operations, whatever the stride and padding (the input gradient is the
  transposed convolution: the same products);
* a matrix product [.., m, k] x [.., k, n]: 2 * batch * m * n * k;
* an elementwise op or a reduction: one per output element (a reduction: per input element).

The products are the work a CPU's vector units do; the elementwise ops move memory more than
they compute, and are reported apart (``elementwise``).  TensorFlow's own profiler
(``tensorflow/python/profiler/internal/flops_registry.py``) counts the same products for even
spatial sizes but divides a strided convolution's gradients by the stride's area (7 x 7 -> 4 x 4
counts 49/4 output positions, not 16), so it under-counts the Omniglot networks; the counter here
is checked against an independent analytic count per layer (:func:`analytic_products`:
first-order MAML, from the network's layer shapes alone) in ``tests/test_bench_flops.py``: the two
agree exactly on the conv nets (both task paths) and on the fc nets' loop path.  The fc nets'
batched path keeps fast weights factored (theta plus low-rank updates,
``networks.FactoredFCWeights``) and does other, fewer products, which the graph count reports as
they are.

A graph with control flow (a ``tf.while_loop``: the checkpointed engine, fused steps) would hide
its loop bodies from such a count; :func:`count` refuses it rather than under-count.

**The peak** (:func:`peak`) is what TensorFlow itself sustains on this machine for a large matrix
product in the same precision and with the same threads as the step: a [n, n] x [n, n] product
(n = 2048 by default) repeated inside one compiled call, best of a few calls.  The ratio of the
step's product rate to it says how far the step is from the machine's limit.
"""
import argparse
import collections
import json
import os
import sys
import time

CONV_OPS = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "DepthwiseConv2dNative"}
MATMUL_OPS = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"}
REDUCTIONS = {"Sum", "Mean", "Max", "Min", "Prod", "ArgMax", "ArgMin", "All", "Any"}
ELEMENTWISE = {
    "Add", "AddV2", "AddN", "Sub", "Mul", "RealDiv", "Div", "DivNoNan", "Neg", "Square",
    "SquaredDifference", "Sqrt", "Rsqrt", "RsqrtGrad", "SqrtGrad", "Exp", "Log", "Log1p",
    "Maximum", "Minimum", "Relu", "ReluGrad", "Reciprocal", "ReciprocalGrad", "Pow",
    "Softmax", "LogSoftmax", "Tanh", "TanhGrad", "Sigmoid", "SigmoidGrad", "Abs", "Sign",
    "BiasAdd", "BiasAddGrad", "Greater", "GreaterEqual", "Less", "LessEqual", "Equal", "NotEqual",
    "Select", "SelectV2", "MaxPool", "MaxPoolGrad", "MaxPoolGradGrad", "AvgPool", "AvgPoolGrad",
    "SoftmaxCrossEntropyWithLogits", "ClipByValue", "IsFinite", "Erf", "Elu", "EluGrad",
}
CONTROL_FLOW = {"While", "StatelessWhile", "If", "StatelessIf", "PartitionedCall",
                "StatefulPartitionedCall", "Case", "StatelessCase"}


class CountError(ValueError):
    """The graph cannot be counted op by op (control flow, unknown shapes)."""


def _shape(tensor):
    dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
    if dims is None or any(d is None for d in dims):
        raise CountError(f"{tensor.name}: shape {tensor.shape} is not fully known")
    return dims


def _prod(xs):
    out = 1
    for x in xs:
        out *= int(x)
    return out


def _conv_flops(op):
    """2 * (conv output elements) * kh * kw * (input channels per group), for the forward op and
    both gradients (each computes the same products)."""
    if op.type == "Conv2D":
        out, kernel = _shape(op.outputs[0]), _shape(op.inputs[1])
    elif op.type == "Conv2DBackpropInput":  # inputs: input_sizes, filter, out_backprop
        out, kernel = _shape(op.inputs[2]), _shape(op.inputs[1])
    elif op.type == "Conv2DBackpropFilter":  # inputs: input, filter_sizes, out_backprop
        out, kernel = _shape(op.inputs[2]), _shape(op.outputs[0])
    else:  # DepthwiseConv2dNative: one input channel per output channel
        out, kernel = _shape(op.outputs[0]), _shape(op.inputs[1])
        return 2 * _prod(out) * kernel[0] * kernel[1]
    if op.get_attr("data_format") not in (b"NHWC", "NHWC"):
        raise CountError(f"{op.name}: data format {op.get_attr('data_format')} not counted")
    return 2 * _prod(out) * kernel[0] * kernel[1] * kernel[2]


def _matmul_flops(op):
    a, b = _shape(op.inputs[0]), _shape(op.inputs[1])
    if op.type == "MatMul":
        ta, tb = op.get_attr("transpose_a"), op.get_attr("transpose_b")
    else:
        ta, tb = op.get_attr("adj_x"), op.get_attr("adj_y")
    m, k = (a[-1], a[-2]) if ta else (a[-2], a[-1])
    n = b[-2] if tb else b[-1]
    batch = _prod(_shape(op.outputs[0])[:-2])
    return 2 * batch * m * n * k


def op_flops(op):
    """(kind, flops) of one graph op: kind 'conv', 'matmul', 'elementwise' or None (no arithmetic
    counted: data movement, constants, variables, shapes)."""
    if op.type in CONTROL_FLOW:
        raise CountError(f"{op.name}: a {op.type} op hides its body from an op-by-op count")
    if op.type in CONV_OPS:
        return "conv", _conv_flops(op)
    if op.type in MATMUL_OPS:
        return "matmul", _matmul_flops(op)
    if op.type in REDUCTIONS:
        return "elementwise", _prod(_shape(op.inputs[0]))
    if op.type in ELEMENTWISE:
        return "elementwise", sum(_prod(_shape(t)) for t in op.outputs[:1])
    return None, 0


def live_ops(graph, outputs):
    """The ops a run of ``graph`` executes for ``outputs``: those the outputs or a stateful op
    (a variable update) depend on.  A gradient function builds the gradients of all its op's
    inputs (a convolution's input gradient even where the input is data); TensorFlow prunes the
    ones nothing reads before running the graph, and so does this count."""
    sinks = [t.op for t in outputs] + [op for op in graph.get_operations()
                                       if op._is_stateful and op.type not in ("VarHandleOp", "Placeholder")]
    seen, stack = set(), list(sinks)
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op in seen]


def count(graph, outputs=None):
    """{'conv', 'matmul', 'elementwise', 'products' (conv + matmul), 'total', 'by_type'}: the
    floating-point operations of one run of ``graph`` (only the ops that ``outputs``, default
    the graph's own outputs, or its variable updates depend on)."""
    by_type = collections.Counter()
    kinds = collections.Counter()
    outputs = list(graph.outputs) if outputs is None else list(outputs)
    for op in live_ops(graph, outputs):
        kind, flops = op_flops(op)
        if kind is not None:
            by_type[op.type] += flops
            kinds[kind] += flops
    out = {k: int(kinds[k]) for k in ("conv", "matmul", "elementwise")}
    out["products"] = out["conv"] + out["matmul"]
    out["total"] = out["products"] + out["elementwise"]
    out["by_type"] = dict(sorted(((k, int(v)) for k, v in by_type.items()), key=lambda kv: -kv[1]))
    return out


def step_graph(model, batch):
    """The graph of ``model``'s training step for this batch's shapes (traced, not run)."""
    fn = model._metatrain.fn if hasattr(model._metatrain, "fn") else model._metatrain
    return fn.get_concrete_function(*model._inputs(batch)).graph


def step_flops(model, batch):
    """:func:`count` of the training step of ``model`` on a batch of these shapes."""
    graph = step_graph(model, batch)
    return count(graph)


# ------------------------------------------------------------------------------ analytic check
def layer_products(spec, examples):
    """[(name, forward flops of the layer's products)] for ``examples`` inputs of a network
    spec (maml_tf.core.networks): conv layers 3 x 3 with SAME padding, stride 2 without max-pool
    (stride 1 and a 2 x 2 VALID pool with it); the fc layers as matrix products."""
    out = []
    if spec.kind == "conv":
        size, channels = spec.img_size, spec.channels
        for i, filters in enumerate([spec.dim_hidden[0]] * 4, 1):  # the original's 4 conv layers
            conv_out = size if spec.max_pool else -(-size // 2)
            out.append((f"conv{i}", 2 * examples * conv_out * conv_out * 9 * channels * filters))
            size = conv_out // 2 if spec.max_pool else conv_out  # 2 x 2 pool, VALID
            channels = filters
        features = channels * (size * size if spec.flatten else 1)
        out.append(("fc_out", 2 * examples * features * spec.dim_output))
    else:
        dims = [spec.dim_input] + list(spec.dim_hidden) + [spec.dim_output]
        out += [(f"fc{i}", 2 * examples * a * b) for i, (a, b) in enumerate(zip(dims, dims[1:]), 1)]
    return out


def analytic_products(spec, support, query, num_updates):
    """Products of a first-order MAML step, from the layer shapes alone: per inner step a
    forward and a backward pass on the support set (the weights' gradient at every layer, the
    input's gradient at every layer but the first, whose input is data), then a forward and a
    backward pass on the query set at the adapted weights (first order: the inner gradients are
    constants; the training step computes the post-update loss after the last step only, the
    other steps' are the summaries' work)."""
    def fwd(n):
        return sum(f for _, f in layer_products(spec, n))

    def bwd(n):
        layers = layer_products(spec, n)
        return sum(f for _, f in layers) + sum(f for _, f in layers[1:])
    return num_updates * (fwd(support) + bwd(support)) + fwd(query) + bwd(query)


# ------------------------------------------------------------------------------ the peak
def peak(dtype="float32", n=2048, repeats=8, calls=5, chains=1):
    """(GFLOP/s, seconds per product step): the best rate of [n, n] x [n, n] products in ``dtype``,
    ``repeats`` products chained inside one compiled call (so the call's overhead is spread),
    best of ``calls`` calls after one warm-up call.  Run with the threads the step runs with.

    ``chains``: independent chains in the same call, which TensorFlow's inter-op pool runs
    side by side.  A step whose ops run on one core each (intra-op pool 1) uses the cores
    by running ops side by side, and one chain would measure one core's peak against the
    work of all of them: give it one chain per core (``meta_step.peak_chains``).  The seconds
    are those of one product step: ``chains`` products side by side."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    pairs = [(tf.constant(rng.standard_normal((n, n)) / np.sqrt(n), dtype=dtype),
              tf.constant(rng.standard_normal((n, n)) / np.sqrt(n), dtype=dtype)) for _ in range(chains)]

    @tf.function(autograph=False)
    def chain(pairs):
        ends = []
        for a, b in pairs:
            x = a
            for _ in range(repeats):
                x = tf.matmul(x, b)
            ends.append(tf.reduce_sum(tf.cast(x[:1, :1], tf.float32)))
        return tf.add_n(ends)

    chain(pairs).numpy()
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        chain(pairs).numpy()
        best = min(best, time.perf_counter() - t0)
    per = best / repeats
    return chains * 2 * n ** 3 / per / 1e9, per


def main():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import meta_step
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=sorted(meta_step.CONFIGS), default="omniglot5w1s")
    ap.add_argument("--first_order", action="store_true")
    ap.add_argument("--task_mode", default="batched")
    ap.add_argument("--peak", action="store_true", help="also measure the float32 matrix-product peak")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MAML_TF_AUTOTUNE", "0")  # counting needs no timing of the paths
    pools = meta_step.set_threads(args.threads, args.config)
    model, cfg, next_batch = meta_step.build(args.config, args.first_order, args.task_mode, "off")
    res = {"config": args.config, "first_order": args.first_order,
           "flops_method": "graph ops, shapes (bench/flops.py)", **step_flops(model, next_batch())}
    if args.peak:
        res["peak_gflops_float32"], _ = peak("float32", chains=meta_step.peak_chains(pools))
        res["threads"] = args.threads
        res["cpu"] = meta_step.cpu_description()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
