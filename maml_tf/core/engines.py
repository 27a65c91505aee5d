"""How the meta-gradient flows back: five engines, one inner problem.

MAML adapts theta by n steps of gradient descent on the support loss L_a and
meta-learns theta from the query loss L_b at the adapted weights (see
:mod:`maml_tf.core.meta`):

    theta_0 = theta,   theta_{k+1} = theta_k - alpha D_k grad L_a(theta_k),   meta-loss L_b(theta_n)

(D_k = I, except under DropGrad below).  By the chain rule, with H_k the Hessian of
L_a at theta_k,

    dL_b/dtheta = (I - alpha H_0 D_0) ... (I - alpha H_{n-1} D_{n-1}) g_n,     g_n = grad L_b(theta_n).

The engines compute this product, or an approximation of it, in different ways:

``nested``        Every inner step runs under an outer GradientTape that records the
                  inner gradient's computation, and the outer tape differentiates through
                  it (TF builds the Hessian-vector products).  Exact; memory grows with n:
                  every step's activations are kept for the outer backward pass.
``checkpointed``  Exact, in bounded memory: the forward pass keeps only theta_0..theta_n
                  (parameters, small); the backward pass walks the product from the right,
                  v <- v - alpha H_k (D_k v), recomputing step k's forward and backward
                  passes for each Hessian-vector product (double backward:
                  H u = grad_theta <grad L_a(theta), u>).  Peak memory: one step's
                  activations plus n + 1 copies of the parameters.
``truncated``     Back-propagation through the last k steps only (``truncate_steps=k``;
                  Shaban et al., AISTATS 2019): the factors of the first n - k steps are
                  replaced by the identity, i.e. those inner gradients are constants.
                  k = n is ``nested``, k = 0 first order.
``implicit``      iMAML (Rajeswaran et al., NeurIPS 2019): the inner loop minimises
                  L_a(phi) + lambda/2 ||phi - theta||^2 (n gradient steps from phi = theta,
                  ``imaml_lambda``), and at its solution phi* the implicit function theorem
                  gives dphi*/dtheta = (I + H/lambda)^-1, so the meta-gradient is the
                  solution v of (I + H(phi*)/lambda) v = grad L_b(phi*), found by conjugate
                  gradient (``cg_steps`` iterations, Hessian-vector products only).  Memory
                  does not depend on n.  Damped, as the iMAML reference code
                  (aravindr93/imaml_dev, ``matrix_evaluator``: ``regu_coef``, ``lam_damping``)
                  solves it: ((1 + d) I + H/(lambda + lambda_d)) v = grad L_b(phi*)
                  (``cg_damping`` = d, ``lam_damping`` = lambda_d; 0 and 0: undamped), which
                  keeps the system positive definite where phi* is not converged and H is
                  indefinite.
``es``            ES-MAML (Song et al., ICLR 2020), Hessian-free and zero-order: with
                  f(theta) = L_b(theta_n(theta)) (the inner loop takes ordinary gradients)
                  and antithetic Gaussian perturbations eps_i ~ N(0, I),
                      grad ~= 1/(2 sigma S) sum_i [f(theta + sigma eps_i) - f(theta - sigma eps_i)] eps_i,
                  an unbiased estimate of the gradient of the Gaussian-smoothed
                  E_eps f(theta + sigma eps) (``es_samples`` = S pairs, ``es_sigma``).
                  No second derivatives, no backward pass through the inner loop.

``first_order`` (every engine but ``es``) drops the Hessian terms: the meta-gradient is
g_n.  ``dropgrad`` (DropGrad, Tseng et al. 2020), for every engine: each inner gradient is
multiplied elementwise by a random mask D_k with E[D_k] = 1, Bernoulli (keep with
probability 1 - rate, scaled by 1/(1 - rate)) or Gaussian (N(1, rate/(1 - rate))), drawn
from (seed, step counter, k, parameter): the same mask wherever a step is recomputed.

Meta-parameters that the inner loop does not adapt (the normalisation offsets, as in
the original) get their meta-gradient from every step too: each engine returns it
(``checkpointed`` adds -alpha d/dextra <D_k grad L_a, v> at every step of its walk,
``implicit`` the implicit-function term -M^T (I + H/lambda)^-1 g_n / lambda with
M = d^2 L_a / dphi dextra; damped, -M^T v / (lambda + lambda_d) with v the damped solution).

One :class:`Problem` describes the inner problem for every engine: for one task
(:func:`maml_tf.core.meta.meta_gradient`) or for a meta-batch whose tasks run together
(the training step of :class:`maml_tf.methods.maml.MAML`: ``expand`` broadcasts theta to T
per-task copies, the losses are summed over tasks, which share nothing, and
``task_dot`` gives per-task inner products, so conjugate gradient runs per task).
"""
import dataclasses
from typing import Callable, Dict, List, Optional

