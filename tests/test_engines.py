"""The meta-gradient engines (maml_tf/engines.py) against independent computations.

checkpointed == nested (float64 to 1e-10, float32 to float32 accuracy), per task and
batched, for fc, strided conv + BN and max-pool conv + BN; truncated against a
hand-written truncated product; implicit against the closed-form implicit gradient of
least squares and against an exact linear solve on a small net; ES against the
(Gaussian-smoothed) gradient of a quadratic, statistically; DropGrad against finite
differences of the masked inner loop, and its masks' expectation and seeding.
"""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from maml_tf.core import engines, losses
from maml_tf.methods.maml import MAML
from maml_tf.core.meta import hessian_vector_product, meta_gradient
from maml_tf.core.networks import NetworkSpec, build_network


def small_conv(max_pool):
    img = 16 if max_pool else 8
    return NetworkSpec("conv", img * img, 3, (3,), norm="batch_norm", channels=1, img_size=img,
                       max_pool=max_pool, flatten=max_pool, head_init="xavier" if max_pool else "normal")


NETS = {
    "fc": lambda: build_network("sinusoid", 1, 1, norm="None"),
    "conv_bn": lambda: small_conv(False),
    "maxpool_bn": lambda: small_conv(True),
}


def task(spec, rng, n_support=6):
    if spec.kind == "fc":
        xa, xb = rng.uniform(-5, 5, (n_support, 1)), rng.uniform(-5, 5, (n_support, 1))
        return (xa, np.sin(xa)), (xb, np.sin(xb)), losses.mse
    n = spec.dim_output
    y = np.eye(n)[np.arange(n_support) % n]
    return (rng.random((n_support, spec.dim_input)), y), (rng.random((n_support, spec.dim_input)), y), \
        losses.make_xent(max(1, n_support // n))


def setup(name, seed=0, dtype=np.float64, scale=None):
    rng = np.random.default_rng(seed)
    spec = NETS[name]()
    w, nparams = spec.init(seed=seed, dtype=dtype)
    if spec.kind == "fc":
        w = {k: (v * 30 + 0.1 * rng.standard_normal(v.shape)).astype(dtype) for k, v in w.items()}
    nparams = {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(dtype) for k, v in nparams.items()}
    support, query, loss_fn = task(spec, rng)
    fwd = lambda x, ww: spec.forward(x, ww, nparams)  # noqa: E731
    lr = 0.01 if spec.kind == "fc" else 0.1
    return spec, w, fwd, support, query, loss_fn, lr


def max_rel(a, b):
    """Largest difference over every parameter, relative to the largest gradient entry (a
    bias in front of batch norm has a true gradient of 0: its own scale is rounding)."""
    scale = max(float(np.abs(np.asarray(b[k])).max()) for k in b) + 1e-300
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in b) / scale


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("steps", [1, 3, 5])
def test_checkpointed_equals_nested_per_task(name, steps):
    spec, w, fwd, support, query, loss_fn, lr = setup(name)
    l1, g1 = meta_gradient(fwd, w, support, query, loss_fn, lr, steps)
    l2, g2 = meta_gradient(fwd, w, support, query, loss_fn, lr, steps, engine="checkpointed")
    assert float(l1) == pytest.approx(float(l2), rel=1e-12)
    assert max_rel({k: v.numpy() for k, v in g2.items()}, {k: v.numpy() for k, v in g1.items()}) < 1e-10


def grads_close(got, ref, tol):
    """Every meta-gradient within ``tol`` of the reference, relative to its largest entry."""
    scale = max(float(tf.reduce_max(tf.abs(y))) for y in ref)
    worst = max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(got, ref))
    assert worst <= tol * scale, (worst, scale)


def batched_model(name, engine, dtype=tf.float64, **options):
    spec = NETS[name]()
    loss = "mse" if spec.kind == "fc" else "xent"
    lr = 0.01 if spec.kind == "fc" else 0.1
    return MAML(spec, loss=loss, update_batch_size=2, update_lr=lr, num_updates=3, seed=4,
                dtype=dtype, engine=engine, **options)


