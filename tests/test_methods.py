"""The MAML family (maml_tf/methods.py, MAML++'s options of maml_tf/maml.py) against
hand computations: Meta-SGD's and Reptile's steps in numpy, ANIL's and LSLR/BNWB's
meta-gradients against finite differences, MAML++'s loss weights and outer step sizes
against their formulas, NIL and non-transductive evaluation against direct computations."""
import numpy as np
import pytest
import tensorflow as tf

from maml_tf import methods
from maml_tf.methods.maml import MAML
from maml_tf.core.networks import NetworkSpec

LINEAR = NetworkSpec("fc", 3, 1, (), norm="None")          # y = x w1 + b1
SMALL_FC = NetworkSpec("fc", 3, 1, (4,), norm="None")      # one hidden layer
SMALL_CONV = NetworkSpec("conv", 64, 3, (3,), norm="batch_norm", channels=1, img_size=8)


def regression_batch(t=2, k=4, seed=0):
    rng = np.random.default_rng(seed)
    xa, xb = rng.standard_normal((t, k, 3)), rng.standard_normal((t, k, 3))
    return xa, rng.standard_normal((t, k, 1)), xb, rng.standard_normal((t, k, 1))


def class_batch(t=2, n=3, k=2, seed=0, dim=64):
    rng = np.random.default_rng(seed)
    y = np.eye(n)[np.arange(n * k) % n]
    return (rng.random((t, n * k, dim)), np.broadcast_to(y, (t, n * k, n)).copy(),
            rng.random((t, n * k, dim)), np.broadcast_to(y, (t, n * k, n)).copy())


def as_tensors(batch):
    return [tf.constant(b, tf.float64) for b in batch]


def linear_parts(model):
    w = model.weights["w1"].numpy()
    b = model.weights["b1"].numpy()
    return np.concatenate([w, b[None]], 0)  # [4, 1]: the bias as a fourth input


def augment(x):
    return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], -1)


def test_metasgd_step_by_hand():
    """One Meta-SGD meta-gradient on a linear model: theta' = theta - a (.) g_a,
    d L_b(theta') / d theta = (I - H_a diag(a)) g_b and d / d a = -g_a (.) g_b, summed over
    tasks / T; then the first TF1 Adam step."""
    model = methods.MetaSGD(LINEAR, update_lr=0.1, num_updates=1, dtype=tf.float64, seed=3, meta_lr=0.01)
    rng = np.random.default_rng(1)
    for v in model.alphas.values():  # distinct step sizes per entry
        v.assign(rng.uniform(0.05, 0.2, v.shape))
    batch = regression_batch()
    theta = linear_parts(model)
    alpha = np.concatenate([model.alphas["w1"].numpy(), model.alphas["b1"].numpy()[None]], 0)
    g_theta = np.zeros_like(theta)
    g_alpha = np.zeros_like(theta)
    for t in range(2):
        xa, ya, xb, yb = (augment(batch[0][t]), batch[1][t], augment(batch[2][t]), batch[3][t])
        ha = 2 * xa.T @ xa / len(xa)
        ga = 2 * xa.T @ (xa @ theta - ya) / len(xa)
        th = theta - alpha * ga
        gb = 2 * xb.T @ (xb @ th - yb) / len(xb)
        g_theta += (gb - ha @ (alpha * gb)) / 2
        g_alpha += -ga * gb / 2
    _, grads = model.meta_gradients(*as_tensors(batch))
    got = dict(zip([v.name for v in model.meta_vars], [g.numpy() for g in grads]))
    np.testing.assert_allclose(np.concatenate([got["w1:0"], got["b1:0"][None]], 0), g_theta, rtol=1e-10)
    np.testing.assert_allclose(np.concatenate([got["alpha_w1:0"], got["alpha_b1:0"][None]], 0), g_alpha,
                               rtol=1e-10)
    alphas_before = alpha.copy()
    model.metatrain_step(*as_tensors(batch))
    # TF1 Adam's first step: lr * sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps), m = 0.1 g, v = 0.001 g^2.
    step = 0.01 * np.sqrt(1 - 0.999) / (1 - 0.9) * (0.1 * g_alpha) / (np.sqrt(0.001 * g_alpha ** 2) + 1e-8)
    new = np.concatenate([model.alphas["w1"].numpy(), model.alphas["b1"].numpy()[None]], 0)
    np.testing.assert_allclose(new, alphas_before - step, rtol=1e-6)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_reptile_step_by_hand(inner):
    """Reptile on a linear model: k = 2 inner steps (SGD, or Adam with beta1 = 0) on each
    task's support set, then theta <- theta + eps (mean phi - theta), eps annealed linearly."""
    model = methods.Reptile(LINEAR, update_lr=0.05, num_updates=2, dtype=tf.float64, seed=2,
                            meta_lr=0.7, inner_optimizer=inner, anneal_iterations=4)
    batch = regression_batch(seed=4)
    theta0 = linear_parts(model)

    def phi(theta, t):
        xa, ya = augment(batch[0][t]), batch[1][t]
        p, v = theta.copy(), np.zeros_like(theta)
        for j in range(2):
            g = 2 * xa.T @ (xa @ p - ya) / len(xa)
            if inner == "sgd":
                p = p - 0.05 * g
            else:
                v = 0.999 * v + 0.001 * g ** 2
                p = p - 0.05 * g / (np.sqrt(v / (1 - 0.999 ** (j + 1))) + 1e-8)
        return p
    expected = theta0
    for it in range(2):  # two meta-steps: eps = 0.7 (1 - it / 4)
        mean_phi = (phi(expected, 0) + phi(expected, 1)) / 2
        expected = expected + 0.7 * (1 - it / 4) * (mean_phi - expected)
        model.metatrain_step(*as_tensors(batch))
    np.testing.assert_allclose(linear_parts(model), expected, rtol=1e-10)