import tensorflow as tf

from maml_tf.core import DROPGRAD_TYPES, ENGINES  # noqa: F401  (the names; checked without TF by config)

ZERO = tf.UnconnectedGradients.ZERO


@dataclasses.dataclass
class Options:
    """Engine options, named as the command-line flags."""
    first_order: bool = False
    truncate_steps: Optional[int] = None
    imaml_lambda: float = 1.0
    cg_steps: int = 5
    cg_damping: float = 0.0
    lam_damping: float = 0.0
    es_samples: int = 16
    es_sigma: float = 0.01
    dropgrad: float = 0.0
    dropgrad_type: str = "bernoulli"
    seed: int = 0
    step: object = 0  # a counter (int or int tensor) mixed into the random seeds: the training iteration

    def check(self, engine, num_updates):
        if engine not in ENGINES:
            raise ValueError(f"unknown meta-gradient engine {engine!r}: use one of {', '.join(ENGINES)}")
        if engine == "truncated":
            if self.truncate_steps is None:
                raise ValueError("engine 'truncated' needs truncate_steps (0 .. num_updates)")
            if not 0 <= self.truncate_steps <= num_updates:
                raise ValueError(f"truncate_steps={self.truncate_steps} must be between 0 and num_updates={num_updates}")
        if not 0.0 <= self.dropgrad < 1.0:
            raise ValueError(f"dropgrad={self.dropgrad} must be in [0, 1)")
        if self.dropgrad_type not in DROPGRAD_TYPES:
            raise ValueError(f"dropgrad_type={self.dropgrad_type!r}: use bernoulli or gaussian")
        if engine == "implicit" and self.imaml_lambda <= 0:
            raise ValueError(f"imaml_lambda={self.imaml_lambda} must be positive")
        if engine == "implicit" and self.cg_steps < 1:
            raise ValueError(f"cg_steps={self.cg_steps} must be at least 1")
        if self.cg_damping < 0 or self.lam_damping < 0:
            raise ValueError("cg_damping and lam_damping must be at least 0")
        if engine == "es" and (self.es_samples < 1 or self.es_sigma <= 0):
            raise ValueError("es_samples must be at least 1 and es_sigma positive")