def batched_data(model, t=3, seed=1):
    rng = np.random.default_rng(seed)
    spec = model.spec
    out = [task(spec, rng) for _ in range(t)]
    return [np.stack([o[i][j] for o in out]) for i in (0, 1) for j in (0, 1)]


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("dtype,tol", [(tf.float64, 1e-10), (tf.float32, 2e-4)])
def test_checkpointed_equals_nested_batched(name, dtype, tol):
    """The training step's meta-gradient (theta and the batch-norm offsets, which the
    inner loop does not adapt) by the checkpointed walk equals nested tapes."""
    a, b = batched_model(name, "nested", dtype), batched_model(name, "checkpointed", dtype)
    for v in a.norm_params.values():  # offsets away from 0, so their second-order terms matter
        v.assign(v + tf.cast(0.2, dtype))
    for v, u in zip(b.meta_vars, a.meta_vars):
        v.assign(u)
    batch = [tf.constant(x, dtype) for x in batched_data(a)]
    ma, ga = a.meta_gradients(*batch)
    mb, gb = b.meta_gradients(*batch)
    for k in ma:
        assert float(mb[k]) == pytest.approx(float(ma[k]), rel=max(tol, 1e-12))
    grads_close(gb, ga, tol)



@pytest.mark.parametrize("engine", ["checkpointed", "implicit", "es"])
def test_loop_engines_graph_does_not_grow_with_steps(engine):
    """Engines that do not record the inner loop for an outer tape build it (and the
    checkpointed walk) as one tf.while_loop: the traced graph of the training step is
    the same size for 2 and 6 inner steps (unrolled it grew with every step, and so did
    the memory to build and optimise it), and still holds the right values (checked
    against nested tapes in the tests above)."""
    def ops(n):
        spec = NETS["conv_bn"]()
        m = MAML(spec, loss="xent", update_batch_size=2, update_lr=0.1, num_updates=n, seed=4,
                 dtype=tf.float64, engine=engine, es_samples=2)
        batch = [tf.constant(x) for x in batched_data(m)]
        graph = tf.function(m.meta_gradients).get_concrete_function(*batch).graph
        kinds = [op.type for op in graph.get_operations()]
        assert "While" in kinds or "StatelessWhile" in kinds
        return len(kinds)
    assert ops(2) == ops(6)

def test_truncated_limits_and_hand_written_product():
    spec, w, fwd, support, query, loss_fn, lr = setup("conv_bn")
    n = 3
    _, full = meta_gradient(fwd, w, support, query, loss_fn, lr, n)
    _, first = meta_gradient(fwd, w, support, query, loss_fn, lr, n, first_order=True)
    _, t_n = meta_gradient(fwd, w, support, query, loss_fn, lr, n, engine="truncated", truncate_steps=n)
    _, t_0 = meta_gradient(fwd, w, support, query, loss_fn, lr, n, engine="truncated", truncate_steps=0)
    assert max_rel({k: v.numpy() for k, v in t_n.items()}, {k: v.numpy() for k, v in full.items()}) < 1e-12
    assert max_rel({k: v.numpy() for k, v in t_0.items()}, {k: v.numpy() for k, v in first.items()}) < 1e-12
    # 0 < k < n: (I - a H_{n-1}) ... (I - a H_{n-k}) g_n, H_j at theta_j, by explicit HVPs.
    k = 2
    thetas = [{key: tf.constant(v) for key, v in w.items()}]
    for _ in range(n):
        with tf.GradientTape() as tape:
            tape.watch(list(thetas[-1].values()))
            la = loss_fn(fwd(support[0], thetas[-1]), support[1])
        g = tape.gradient(la, thetas[-1])
        thetas.append({key: thetas[-1][key] - lr * g[key] for key in g})
    with tf.GradientTape() as tape:
        tape.watch(list(thetas[-1].values()))
        lb = loss_fn(fwd(query[0], thetas[-1]), query[1])
    v = tape.gradient(lb, thetas[-1])
    for j in reversed(range(n - k, n)):
        h = hessian_vector_product(fwd, thetas[j], support[0], support[1], loss_fn, v)
        v = {key: v[key] - lr * h[key] for key in v}
    _, t_k = meta_gradient(fwd, w, support, query, loss_fn, lr, n, engine="truncated", truncate_steps=k)
    assert max_rel({key: x.numpy() for key, x in t_k.items()}, {key: x.numpy() for key, x in v.items()}) < 1e-10
    assert max_rel({key: x.numpy() for key, x in t_k.items()}, {key: x.numpy() for key, x in full.items()}) > 1e-6
    # The training step's truncation (nested fast path) equals the per-task engine's.
    a = batched_model("conv_bn", "truncated", truncate_steps=k)
    b = batched_model("conv_bn", "checkpointed", truncate_steps=k)
    for x, y in zip(b.meta_vars, a.meta_vars):
        x.assign(y)
    batch = [tf.constant(x) for x in batched_data(a)]
    grads_close(b.meta_gradients(*batch)[1], a.meta_gradients(*batch)[1], 1e-10)