def _fd_check(model, batch, rng, eps=(1e-7, 1e-8), rtol=1e-5, n_dirs=3):
    """The model's meta-gradient (every meta-parameter) against central finite
    differences of its meta-objective along random directions.  With ReLUs the inner
    step makes the objective only piecewise smooth: a unit switching inside +-eps makes
    that difference useless, so two step sizes are tried and one must agree (a wrong
    gradient disagrees with both)."""
    inputs = as_tensors(batch)
    _, grads = model.meta_gradients(*inputs)
    base = [v.numpy().copy() for v in model.meta_vars]

    def objective(direction, h):
        for v, b, d in zip(model.meta_vars, base, direction):
            v.assign(b + h * d)
        loss, _ = model.meta_loss(*inputs)
        return float(loss)
    for _ in range(n_dirs):
        d = [rng.standard_normal(b.shape) for b in base]
        fds = [(objective(d, e) - objective(d, -e)) / (2 * e) for e in eps]
        an = sum(float(np.sum(g.numpy() * x)) for g, x in zip(grads, d))
        assert min(abs(fd - an) for fd in fds) <= rtol * max(abs(an), 1e-3), (fds, an)
    for v, b in zip(model.meta_vars, base):
        v.assign(b)


def test_anil_adapts_the_head_alone_and_its_meta_gradient_is_exact():
    model = methods.ANIL(SMALL_FC, update_lr=0.1, num_updates=2, dtype=tf.float64, seed=5)
    for v in model.weights.values():
        v.assign(v * 40)
    batch = regression_batch(seed=6)
    inputs = as_tensors(batch)
    assert model.adapted_keys == ["w2", "b2"]
    # The inner loop's gradient on the body is not taken: the adapted body is theta's.
    problem = model.engine_problem(*inputs)
    assert problem.update_lr("w1", 0) == 0.0 and problem.update_lr("w2", 1) == 0.1
    _fd_check(model, batch, np.random.default_rng(0))
    # The body's meta-gradient is not zero: it flows through the head's adaptation.
    _, grads = model.meta_gradients(*inputs)
    assert float(tf.reduce_max(tf.abs(grads[0]))) > 1e-6


@pytest.mark.parametrize("engine", ["nested", "checkpointed"])
def test_lslr_and_bnwb_meta_gradients_against_finite_differences(engine):
    """MAML++'s learned per-layer per-step step sizes and per-step batch-norm offsets and
    scales: the meta-gradient of every one of them (and of theta) is exact, through the
    nested tapes and through the checkpointed walk."""
    model = MAML(SMALL_CONV, loss="xent", update_batch_size=2, update_lr=0.1, num_updates=2,
                 dtype=tf.float64, seed=7, lslr=True, bnwb=True, engine=engine)
    rng = np.random.default_rng(3)
    for v in model.norm_params.values():
        v.assign(v + 0.2 * rng.standard_normal(v.shape))
    for v in model.step_lrs.values():
        v.assign(rng.uniform(0.05, 0.2, v.shape))
    _fd_check(model, class_batch(seed=8), rng)