@dataclasses.dataclass
class Problem:
    """The inner problem.  ``theta``: the adapted meta-parameters (one shared copy);
    ``extra``: meta-parameters the inner loop does not adapt (read by the losses, or by
    ``update_lr``); ``inner_loss(fast, extra, k)``: support loss at step k;
    ``outer_loss(fast, extra)``: query loss at the adapted weights (scalars: summed over
    the tasks of a meta-batch); ``update_lr``: alpha, or a function (key, k) -> the step
    size of that parameter at step k (a tensor broadcast against it: Meta-SGD, MAML++'s
    per-step rates, 0 for a parameter the inner loop leaves alone as ANIL's body);
    ``expand``: theta -> the inner loop's starting fast weights (per-task copies, or
    theta itself); ``task_dot(a, b)``: inner product per task of two fast-weight dicts;
    ``step_dependent``: ``inner_loss`` / ``update_lr`` index per-step parameters with a
    Python int k (MAML++'s per-step rates and batch-norm sets), so the engines' loops
    are unrolled; otherwise k may be a tensor and they run as ``tf.while_loop``."""
    theta: Dict[str, tf.Tensor]
    inner_loss: Callable
    outer_loss: Callable
    update_lr: object
    num_updates: int
    extra: List = dataclasses.field(default_factory=list)
    expand: Callable = None
    task_dot: Callable = None
    step_dependent: bool = False

    def __post_init__(self):
        if not callable(self.update_lr):
            alpha = self.update_lr
            self.update_lr = lambda key, k: alpha
            self.fixed_lr = alpha
        else:
            self.fixed_lr = None
        if self.expand is None:
            self.expand = lambda theta: dict(theta)
        if self.task_dot is None:
            self.task_dot = lambda a, b: tf.add_n([tf.reduce_sum(a[k] * b[k]) for k in a])


@dataclasses.dataclass
class Result:
    """outer_loss: the meta-objective (at the adapted weights); grad_theta / grad_extra:
    its meta-gradient (an estimate, for ``es``); fast: the adapted weights theta_n (phi
    for ``implicit``)."""
    outer_loss: tf.Tensor
    grad_theta: Dict[str, tf.Tensor]
    grad_extra: List[tf.Tensor]
    fast: Dict[str, tf.Tensor]


# ------------------------------------------------------------------ DropGrad
def dropgrad_mask(grads, opts, k):
    """D_k: one mask per parameter, E = 1, a function of (seed, step, k, parameter)."""
    out = {}
    step = tf.cast(opts.step, tf.int64)
    for i, key in enumerate(sorted(grads)):
        g = grads[key]
        seed = tf.stack([tf.constant(opts.seed, tf.int64), step * 1000003 + tf.cast(k, tf.int64) * 1009 + i])
        if opts.dropgrad_type == "bernoulli":
            keep = tf.random.stateless_uniform(tf.shape(g), seed, dtype=g.dtype) >= opts.dropgrad
            out[key] = tf.cast(keep, g.dtype) / (1.0 - opts.dropgrad)
        else:
            std = (opts.dropgrad / (1.0 - opts.dropgrad)) ** 0.5
            out[key] = 1.0 + std * tf.random.stateless_normal(tf.shape(g), seed, dtype=g.dtype)
    return out


def _masked(grads, opts, k):
    if not opts.dropgrad:
        return grads
    mask = dropgrad_mask(grads, opts, k)
    return {key: grads[key] * mask[key] for key in grads}