def test_implicit_equals_closed_form_for_least_squares():
    """Linear model, MSE: L_a(phi) = |X phi - y|^2/m, H = 2 X^T X / m constant.  The
    proximal inner problem has phi* = (H + l I)^-1 (b + l theta), b = 2 X^T y / m, and the
    implicit meta-gradient is (I + H/l)^-1 grad L_b(phi*).  Enough inner steps and CG
    iterations (d of them are exact in exact arithmetic) reach it."""
    rng = np.random.default_rng(3)
    m, d, lam = 12, 5, 2.0
    xa, xb = rng.standard_normal((m, d)), rng.standard_normal((m, d))
    ya, yb = rng.standard_normal((m, 1)), rng.standard_normal((m, 1))
    theta = rng.standard_normal((d, 1))
    fwd = lambda x, w: tf.matmul(x, w["w"])  # noqa: E731
    h = 2 * xa.T @ xa / m
    phi = np.linalg.solve(h + lam * np.eye(d), 2 * xa.T @ ya / m + lam * theta)
    gb = 2 * xb.T @ (xb @ phi - yb) / m
    expected = np.linalg.solve(np.eye(d) + h / lam, gb)
    loss, g = meta_gradient(fwd, {"w": theta}, (xa, ya), (xb, yb), losses.mse, 0.05, 400,
                            engine="implicit", imaml_lambda=lam, cg_steps=d)
    np.testing.assert_allclose(g["w"].numpy(), expected, rtol=1e-8, atol=1e-10)
    assert float(loss) == pytest.approx(float(np.mean((xb @ phi - yb) ** 2)), rel=1e-8)
    # First-order iMAML: grad L_b(phi*).
    _, fo = meta_gradient(fwd, {"w": theta}, (xa, ya), (xb, yb), losses.mse, 0.05, 400,
                          first_order=True, engine="implicit", imaml_lambda=lam)
    np.testing.assert_allclose(fo["w"].numpy(), gb, rtol=1e-8, atol=1e-10)
    # Damped as the iMAML reference code: ((1 + d) I + H/(lambda + lambda_d)) v = grad L_b(phi*).
    cg_d, lam_d = 1.0, 10.0
    damped = np.linalg.solve((1 + cg_d) * np.eye(d) + h / (lam + lam_d), gb)
    _, g_d = meta_gradient(fwd, {"w": theta}, (xa, ya), (xb, yb), losses.mse, 0.05, 400,
                           engine="implicit", imaml_lambda=lam, cg_steps=d, cg_damping=cg_d, lam_damping=lam_d)
    np.testing.assert_allclose(g_d["w"].numpy(), damped, rtol=1e-8, atol=1e-10)
    assert np.abs(damped - expected).max() > 1e-3 * np.abs(expected).max()  # another system



@pytest.mark.parametrize("damping", [dict(), dict(cg_damping=1.0, lam_damping=10.0)])
def test_batched_implicit_equals_per_task(damping):
    """The training step's implicit meta-gradient (all tasks of a meta-batch in one
    batched inner loop, CG with per-task step sizes) is the mean of each task's own
    (maml_tf.meta_gradient, one task at a time), undamped and damped."""
    m = batched_model("conv_bn", "implicit", imaml_lambda=2.0, cg_steps=3, **damping)
    data = batched_data(m)
    _, grads = m.meta_gradients(*[tf.constant(x) for x in data])
    w = {k: v.numpy() for k, v in m.weights.items()}
    nparams = {k: v.numpy() for k, v in m.norm_params.items()}
    fwd = lambda x, ww: m.spec.forward(x, ww, nparams)  # noqa: E731
    t = data[0].shape[0]
    per_task = [meta_gradient(fwd, w, (data[0][i], data[1][i]), (data[2][i], data[3][i]), losses.make_xent(2),
                              0.1, 3, engine="implicit", imaml_lambda=2.0, cg_steps=3, **damping)[1]
                for i in range(t)]
    mean = [sum(g[k] for g in per_task) / t for k in m.weights]
    grads_close(grads[:len(mean)], mean, 1e-10)