def test_checkpointed_equals_nested_for_every_method():
    batch = as_tensors(class_batch(seed=9))
    for cls, kw in ((methods.MetaSGD, {}), (methods.ANIL, {}), (MAML, dict(lslr=True, bnwb=True))):
        a = cls(SMALL_CONV, loss="xent", update_batch_size=2, update_lr=0.1, num_updates=3,
                dtype=tf.float64, seed=1, engine="nested", **kw)
        b = cls(SMALL_CONV, loss="xent", update_batch_size=2, update_lr=0.1, num_updates=3,
                dtype=tf.float64, seed=1, engine="checkpointed", **kw)
        ga, gb = a.meta_gradients(*batch)[1], b.meta_gradients(*batch)[1]
        scale = max(float(tf.reduce_max(tf.abs(g))) for g in ga)
        assert max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(gb, ga)) <= 1e-10 * scale, cls


def mamlpp_weights(n, progress):
    """MAML++'s get_per_step_loss_importance_vector (HowToTrainYourMAMLPytorch), with
    epoch * decay = progress / n (progress in [0, 1] of the annealing)."""
    w = np.ones(n) / n
    decay = 1.0 / n
    low = 0.03 / n
    for i in range(n - 1):
        w[i] = max(w[i] - progress * decay, low)
    w[-1] = min(w[-1] + progress * (n - 1) * decay, 1.0 - (n - 1) * low)
    return w


def test_msl_weights_follow_mamlpp():
    model = MAML(SMALL_FC, num_updates=5, msl_iterations=100, dtype=tf.float64)
    for step, progress in ((0, 0.0), (25, 0.25), (50, 0.5), (99, 0.99)):
        model.metatrain_optimizer.step.assign(step)
        np.testing.assert_allclose(model.msl_weights().numpy(), mamlpp_weights(5, progress), rtol=1e-12)
    model.metatrain_optimizer.step.assign(100)  # annealing over: the last step's loss alone
    np.testing.assert_array_equal(model.msl_weights().numpy(), [0, 0, 0, 0, 1])
    # The objective is the weighted sum of the query losses after every step.
    model.metatrain_optimizer.step.assign(30)
    inputs = as_tensors(regression_batch())
    objective, _ = model.meta_loss(*inputs)
    _, _, query = model.task_metalearn(*inputs, 5, query_steps=[1, 2, 3, 4, 5])
    expected = sum(w * float(tf.reduce_sum(query[j + 1][0])) for j, w in enumerate(mamlpp_weights(5, 0.3))) / 2
    assert float(objective) == pytest.approx(expected, rel=1e-12)


def test_cosine_annealing_and_derivative_order_annealing():
    model = MAML(LINEAR, meta_lr=0.01, ca_iterations=10, min_meta_lr=0.001, dtype=tf.float64)
    for t in (0, 5, 10, 20):
        expected = 0.001 + 0.5 * (0.01 - 0.001) * (1 + np.cos(np.pi * min(t / 10, 1)))
        assert float(model.metatrain_optimizer.schedule(tf.constant(float(t), tf.float64))) == pytest.approx(expected)
    # DA: first order while on; the switch changes the meta-gradient.
    model = MAML(SMALL_FC, update_lr=0.1, num_updates=2, dtype=tf.float64, seed=2)
    for v in model.weights.values():
        v.assign(v * 40)
    inputs = as_tensors(regression_batch())
    second = model.meta_gradients(*inputs)[1]
    model.use_first_order(True)
    first = model.meta_gradients(*inputs)[1]
    reference = MAML(SMALL_FC, update_lr=0.1, num_updates=2, dtype=tf.float64, seed=2, first_order=True)
    for v, u in zip(reference.meta_vars, model.meta_vars):
        v.assign(u)
    for x, y in zip(first, reference.meta_gradients(*inputs)[1]):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-12)
    assert max(float(tf.reduce_max(tf.abs(x - y))) for x, y in zip(first, second)) > 1e-6
    model.metatrain_step(*inputs)  # the compiled first-order step runs
    model.use_first_order(False)
    model.metatrain_step(*inputs)