def _stop(first_order, outer_tape):
    return outer_tape.stop_recording() if (first_order and outer_tape is not None) else _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def inner_step(problem, fast, extra, opts, k, outer_tape=None, first_order=False, proximal=None):
    """(L_a(fast), fast') for inner step k: fast' = fast - alpha D_k grad L_a(fast)
    (+ lambda (fast - theta) for iMAML's proximal term).  Under ``outer_tape`` the
    gradient's computation is recorded unless ``first_order``."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(list(fast.values()))
        loss = problem.inner_loss(fast, extra, k)
    with _stop(first_order, outer_tape):
        grads = tape.gradient(loss, fast, unconnected_gradients=ZERO)
    if first_order and outer_tape is None:
        grads = {key: tf.stop_gradient(g) for key, g in grads.items()}
    grads = _masked(grads, opts, k)
    if proximal is not None:
        lam, anchor = proximal
        grads = {key: grads[key] + lam * (fast[key] - anchor[key]) for key in grads}
    return loss, {key: fast[key] - problem.update_lr(key, k) * grads[key] for key in fast}


# ------------------------------------------------------------------ inner loops as loops
# Every engine but ``nested`` runs the inner loop without recording it for an outer
# backward pass, so its n steps need not be n copies of the step in the graph: a
# ``tf.while_loop`` holds one step's graph whatever n.  That matters for memory: unrolled,
# a 50-step mini5w1s graph (forward, backward and the walk's double backward per step)
# costs more memory to build and optimise than the activations the walk saves (the
# peak grew ~60 MB per step).  ``parallel_iterations=1``: one step's activations at a
# time.  Problems whose steps read per-step parameters by a Python index
# (``step_dependent``) are unrolled as before.
def _loops(problem):
    return not problem.step_dependent and problem.num_updates > 0


def inner_loop(problem, fast, extra, opts, proximal=None, keep=False):
    """theta_n from ``fast`` = theta_0 by the n inner steps, their gradients constants
    (``first_order``); with ``keep`` also ``at(k)`` -> theta_k for k = 0..n."""
    n = problem.num_updates
    if not _loops(problem):
        kept = [fast]
        for k in range(n):
            _, fast = inner_step(problem, fast, extra, opts, k, first_order=True, proximal=proximal)
            kept.append(fast)
        return (fast, kept.__getitem__) if keep else fast
    keys = sorted(fast)
    tas = {}
    if keep:
        tas = {key: tf.TensorArray(fast[key].dtype, size=n + 1, element_shape=fast[key].shape,
                                   clear_after_read=False).write(0, fast[key]) for key in keys}

    def body(k, fast, tas):
        _, new = inner_step(problem, fast, extra, opts, k, first_order=True, proximal=proximal)
        new = {key: tf.ensure_shape(new[key], fast[key].shape) for key in keys}
        return k + 1, new, {key: ta.write(k + 1, new[key]) for key, ta in tas.items()}

    _, fast, tas = tf.while_loop(lambda k, *_: k < n, body, (tf.constant(0), dict(fast), tas),
                                 parallel_iterations=1)
    if not keep:
        return fast
    return fast, lambda k: {key: tas[key].read(k) for key in keys}


def _watch_all(tape, problem, extra):
    tape.watch(list(problem.theta.values()))
    tape.watch(extra)


# ------------------------------------------------------------------ engines
def nested(problem, opts):
    """Nested tapes; ``truncate_steps`` makes the first n - k inner gradients constants."""
    n = problem.num_updates
    cut = 0 if opts.truncate_steps is None else n - opts.truncate_steps
    extra = list(problem.extra)
    with tf.GradientTape(watch_accessed_variables=False) as outer:
        _watch_all(outer, problem, extra)
        fast = problem.expand(problem.theta)
        for k in range(n):
            _, fast = inner_step(problem, fast, extra, opts, k, outer_tape=outer,
                                 first_order=opts.first_order or k < cut)
        loss = problem.outer_loss(fast, extra)
    g_theta, g_extra = outer.gradient(loss, [problem.theta, extra], unconnected_gradients=ZERO)
    return Result(loss, g_theta, g_extra, fast)


def truncated(problem, opts):
    return nested(problem, opts)


def _outer_gradient(problem, fast, extra):
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(list(fast.values()))
        tape.watch(extra)
        loss = problem.outer_loss(fast, extra)
    g_fast, g_extra = tape.gradient(loss, [fast, extra], unconnected_gradients=ZERO)
    return loss, g_fast, g_extra


def _pull_back(problem, v):
    """d<expand(theta), v>/dtheta: per-task vectors back to the shared theta (a sum over tasks)."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(list(problem.theta.values()))
        fast0 = problem.expand(problem.theta)
    return tape.gradient(fast0, problem.theta, output_gradients=v, unconnected_gradients=ZERO)


def hvp(problem, at, extra, vec, k=0):
    """H(at) vec by double backward, H the Hessian of L_a (step k) in the fast weights,
    and d/dextra <grad L_a(at), vec> (the mixed second derivative)."""
    return _step_vjp(problem, at, extra, vec, None, k, scaled=False)