def test_implicit_approaches_the_exact_solve_on_a_small_net():
    """Small net: the exact implicit gradient is (I + H/l)^-1 g at the converged phi*, H the
    full Hessian (computed here as a Jacobian).  The engine's error falls as the inner loop
    converges and CG iterations grow."""
    spec, w, fwd, support, query, loss_fn, _ = setup("fc")
    w = {k: v / 30 for k, v in w.items()}  # a well-conditioned start
    lam, lr = 1.0, 0.02
    problem_args = (fwd, w, support, query, loss_fn, lr)
    # The exact answer at phi* (inner loop run to convergence).
    res = engines.run(engines.Problem(theta={k: tf.constant(v) for k, v in w.items()},
                                      inner_loss=lambda f, e, k: loss_fn(fwd(support[0], f), support[1]),
                                      outer_loss=lambda f, e: loss_fn(fwd(query[0], f), query[1]),
                                      update_lr=lr, num_updates=3000),
                      "implicit", engines.Options(imaml_lambda=lam, first_order=True))
    phi = res.fast
    keys = sorted(phi)
    flat = tf.concat([tf.reshape(phi[k], [-1]) for k in keys], 0)
    sizes = [int(np.prod(phi[k].shape)) for k in keys]

    def unflat(v):
        parts = tf.split(v, sizes)
        return {k: tf.reshape(p, phi[k].shape) for k, p in zip(keys, parts)}
    with tf.GradientTape() as t2:
        t2.watch(flat)
        with tf.GradientTape() as t1:
            t1.watch(flat)
            la = loss_fn(fwd(support[0], unflat(flat)), support[1])
        g = t1.gradient(la, flat)
    hess = t2.jacobian(g, flat).numpy()
    gb = tf.concat([tf.reshape(res.grad_theta[k], [-1]) for k in keys], 0).numpy()  # first order: grad L_b(phi*)
    exact = np.linalg.solve(np.eye(len(gb)) + hess / lam, gb)
    errors = []
    for steps, cg in ((50, 2), (400, 10), (3000, 60)):
        _, got = meta_gradient(*problem_args, steps, engine="implicit", imaml_lambda=lam, cg_steps=cg)
        got = np.concatenate([got[k].numpy().ravel() for k in keys])
        errors.append(np.linalg.norm(got - exact) / np.linalg.norm(exact))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors


def test_es_is_unbiased_for_the_smoothed_gradient_of_a_quadratic():
    """Linear regression with MSE: theta_n is affine in theta, so f(theta) = L_b(theta_n)
    is quadratic, its Gaussian smoothing has the same gradient, and the antithetic
    estimate is (1/S) sum_i eps_i eps_i^T grad f: mean grad f, per-component variance
    (|grad f|^2 + grad_i^2) / S.  Over 40 seeds x 25 samples the mean lands within 4
    standard errors of the true meta-gradient in every component."""
    rng = np.random.default_rng(8)
    m, d = 10, 4
    xa, xb = rng.standard_normal((m, d)), rng.standard_normal((m, d))
    ya, yb = rng.standard_normal((m, 1)), rng.standard_normal((m, 1))
    theta = rng.standard_normal((d, 1))
    fwd = lambda x, w: tf.matmul(x, w["w"])  # noqa: E731
    args = (fwd, {"w": theta}, (xa, ya), (xb, yb), losses.mse, 0.05, 2)
    true = meta_gradient(*args)[1]["w"].numpy().ravel()
    est = np.array([meta_gradient(*args, engine="es", es_samples=25, es_sigma=0.1, seed=s)[1]["w"].numpy().ravel()
                    for s in range(40)])
    se = np.sqrt((np.sum(true ** 2) + true ** 2) / (25 * 40))
    assert np.all(np.abs(est.mean(0) - true) <= 4 * se), (est.mean(0), true, se)
    assert est.std(0).min() > 0  # it is an estimate, not the exact gradient
    # The same seed gives the same estimate.
    a = meta_gradient(*args, engine="es", es_samples=5, seed=3)[1]["w"].numpy()
    b = meta_gradient(*args, engine="es", es_samples=5, seed=3)[1]["w"].numpy()
    np.testing.assert_array_equal(a, b)