def test_nil_test_is_cosine_similarity_to_the_support_set():
    spec = NetworkSpec("conv", 256, 3, (8,), norm="batch_norm", channels=1, img_size=16)
    model = methods.ANIL(spec, loss="xent", update_batch_size=2, nil_test=True, dtype=tf.float64, seed=4)
    batch = class_batch(t=1, seed=2, dim=256)
    _, accs = model.evaluate(*batch, num_steps=3)
    feats = {i: model.spec.forward(tf.constant(batch[i][0]), model.weights, model.norm_params,
                                   features=True).numpy() for i in (0, 2)}
    unit = lambda f: f / np.sqrt(np.maximum((f ** 2).sum(1, keepdims=True), 1e-12))  # noqa: E731
    fa, fb = unit(feats[0]), unit(feats[2])
    assert (np.abs(fb).sum(1) > 0).all()  # a non-degenerate case
    scores = (fb @ fa.T) @ batch[1][0] / batch[1][0].sum(0)
    acc = np.mean(scores.argmax(1) == batch[3][0].argmax(1))
    np.testing.assert_allclose(accs[0], acc)  # every column: there is no inner loop


def test_non_transductive_evaluation_normalises_each_query_with_the_support_set():
    model = MAML(SMALL_CONV, loss="xent", update_batch_size=2, update_lr=0.1, dtype=tf.float64, seed=6,
                 transductive=False)
    batch = class_batch(t=1, seed=3)
    losses, accs = model.evaluate(*batch, num_steps=1)
    # By hand: adapt (the support set's batch statistics, as always), then each query
    # example with the support set.
    inputs = as_tensors(batch)
    _, _, query = MAML.task_metalearn(model, *inputs, 1, query_steps=[])
    from maml_tf.core.meta import adapt
    from maml_tf.core import losses as L
    fwd = lambda x, w: model.spec.forward(x, w, model.norm_params)  # noqa: E731
    fast = adapt(fwd, dict(model.weights), (inputs[0][0], inputs[1][0]),
                 lambda p, y: L.xent(p, y, 2), 0.1, 1)[-1]
    outs = [fwd(tf.concat([inputs[0][0], inputs[2][0][i:i + 1]], 0), fast)[-1].numpy()
            for i in range(inputs[2].shape[1])]
    acc = np.mean(np.argmax(outs, 1) == batch[3][0].argmax(1))
    assert accs[0, 1] == pytest.approx(acc)
    transductive = MAML(SMALL_CONV, loss="xent", update_batch_size=2, update_lr=0.1, dtype=tf.float64, seed=6)
    assert not np.allclose(transductive.evaluate(*batch, num_steps=1)[0][0, 1], losses[0, 1])


def test_method_variables_are_checkpointed(tmp_path):
    """Meta-SGD's step sizes are meta-parameters: saved and restored with theta."""
    from maml_tf.run.checkpoints import CheckpointManager
    a = methods.MetaSGD(SMALL_FC, update_lr=0.1, seed=1)
    a.alphas["w1"].assign(a.alphas["w1"] * 3)
    CheckpointManager(str(tmp_path), a).save(5, 6)
    b = methods.MetaSGD(SMALL_FC, update_lr=0.1, seed=9)
    CheckpointManager(str(tmp_path), b).restore(str(tmp_path / "model5"))
    np.testing.assert_array_equal(b.alphas["w1"].numpy(), a.alphas["w1"].numpy())
    np.testing.assert_array_equal(b.weights["w1"].numpy(), a.weights["w1"].numpy())


@pytest.mark.parametrize("flags,learned", [
    (dict(method="metasgd"), "Meta-SGD"),
    (dict(lslr=True, num_updates=5, datasource="omniglot", meta_batch_size=8), "LSLR (MAML++)"),
    (dict(), ""),
])
def test_test_summary_says_which_column_learned_step_sizes_were_made_for(flags, learned):
    """Meta-SGD and LSLR learn step sizes for num_updates steps; the test's summary line shows
    that column beside the paper's and says so, with the values of hand-made per-task rows."""
    from maml_tf.run.config import config_from_flags
    from maml_tf.run.train import summary_line
    cfg = config_from_flags({"datasource": "sinusoid", "norm": "None", "train": False, **flags})
    rows = np.arange(600 * 11, dtype=float).reshape(600, 11) % 7 / 10  # 600 tasks, update0..10
    line = summary_line(cfg, rows)
    k = cfg.num_updates
    for j in sorted(set(cfg.reported_steps) | ({k} if learned else set())):
        mean = rows[:, j].mean() * (100 if cfg.classification else 1)
        assert f"{mean:.{2 if cfg.classification else 3}f}" in line
        assert f"after {j} step" in line
    assert (f"{learned} learned its step sizes for {k} inner step" in line) == bool(learned)
    assert (f"read column update{k}" in line) == bool(learned)