def _step_vjp(problem, at, extra, vec, opts, k, scaled=True):
    """Differentiate u = <A_k D_k grad L_a(at), vec> (A_k the step sizes, D_k the DropGrad
    mask; ``scaled=False``: u = <grad L_a, vec>) with respect to the fast weights and
    extra: (H D_k A_k vec, d u / d extra), the step's vector-Jacobian products."""
    with tf.GradientTape(watch_accessed_variables=False) as outer:
        outer.watch(list(at.values()))
        outer.watch(extra)
        with tf.GradientTape(watch_accessed_variables=False) as inner:
            inner.watch(list(at.values()))
            loss = problem.inner_loss(at, extra, k)
        g = inner.gradient(loss, at, unconnected_gradients=ZERO)
        if scaled:
            g = _masked(g, opts, k)
            g = {key: problem.update_lr(key, k) * g[key] for key in g}
        dot = tf.add_n([tf.reduce_sum(g[key] * tf.stop_gradient(vec[key])) for key in g])
    return outer.gradient(dot, [at, extra], unconnected_gradients=ZERO)


def checkpointed(problem, opts):
    """Keep theta_0..theta_n, then walk v <- v - H_k (D_k A_k v) back from g_n (A_k the
    step sizes), and extra's meta-gradient along (its effect on step k's gradient and
    on the step sizes)."""
    extra = list(problem.extra)
    fast, at_step = inner_loop(problem, problem.expand(problem.theta), extra, opts, keep=True)
    loss, v, g_extra = _outer_gradient(problem, fast, extra)
    g_extra = list(g_extra)
    if opts.first_order:
        return Result(loss, _pull_back(problem, v), g_extra, fast)
    n = problem.num_updates
    stop = 0 if opts.truncate_steps is None else n - opts.truncate_steps

    def walk(k, v, g_extra):
        # A graph runs an op as soon as its inputs exist.  Step k's recomputation does
        # not depend on v, so without this it could run before the walk reaches it (every
        # step's at once, unrolled): starting it from v_{k+1} makes one step's activations
        # alive at a time.
        with tf.control_dependencies(tf.nest.flatten(v)):
            at = {key: tf.identity(val) for key, val in at_step(k).items()}
        h, h_extra = _step_vjp(problem, at, extra, v, opts, k)
        return k - 1, {key: v[key] - h[key] for key in v}, [ge - he for ge, he in zip(g_extra, h_extra)]

    if _loops(problem):
        _, v, g_extra = tf.while_loop(lambda k, *_: k >= stop, walk, (tf.constant(n - 1), v, g_extra),
                                      parallel_iterations=1)
    else:
        for k in reversed(range(stop, n)):
            _, v, g_extra = walk(k, v, g_extra)
    return Result(loss, _pull_back(problem, v), list(g_extra), fast)


def conjugate_gradient(apply_a, b, steps, task_dot):
    """Solve A x = b (A symmetric positive definite) by ``steps`` CG iterations from x = 0,
    with per-task step sizes (``task_dot`` gives per-task inner products; each task's
    system is independent)."""
    x = {k: tf.zeros_like(v) for k, v in b.items()}
    r = dict(b)
    p = dict(b)
    rr = task_dot(r, r)
    for _ in range(steps):
        ap = apply_a(p)
        pap = task_dot(p, ap)
        alpha = tf.math.divide_no_nan(rr, pap)
        x = {k: x[k] + _bcast(alpha, x[k]) * p[k] for k in x}
        r = {k: r[k] - _bcast(alpha, r[k]) * ap[k] for k in r}
        rr_new = task_dot(r, r)
        beta = tf.math.divide_no_nan(rr_new, rr)
        p = {k: r[k] + _bcast(beta, p[k]) * p[k] for k in p}
        rr = rr_new
    return x


def _bcast(s, like):
    """A per-task scalar ([] or [T]) broadcast against a per-task tensor [T, ...]."""
    if s.shape.rank == 0:
        return s
    return tf.reshape(s, [-1] + [1] * (like.shape.rank - 1))