def test_dropgrad_rate_zero_is_identity_and_masks_keep_the_expectation():
    spec, w, fwd, support, query, loss_fn, lr = setup("conv_bn")
    _, g = meta_gradient(fwd, w, support, query, loss_fn, lr, 2)
    _, g0 = meta_gradient(fwd, w, support, query, loss_fn, lr, 2, dropgrad=0.0, seed=5)
    assert max_rel({k: v.numpy() for k, v in g0.items()}, {k: v.numpy() for k, v in g.items()}) == 0
    big = {"a": tf.zeros([200000], tf.float64)}
    for kind in ("bernoulli", "gaussian"):
        opts = engines.Options(dropgrad=0.3, dropgrad_type=kind, seed=1)
        mask = engines.dropgrad_mask(big, opts, 0)["a"].numpy()
        # E[mask] = 1; its standard deviation is sqrt(rate / (1 - rate)) for both kinds.
        sd = np.sqrt(0.3 / 0.7)
        assert abs(mask.mean() - 1) < 4 * sd / np.sqrt(mask.size)
        assert abs(mask.std() - sd) < 0.01
        if kind == "bernoulli":
            assert set(np.unique(mask)) == {0.0, 1 / 0.7}
        same = engines.dropgrad_mask(big, opts, 0)["a"].numpy()
        other = engines.dropgrad_mask(big, dataclasses.replace(opts, seed=2), 0)["a"].numpy()
        later = engines.dropgrad_mask(big, opts, 1)["a"].numpy()
        np.testing.assert_array_equal(mask, same)
        assert (mask != other).mean() > 0.2 and (mask != later).mean() > 0.2


@pytest.mark.parametrize("engine", ["nested", "checkpointed"])
def test_dropgrad_meta_gradient_matches_finite_differences(engine):
    """With the masks fixed (they depend on seed and step only), theta_n is a smooth
    function of theta: the DropGrad meta-gradient is its exact derivative."""
    spec, w, fwd, support, query, loss_fn, lr = setup("fc")
    opts = engines.Options(dropgrad=0.4, seed=9)

    def f(weights):
        fast = {k: tf.constant(v) for k, v in weights.items()}
        for k in range(3):
            with tf.GradientTape() as tape:
                tape.watch(list(fast.values()))
                la = loss_fn(fwd(support[0], fast), support[1])
            g = tape.gradient(la, fast)
            mask = engines.dropgrad_mask(g, opts, k)
            fast = {key: fast[key] - lr * mask[key] * g[key] for key in fast}
        return float(loss_fn(fwd(query[0], fast), query[1]))
    _, g = meta_gradient(fwd, w, support, query, loss_fn, lr, 3, engine=engine, dropgrad=0.4, seed=9)
    _, plain = meta_gradient(fwd, w, support, query, loss_fn, lr, 3)
    rng = np.random.default_rng(0)
    for _ in range(3):
        d = {k: rng.standard_normal(v.shape) for k, v in w.items()}
        eps = 1e-5
        fd = (f({k: w[k] + eps * d[k] for k in w}) - f({k: w[k] - eps * d[k] for k in w})) / (2 * eps)
        an = sum(float(np.sum(g[k].numpy() * d[k])) for k in w)
        assert abs(fd - an) <= 1e-6 * max(abs(fd), 1e-3)
    assert max_rel({k: v.numpy() for k, v in g.items()}, {k: v.numpy() for k, v in plain.items()}) > 1e-3


def test_dropgrad_in_the_training_step():
    """Batched and loop task modes draw the same masks; the checkpointed walk recomputes
    them exactly; consecutive training steps draw new ones."""
    models = {}
    for name, mode, engine in (("batched", "batched", "nested"), ("loop", "loop", "nested"),
                               ("ckpt", "batched", "checkpointed")):
        m = MAML(NETS["conv_bn"](), loss="xent", update_batch_size=2, update_lr=0.1, num_updates=2,
                 seed=4, dtype=tf.float64, task_mode=mode, engine=engine, dropgrad=0.3, dropgrad_type="gaussian")
        models[name] = m
    batch = [tf.constant(x) for x in batched_data(models["batched"])]
    ref = models["batched"].meta_gradients(*batch)[1]
    for name in ("loop", "ckpt"):
        grads_close(models[name].meta_gradients(*batch)[1], ref, 1e-10)
    models["batched"].metatrain_optimizer.step.assign_add(1)
    moved = models["batched"].meta_gradients(*batch)[1]
    assert max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(moved, ref)) > 1e-6


@pytest.mark.parametrize("engine,options", [("implicit", dict(imaml_lambda=2.0, cg_steps=3)),
                                            ("es", dict(es_samples=2, es_sigma=0.01))])
def test_engines_train_through_the_model(engine, options):
    """implicit and es run as the model's training step (metrics, finite gradients for
    every meta-parameter, Adam applied)."""
    m = MAML(NETS["maxpool_bn"](), loss="xent", update_batch_size=2, update_lr=0.05, num_updates=2,
             seed=1, engine=engine, **options)
    before = [v.numpy().copy() for v in m.meta_vars]
    metrics = m.metatrain_step(*batched_data(m))
    assert metrics["grad_finite"] and np.isfinite(metrics["postloss"])
    assert all(np.abs(v.numpy() - b).max() > 0 for v, b in zip(m.meta_vars, before))
