"""bench/flops.py: the step's floating-point work counted from its graph, against hand-computed
counts of single ops and an independent per-layer count of whole first-order MAML steps."""
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import flops  # noqa: E402

from maml_tf.run.config import Config  # noqa: E402
from maml_tf.run.model import build_model, input_shapes  # noqa: E402


def _graph(fn, *specs):
    return tf.function(fn, autograph=False).get_concrete_function(*specs).graph


def test_strided_convolution_and_its_gradients_on_an_odd_size():
    """7 x 7 -> 4 x 4 with stride 2, SAME: the forward pass, the input gradient and the filter
    gradient each compute 2 * N * 4 * 4 * 3 * 3 * Cin * Cout (TensorFlow's profiler counts
    the gradients as 49/4 output positions instead of 16)."""
    n, cin, cout = 3, 5, 6
    x = tf.TensorSpec([n, 7, 7, cin], tf.float32)
    k = tf.TensorSpec([3, 3, cin, cout], tf.float32)

    def fn(x, k):
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            y = tf.nn.conv2d(x, k, 2, "SAME")
            loss = tf.reduce_sum(y * y)
        return [loss] + tape.gradient(loss, [x, k])
    c = flops.count(_graph(fn, x, k))
    one = 2 * n * 4 * 4 * 3 * 3 * cin * cout
    assert c["by_type"]["Conv2D"] == one
    assert c["by_type"]["Conv2DBackpropInput"] == one
    assert c["by_type"]["Conv2DBackpropFilter"] == one
    assert c["conv"] == 3 * one and c["matmul"] == 0


def test_grouped_convolution_counts_each_group_once():
    n, groups, cin, cout = 2, 4, 3, 5
    x = tf.TensorSpec([n, 6, 6, groups * cin], tf.float32)
    k = tf.TensorSpec([3, 3, cin, groups * cout], tf.float32)
    c = flops.count(_graph(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"), x, k))
    assert c["conv"] == 2 * n * 6 * 6 * groups * cout * 3 * 3 * cin


def test_matrix_products_transposed_and_batched():
    a, b = tf.TensorSpec([4, 7], tf.float32), tf.TensorSpec([5, 7], tf.float32)
    assert flops.count(_graph(lambda a, b: tf.matmul(a, b, transpose_b=True), a, b))["matmul"] == 2 * 4 * 5 * 7
    a, b = tf.TensorSpec([3, 7, 4], tf.float32), tf.TensorSpec([3, 7, 5], tf.float32)
    assert flops.count(_graph(lambda a, b: tf.matmul(a, b, transpose_a=True), a, b))["matmul"] == 2 * 3 * 4 * 5 * 7


def test_only_what_the_outputs_need_is_counted():
    """An op nothing reads (a gradient function's unused input gradient) is pruned by TensorFlow
    before the graph runs, and left out here; a variable update counts though nothing reads it."""
    v = tf.Variable(tf.zeros([4, 4]))
    a = tf.TensorSpec([4, 4], tf.float32)

    def fn(a):
        tf.matmul(a, a)                      # dead
        v.assign_add(tf.matmul(a, a, transpose_a=True))  # a side effect
        return tf.matmul(a, tf.ones([4, 2]))
    c = flops.count(_graph(fn, a))
    assert c["matmul"] == 2 * 4 * 4 * 4 + 2 * 4 * 2 * 4


def test_control_flow_is_refused_not_under_counted():
    a = tf.TensorSpec([4, 4], tf.float32)

    def fn(a):
        return tf.while_loop(lambda i, x: i < 3, lambda i, x: (i + 1, tf.matmul(x, x)), (0, a))[1]
    with pytest.raises(flops.CountError, match="While"):
        flops.count(_graph(fn, a))


@pytest.mark.parametrize("flags", [
    dict(datasource="omniglot", num_classes=5, update_batch_size=1, num_updates=1, meta_batch_size=2),
    dict(datasource="omniglot", num_classes=3, update_batch_size=2, num_updates=3, meta_batch_size=2),
    dict(datasource="miniimagenet", num_classes=2, update_batch_size=1, num_updates=2, meta_batch_size=2,
         num_filters=8, max_pool=True),
    dict(datasource="sinusoid", norm="None", update_batch_size=5, num_updates=2, meta_batch_size=3),
], ids=["omniglot-5w1s-1step", "omniglot-3w2s-3steps", "mini-maxpool-2steps", "sinusoid"])
@pytest.mark.parametrize("task_mode", ["batched", "loop"])
def test_first_order_step_matches_the_per_layer_count(flags, task_mode, monkeypatch):
    """The whole first-order training step, counted from its graph, equals the count made from
    the network's layer shapes alone (bench/flops.analytic_products), on both task paths."""
    if flags["datasource"] == "sinusoid" and task_mode == "batched":
        pytest.skip("the batched fc path keeps fast weights factored (theta plus low-rank updates: "
                    "networks.FactoredFCWeights), other products than the layer count's")
    monkeypatch.setenv("MAML_TF_AUTOTUNE", "0")
    cfg = Config(stop_grad=True, metatrain_iterations=10, task_mode=task_mode, xla=False, **flags)
    model = build_model(cfg)
    rng = np.random.default_rng(0)
    batch = [rng.standard_normal(s).astype(np.float32) for s in input_shapes(cfg)]
    counted = flops.step_flops(model, batch)
    shapes = input_shapes(cfg)
    support, query = shapes[0][0] * shapes[0][1], shapes[2][0] * shapes[2][1]
    assert counted["products"] == flops.analytic_products(model.spec, support, query, cfg.num_updates)
    assert 0 < counted["elementwise"] < 0.2 * counted["total"]


def test_second_order_costs_about_twice_first_order(monkeypatch):
    """The Hessian-vector products of the second-order meta-gradient repeat the step's products:
    an independent sanity bound on the count (1.5x-2.5x first order for one inner step)."""
    monkeypatch.setenv("MAML_TF_AUTOTUNE", "0")
    out = {}
    for first in (True, False):
        cfg = Config(datasource="omniglot", meta_batch_size=2, stop_grad=first, metatrain_iterations=10,
                     task_mode="batched", xla=False)
        batch = [np.zeros(s, np.float32) for s in input_shapes(cfg)]
        out[first] = flops.step_flops(build_model(cfg), batch)["products"]
    assert 1.5 < out[False] / out[True] < 2.5


def test_peak_is_a_rate_of_the_product_it_times():
    gflops, seconds = flops.peak("float32", n=128, repeats=2, calls=2)
    assert seconds > 0 and gflops == pytest.approx(2 * 128 ** 3 / seconds / 1e9)


def test_peak_counts_every_chain_it_runs_side_by_side():
    """Two chains in one call: the rate is both chains' work over the time of one product step."""
    gflops, seconds = flops.peak("float32", n=128, repeats=2, calls=2, chains=2)
    assert seconds > 0 and gflops == pytest.approx(2 * 2 * 128 ** 3 / seconds / 1e9)


def test_peak_chains_follow_the_steps_use_of_the_cores():
    """One chain per core where each op runs on one core (intra-op pool 1), so that the peak
    is every core's; one chain over the intra-op pool otherwise."""
    import meta_step
    assert meta_step.peak_chains((1, 2)) == 2
    assert meta_step.peak_chains((1, 4)) == 4
    assert meta_step.peak_chains((2, 2)) == 1
    assert meta_step.peak_chains((1, 1)) == 1