def implicit(problem, opts):
    """iMAML: n proximal gradient steps, then ((1 + d) I + H/(lambda + lambda_d)) v = g_n by
    conjugate gradient (d = ``cg_damping``, lambda_d = ``lam_damping``; undamped: both 0)."""
    extra = list(problem.extra)
    lam = opts.imaml_lambda
    scale = lam + opts.lam_damping  # the Hessian's divisor in the (damped) system
    diag = 1.0 + opts.cg_damping
    if problem.fixed_lr is None:
        raise ValueError("the implicit meta-gradient needs one fixed inner step size (the "
                         "proximal inner problem's solution does not depend on learned ones)")
    anchor = problem.expand(problem.theta)
    fast = inner_loop(problem, anchor, extra, opts, proximal=(lam, anchor))
    loss, g, g_extra = _outer_gradient(problem, fast, extra)
    if opts.first_order:
        v, g_extra = g, list(g_extra)
    else:
        def apply_a(p):
            h, _ = hvp(problem, fast, extra, p, problem.num_updates)
            return {key: diag * p[key] + h[key] / scale for key in p}
        v = conjugate_gradient(apply_a, g, opts.cg_steps, problem.task_dot)
        # extra: dL_b/dextra = dL_b/dextra|direct - M^T (H + lambda I)^-1 g_n, (H + lambda I)^-1 g_n = v / lambda
        # (damped: v / (lambda + lambda_d), the same solve's estimate of it)
        _, h_extra = hvp(problem, fast, extra, {key: v[key] / scale for key in v}, problem.num_updates)
        g_extra = [ge - he for ge, he in zip(g_extra, h_extra)]
    return Result(loss, _pull_back(problem, v), g_extra, fast)


def es(problem, opts):
    """ES-MAML: antithetic Gaussian perturbations of every meta-parameter (theta and extra)."""
    extra = [tf.convert_to_tensor(e) for e in problem.extra]
    keys = sorted(problem.theta)
    step = tf.cast(opts.step, tf.int64)
    sigma = opts.es_sigma

    def f(theta, ex):
        return problem.outer_loss(inner_loop(problem, problem.expand(theta), ex, opts), ex)

    g_theta = {k: tf.zeros_like(problem.theta[k]) for k in keys}
    g_extra = [tf.zeros_like(e) for e in extra]
    for i in range(opts.es_samples):
        def noise(j, like):
            seed = tf.stack([tf.constant(opts.seed, tf.int64) + 7919, step * 1000003 + i * 997 + j])
            return tf.random.stateless_normal(tf.shape(like), seed, dtype=like.dtype)
        eps = {k: noise(j, problem.theta[k]) for j, k in enumerate(keys)}
        eps_extra = [noise(len(keys) + j, e) for j, e in enumerate(extra)]
        plus = f({k: problem.theta[k] + sigma * eps[k] for k in keys},
                 [e + sigma * d for e, d in zip(extra, eps_extra)])
        minus = f({k: problem.theta[k] - sigma * eps[k] for k in keys},
                  [e - sigma * d for e, d in zip(extra, eps_extra)])
        w = (plus - minus) / (2.0 * sigma * opts.es_samples)
        g_theta = {k: g_theta[k] + w * eps[k] for k in keys}
        g_extra = [g + w * d for g, d in zip(g_extra, eps_extra)]
    fast = inner_loop(problem, problem.expand(problem.theta), extra, opts)
    loss = problem.outer_loss(fast, extra)
    return Result(loss, g_theta, g_extra, fast)


def run(problem, engine="nested", opts=None):
    """The meta-gradient of ``problem`` by ``engine`` (see the module docstring)."""
    opts = opts or Options()
    opts.check(engine, problem.num_updates)
    return {"nested": nested, "truncated": truncated, "checkpointed": checkpointed,
            "implicit": implicit, "es": es}[engine](problem, opts)
