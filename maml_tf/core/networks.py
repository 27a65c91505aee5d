"""The original MAML networks as pure functions of explicit weight dicts.

``weights`` (theta, adapted in the inner loop) holds, as in cbfinn/maml:
  fc:   w1, b1, ..., w{L+1}, b{L+1}
  conv: conv1..conv4 (3x3 kernels, HWIO), b1..b4, w5, b5
``norm_params`` holds the normalisation parameters, keyed as the original's
variable scopes ('0/beta', '1/beta', ...; fc scopes are '0', '2', '3', ...).
They are meta-learned by the outer optimiser but, as in the original (where
they were not in ``weights``), not adapted by the inner gradient steps.

Every forward function takes either one task (``x``: [B, dim_input], weights
unbatched) or, with ``batched=True``, a meta-batch of T tasks with per-task
weights (``x``: [T, B, dim_input], every weight with a leading T axis).  The
batched form computes exactly what T separate calls would (per-task batch
statistics included); convolutions become one grouped convolution.
"""
import contextlib
import dataclasses
import functools
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

BN_EPSILON = 1e-3   # tf.contrib.layers.batch_norm default
# Whether outer tapes differentiate the max-pool gradient's routing (MaxPoolGrad's
# derivative with respect to the incoming gradient; TF's MaxPoolGradGrad, registered
# since TF 1.2).  The original's special_grads.py, active on older TF, gave that
# derivative as 0: :func:`tf_before_1_2_max_pool` reproduces it for a comparison.
_MAXPOOL_GRAD_DIFFERENTIATED = [True]
LN_EPSILON = 1e-12  # tf.contrib.layers.layer_norm default
NORMS = ("batch_norm", "layer_norm", "None")
PRECISIONS = ("float32", "bfloat16")  # of the conv nets' products (_product)


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """Architecture of one of the original networks.

    kind: 'fc' or 'conv'.  dim_hidden: hidden sizes (fc) or (num_filters,) (conv).
    flatten: conv head flattens the last feature map (miniImageNet) instead of
    averaging it spatially (Omniglot).  head_init: 'normal' (N(0, 1), Omniglot)
    or 'xavier' (miniImageNet) for the conv output layer.
    """
    kind: str
    dim_input: int
    dim_output: int
    dim_hidden: Tuple[int, ...]
    norm: str = "None"
    channels: int = 1
    img_size: int = 0
    max_pool: bool = False
    flatten: bool = False
    head_init: str = "normal"
    precision: str = "float32"  # 'bfloat16': the conv nets' products in bfloat16 (_product)

    def __post_init__(self):
        if self.kind not in ("fc", "conv"):
            raise ValueError(f"unknown network kind {self.kind!r}: use 'fc' or 'conv'")
        if self.norm not in NORMS:
            raise ValueError(f"--norm={self.norm!r} is not one of {', '.join(NORMS)}")
        if self.precision not in PRECISIONS or (self.precision != "float32" and self.kind != "conv"):
            raise ValueError(f"--precision={self.precision!r}: use float32, or bfloat16 for a conv net")
        if self.kind == "conv" and self.img_size * self.img_size * self.channels != self.dim_input:
            raise ValueError(
                f"conv net needs dim_input = img_size^2 * channels, got {self.dim_input} "
                f"for {self.img_size}x{self.img_size}x{self.channels}")

    # ---------------------------------------------------------------- naming
    @property
    def norm_scopes(self):
        """Variable scopes of the normalisation layers, as in the original."""
        if self.kind == "conv":
            return ["0", "1", "2", "3"]
        # forward_fc used scope '0' for the first layer, then str(i + 1).
        return ["0"] + [str(i + 1) for i in range(1, len(self.dim_hidden))]

    @property
    def norm_channels(self):
        if self.kind == "conv":
            return [self.dim_hidden[0]] * 4
        return list(self.dim_hidden)

    @property
    def feature_size(self):
        """Spatial size of the last conv feature map (for the flatten head)."""
        size = self.img_size
        for _ in range(4):
            size = size // 2 if self.max_pool else -(-size // 2)
        return size

    # ---------------------------------------------------------------- init
    def init(self, seed=0, dtype=np.float32, rng=None):
        """Initial (weights, norm_params) as numpy arrays, the original's way.

        fc kernels: truncated normal, stddev 0.01 (cut at 2 stddev); conv kernels:
        Xavier/Glorot uniform; conv output layer: N(0, 1) (Omniglot) or Xavier
        uniform (miniImageNet); biases 0; batch-norm offsets 0, layer-norm scale 1.
        Draws from ``np.random.default_rng(seed)``, or from ``rng`` when given (which
        is then advanced, e.g. to draw data after the weights from the same stream).
        """
        if rng is None:
            rng = np.random.default_rng(seed)
        w = {}
        if self.kind == "fc":
            sizes = [self.dim_input] + list(self.dim_hidden) + [self.dim_output]
            for i in range(len(sizes) - 1):
                w[f"w{i + 1}"] = truncated_normal(rng, (sizes[i], sizes[i + 1]), 0.01)
                w[f"b{i + 1}"] = np.zeros([sizes[i + 1]])
        else:
            nf = self.dim_hidden[0]
            ins = [self.channels, nf, nf, nf]
            for i in range(4):
                w[f"conv{i + 1}"] = glorot_uniform(rng, (3, 3, ins[i], nf))
                w[f"b{i + 1}"] = np.zeros([nf])
            feat = nf * self.feature_size ** 2 if self.flatten else nf
            if self.head_init == "xavier":
                w["w5"] = glorot_uniform(rng, (feat, self.dim_output))
            else:
                w["w5"] = rng.standard_normal((feat, self.dim_output))
            w["b5"] = np.zeros([self.dim_output])
        norm = {}
        for scope, ch in zip(self.norm_scopes, self.norm_channels):
            if self.norm in ("batch_norm", "layer_norm"):
                norm[f"{scope}/beta"] = np.zeros([ch])
            if self.norm == "layer_norm":
                norm[f"{scope}/gamma"] = np.ones([ch])
        cast = lambda d: {k: np.asarray(v, dtype=dtype) for k, v in d.items()}
        return cast(w), cast(norm)

    # ---------------------------------------------------------------- forward
    def forward(self, x, weights, norm_params=None, batched=False, features=False):
        """Logits of the network for ``x`` with ``weights`` (see module doc);
        ``features``: the penultimate representation instead (the input of the output
        layer: ANIL's body output)."""
        norm_params = norm_params or {}
        if self.kind == "fc":
            return _forward_fc(self, x, weights, norm_params, batched, features)
        return _forward_conv(self, x, weights, norm_params, batched, features)

    @property
    def head_keys(self):
        """The output layer's weights (ANIL adapts these alone)."""
        if self.kind == "conv":
            return ["w5", "b5"]
        last = len(self.dim_hidden) + 1
        return [f"w{last}", f"b{last}"]


def truncated_normal(rng, shape, stddev):
    """Normal(0, stddev) redrawn outside +-2 stddev, as tf.truncated_normal."""
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out * stddev


def glorot_uniform(rng, shape):
    """U(-l, l), l = sqrt(6 / (fan_in + fan_out)), receptive field included."""
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


# -------------------------------------------------------------------- norms
def _sum(x, axes):
    """``reduce_sum(x, axes, keepdims=True)`` accurate in float32, to every derivative order.

    TF's CPU kernels sum a reduction of many numbers in one sequential pass, whose
    float32 rounding error grows with the count: the batch-norm statistics of a
    miniImageNet query batch (75 x 84 x 84 numbers per channel) came out ~1e-2
    off, enough to move the meta-loss by 9% through the inner steps' large
    gradients (float32 TF 330.7, float64 and the torch/JAX anchors 302.9).
    Reducing one axis at a time bounds the error by the sum of the axis lengths.
    The gradient is a broadcast whose own gradient is this sum again, so the
    derivatives of any order reduce the same way.
    """
    axes = sorted(a % x.shape.rank for a in axes)

    @tf.custom_gradient
    def fn(x):
        y = x
        for a in reversed(axes):
            y = tf.reduce_sum(y, a, keepdims=True)

        def grad(dy):
            return _broadcast(dy, x, axes)
        return y, grad
    return fn(x)


def _broadcast(m, like, axes):
    """``m`` (size 1 along ``axes``) broadcast to the shape of ``like``; gradient: :func:`_sum`."""
    @tf.custom_gradient
    def fn(m):
        def grad(dy):
            return _sum(dy, axes)
        return tf.broadcast_to(m, tf.shape(like)), grad
    return fn(m)


def _add(x, p, axes):
    """x + p, ``p`` broadcast along ``axes`` of ``x``; gradients reduced with :func:`_sum`."""
    @tf.custom_gradient
    def fn(x, p):
        def grad(dy):
            return dy, tf.reshape(_sum(dy, axes), tf.shape(p))
        return x + p, grad
    return fn(x, p)


def _mul(x, p, axes):
    """x * p, ``p`` broadcast along ``axes`` of ``x``; gradients reduced with :func:`_sum`."""
    @tf.custom_gradient
    def fn(x, p):
        def grad(dy):
            return _mul(dy, p, axes), tf.reshape(_sum(dy * x, axes), tf.shape(p))
        return x * p, grad
    return fn(x, p)


def _count(x, axes):
    n = 1
    for a in axes:
        n = n * (x.shape[a] if x.shape[a] is not None else tf.shape(x)[a])
    return tf.cast(n, x.dtype)


def _standardize(x, axes, eps):
    """(x - mean) / sqrt(var + eps), moments over ``axes``, differentiable to any order.

    Not ``tf.nn.moments``: it computes the variance around stop_gradient(mean),
    which leaves the first derivative right but drops terms from the second,
    and MAML differentiates the inner gradient.  Sums are :func:`_sum`.

    The value is computed by ordinary ops (which the outer tapes record), but
    its gradient is the closed form of the normalisation's vector-Jacobian
    product, dx = r (g - mean(g) - xhat mean(g xhat)): about half the full-size
    passes of autodiff through the moments.  That formula is written in ops of
    xhat and r, so a tape differentiating the gradient again goes through the
    recorded moments: the second derivatives stay exact.
    """
    axes = sorted(a % x.shape.rank for a in axes)
    n = _count(x, axes)
    mean = _sum(x, axes) / n
    xc = _add(x, -mean, axes)
    r = tf.math.rsqrt(_sum(tf.square(xc), axes) / n + eps)
    xhat = _mul(xc, r, axes)

    @tf.custom_gradient
    def fn(x, xhat, r):
        def grad(g):
            m1 = _sum(g, axes) / n
            m2 = _sum(g * xhat, axes) / n
            dx = _mul(g, r, axes) - _add(_mul(xhat, r * m2, axes), r * m1, axes)
            return dx, None, None
        return tf.identity(xhat), grad
    return fn(x, xhat, r)


def _batch_norm_relu(x, beta, axes, pool=False):
    """[max_pool(] ReLU(batch_norm(x)) [)], the layer's tail, with a fused gradient.

    The value is computed by ordinary (recorded) ops: precise moments, then
    z = (x - mean) r + beta.  The gradient with respect to x and beta is the
    closed form of batch norm's vector-Jacobian product, written by hand in
    recorded ops of the saved tensors (so a tape differentiates it again
    exactly: second order), with about half the full-size memory passes of
    autodiff through the moments, and one full-size tensor kept per layer.

    With ``pool``, the 2x2 max-pool is taken before the normalisation: the
    per-channel map x -> relu((x - mean) r + beta) is non-decreasing (r > 0;
    float rounding is monotone too), so max-pooling commutes with it and the
    result is bit-identical, while the normalisation, the ReLU and their
    gradients run on a quarter of the elements.  Only the statistics (and
    their gradient) see the full-size tensor.
    """
    rank = x.shape.rank
    axes = sorted(a % rank for a in axes)
    outer = list(range(rank - 1))  # beta (per channel) is broadcast over these
    n = _count(x, axes)
    mean = _sum(x, axes) / n
    scope = tf.get_current_name_scope()  # the gradient ops go under the layer's name (profiles)
    if pool:
        r = tf.math.rsqrt(_sum(_squared_deviation(x, mean, axes), axes) / n + BN_EPSILON)
        return _bn_pool_relu(x, mean, r, beta, axes, outer, n, scope)
    xc = _add(x, -mean, axes)
    r = tf.math.rsqrt(_sum(tf.square(xc), axes) / n + BN_EPSILON)
    z = _add(_mul(xc, r, axes), beta, outer)

    @tf.custom_gradient
    def fn(x, z, r, beta):
        y = tf.nn.relu(z)

        def grad(dy):
            with tf.name_scope(scope + "/bn_relu_grad/" if scope else "bn_relu_grad"):
                # The ReLU mask's derivative is 0 (a.e.): it may come from the forward y.
                g = tf.raw_ops.ReluGrad(gradients=dy, features=y)
                xhat = _add(z, -beta, outer)
                m1 = _sum(g, axes) / n
                m2 = _sum(g * xhat, axes) / n
                dx = _mul(g, r, axes) - _add(_mul(xhat, r * m2, axes), r * m1, axes)
                return dx, None, None, tf.reshape(_sum(g, outer), tf.shape(beta))
        return tf.identity(y), grad
    return fn(x, z, r, beta)


def _squared_deviation(x, mean, axes):
    """(x - mean)^2 in one full-size pass (``mean`` size 1 along ``axes``); gradients
    by :func:`_add` / :func:`_sum`, so differentiable to any order."""
    @tf.custom_gradient
    def fn(x, mean):
        def grad(g):
            dx = 2.0 * g * _add(x, -mean, axes)
            return dx, -tf.reshape(_sum(dx, axes), tf.shape(mean))
        return tf.math.squared_difference(x, mean), grad
    return fn(x, mean)


def _bn_pool_relu(x, mean, r, beta, axes, outer, n, scope):
    """max_pool(ReLU((x - mean) r + beta)) as ReLU((max_pool(x) - mean) r + beta); see
    :func:`_batch_norm_relu`.  mean, r: the (recorded) statistics of x."""
    p = tf.nn.max_pool2d(x, 2, 2, "VALID")
    z = _add(_mul(_add(p, -mean, outer), r, outer), beta, outer)

    @tf.custom_gradient
    def fn(x, p, z, mean, r, beta):
        y = tf.nn.relu(z)

        def grad(dy):
            with tf.name_scope(scope + "/bn_pool_relu_grad/" if scope else "bn_pool_relu_grad"):
                g = tf.raw_ops.ReluGrad(gradients=dy, features=y)        # pooled size
                dp = _mul(g, r, outer)
                # z = (p - mean) r + beta: per-channel gradients of mean and r ...
                dmean = -_sum(dp, outer)
                dr = _sum(g * _add(p, -mean, outer), outer)
                # ... and r = (mean((x - mean)^2) + eps)^-1/2 (the mean term of the
                # variance's gradient vanishes: sum(x - mean) = 0).
                c2 = dr * (-(r * r * r)) / n
                dxp = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=p, grad=dp,
                                             ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                                             padding="VALID")
                if not _MAXPOOL_GRAD_DIFFERENTIATED[0]:  # TF < 1.2 + special_grads.py: see below
                    dxp = tf.stop_gradient(dxp)
                # x's last use after the pool gradient's: the elementwise ops below
                # may then reuse x's buffer (first order: one full-size tensor less).
                with tf.control_dependencies([dxp]):
                    dstat = _add(_mul(_add(x, -mean, axes), c2, axes), dmean / n, axes)
                dx = dxp + dstat
                return (dx, None, None, None, None,
                        tf.reshape(_sum(g, outer), tf.shape(beta)))
        return tf.identity(y), grad
    return fn(x, p, z, mean, r, beta)


def _normalize(spec, x, norm_params, scope, axes, ln_axes, tile=1, pool=False):
    """ReLU(norm(x)), then 2x2 max-pool if ``pool``, with the original's conventions.

    batch_norm: statistics of the batch being normalised (always: the original
    never switched to moving averages), offset only, eps 1e-3.
    layer_norm: per example over ``ln_axes``, scale and offset, eps 1e-12.
    ``tile`` repeats per-channel parameters for the grouped (T*C) layout.
    """
    outer = list(range(x.shape.rank - 1))  # per-channel parameters broadcast over these
    if spec.norm == "batch_norm":
        beta = norm_params[f"{scope}/beta"]
        gamma = norm_params.get(f"{scope}/gamma")  # a scale: MAML++'s per-step parameters only
        if tile > 1:
            # Per-task parameters [T, C] (Reptile adapts them) are the grouped layout's
            # [T*C] already; shared ones [C] are repeated for every task.
            def spread(p):
                return tf.reshape(p, [-1]) if len(p.shape) == 2 else tf.tile(p, [tile])
            beta = spread(beta)
            gamma = None if gamma is None else spread(gamma)
        if gamma is None:
            return _batch_norm_relu(x, beta, axes, pool)
        x = _add(_mul(_standardize(x, axes, BN_EPSILON), gamma, outer), beta, outer)
    if spec.norm == "layer_norm":
        x = _standardize(x, ln_axes, LN_EPSILON)
        x = _add(_mul(x, norm_params[f"{scope}/gamma"], outer), norm_params[f"{scope}/beta"], outer)
    x = tf.nn.relu(x)
    return tf.nn.max_pool2d(x, 2, 2, "VALID") if pool else x


@functools.lru_cache(maxsize=None)
def grouped_conv_differentiable():
    """Whether this TensorFlow differentiates float32 grouped convolutions.

    On CPU only its oneDNN kernels do (x86 builds, unless TF_ENABLE_ONEDNN_OPTS=0;
    not macOS or most ARM builds); cuDNN does on GPU.  Probed once per process,
    eagerly, on the default device.
    """
    with tf.init_scope():
        try:  # the kernel gradient of 2 groups of 1 channel (init_scope pauses tapes)
            x = tf.ones([1, 3, 3, 2])
            g = tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=[1, 1, 1, 2], out_backprop=x, strides=[1, 1, 1, 1],
                padding="SAME")
            ok = bool(np.allclose(g.numpy(), 9.0))
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError,
                tf.errors.NotFoundError):
            ok = False
    return ok


def _product(op, a, b, precision):
    """``op(a, b)`` (a convolution or a matrix product) with its operands in ``precision``.

    bfloat16 (``--precision=bfloat16``, opt-in): both operands are rounded to bfloat16 (8 bits
    of mantissa), the product runs on the CPU's bfloat16 units (AVX-512 BF16, AMX) or a GPU's
    tensor cores (accumulating in float32), its result is rounded to bfloat16 by the kernel and
    comes back in the model's dtype, so that everything else (the weights, batch norm, the
    losses, the inner updates, the optimiser) stays float32.  The casts are differentiable: the
    gradients of the product, first and second order, run in bfloat16 as well, and reach the
    weights in float32.  float32 (the default) changes nothing.  How far this moves the
    meta-gradient, and what it gains: docs/speed.md, "bfloat16".
    """
    if precision == "float32":
        return op(a, b)
    dtype = a.dtype
    return tf.cast(op(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16)), dtype)


def _conv(h, kernel, strides, groups, precision="float32"):
    """3x3 'SAME' convolution; ``groups`` > 1 is the grouped (one group per task) form.

    TF differentiates grouped convolutions in float32 (and bfloat16) only, and on CPU only
    through oneDNN (:func:`grouped_conv_differentiable`); otherwise (float64 in
    the tests, TensorFlow without oneDNN) the groups run one by one.
    """
    conv = lambda a, k: tf.nn.conv2d(a, k, strides, "SAME")
    if groups == 1 or (h.dtype == tf.float32 and grouped_conv_differentiable()):
        return _product(conv, h, kernel, precision)
    hs = tf.split(h, groups, axis=-1)
    ks = tf.split(kernel, groups, axis=-1)
    return tf.concat([_product(conv, a, k, precision) for a, k in zip(hs, ks)], axis=-1)


def _forward_fc(spec, x, w, norm_params, batched, features=False):
    n_layers = len(spec.dim_hidden) + 1
    scopes = spec.norm_scopes
    h = x
    stat_axes = [1] if batched else [0]
    for i in range(1, n_layers + 1):
        if features and i == n_layers:
            return h
        b = w[f"b{i}"]
        if batched:
            b = b[:, None, :]
        h = tf.matmul(h, w[f"w{i}"]) + b
        if i < n_layers:
            h = _normalize(spec, h, norm_params, scopes[i - 1], stat_axes, [-1])
    return h


def _low_rank_product(h, a, d):
    """(h a^T) d for [T, B, i], [T, K, i], [T, K, o] (a factored kernel update applied to h).

    Its gradients are written with products that contract the operands' last
    (or lhs-last, rhs-first) axes only: XLA:CPU runs the transposed-lhs batched
    matmuls autodiff would produce (p^T dz, ...) several times slower.
    """
    @tf.custom_gradient
    def fn(h, a, d):
        def grad(dz):
            dp = tf.matmul(dz, d, transpose_b=True)                     # [T, B, K]
            dpt = tf.matmul(d, dz, transpose_b=True)                    # [T, K, B]
            pt = tf.matmul(a, h, transpose_b=True)                      # [T, K, B]
            return tf.matmul(dp, a), tf.matmul(dpt, h), tf.matmul(pt, dz)
        return tf.matmul(tf.matmul(h, a, transpose_b=True), d), grad
    return fn(h, a, d)


class FactoredFCWeights:
    """Per-task fast weights of an fc network for a meta-batch, kept factored.

    An inner SGD step changes task t's kernel of layer l by -alpha * A_t^T D_t,
    A_t the layer's inputs on the support examples [B, i] and D_t the loss
    gradient with respect to its outputs [B, o]: a rank <= B update.  Instead of
    materialising T kernels [T, i, o] (and differentiating through them), a
    "factored" layer keeps the shared kernel W and the factors, and computes
    h W_t = h W - alpha sum_j (h A_j^T) D_j: one [T*B, i] x [i, o] matmul plus
    small [B, B] products.  Same function, far fewer flops for wide layers
    (sinusoid 40x40: 4x); narrow layers (i or o tiny) keep explicit [T, i, o]
    kernels.  Biases are always explicit ([T, o]).  D comes from differentiating
    the loss with respect to zero offsets added to each layer's outputs, so the
    tapes see ordinary ops and differentiate them again (second order).
    """

    def __init__(self, spec, layers):
        self.spec = spec
        self.layers = layers  # per layer: dict(w=..., b=[T, o], terms=[(A, D, scale)], explicit=bool)

    @classmethod
    def initial(cls, spec, weights, tasks, support, query, steps):
        n_layers = len(spec.dim_hidden) + 1
        layers = []
        for l in range(1, n_layers + 1):
            w, b = weights[f"w{l}"], weights[f"b{l}"]
            i, o = w.shape
            explicit = i * o * (support + query) <= (i + o) * support * max(support, query) * steps
            if explicit:
                w = tf.broadcast_to(w, [tasks, i, o])
            layers.append(dict(w=w, b=tf.broadcast_to(b, [tasks, o]), terms=[], explicit=explicit))
        return cls(spec, layers)

    def output_shapes(self, tasks, batch):
        return [[tasks, batch, layer["b"].shape[-1]] for layer in self.layers]

    def forward(self, x, norm_params, offsets=None):
        """(logits [T, B, out], inputs of every layer) for x [T, B, in]."""
        spec = self.spec
        n_layers = len(self.layers)
        h, inputs = x, []
        for l, layer in enumerate(self.layers, start=1):
            inputs.append(h)
            w = layer["w"]
            if layer["explicit"]:
                z = tf.matmul(h, w)
            else:
                t, i, o = h.shape[0], w.shape[0], w.shape[1]
                z = tf.reshape(tf.matmul(tf.reshape(h, [-1, i]), w), [t, -1, o])
                for a, d, scale in layer["terms"]:
                    z = z + scale * _low_rank_product(h, a, d)
            z = z + layer["b"][:, None, :]
            if offsets is not None:
                z = z + offsets[l - 1]
            h = z
            if l < n_layers:
                h = _normalize(spec, h, norm_params, spec.norm_scopes[l - 1], [1], [-1])
        return h, inputs

    def updated(self, inputs, out_grads, lr, stop_gradient=False):
        """The weights after one SGD step: inputs / out_grads of every layer on the support set."""
        layers = []
        for layer, a, d in zip(self.layers, inputs, out_grads):
            if stop_gradient:
                a, d = tf.stop_gradient(a), tf.stop_gradient(d)
            new = dict(layer)
            new["b"] = layer["b"] - lr * tf.reduce_sum(d, 1)
            if layer["explicit"]:
                new["w"] = layer["w"] - lr * tf.matmul(a, d, transpose_a=True)
            else:
                new["terms"] = layer["terms"] + [(a, d, -lr)]
            layers.append(new)
        return FactoredFCWeights(self.spec, layers)


def _forward_conv(spec, x, w, norm_params, batched, features=False):
    s, c = spec.img_size, spec.channels
    strides = 1 if spec.max_pool else 2
    if batched:
        # [T, B, s*s*c] -> grouped layout [B, s, s, T*c]: task t owns channels t*c..t*c+c-1.
        t = x.shape[0]
        if t is None:
            raise ValueError("batched conv forward needs a static number of tasks")
        h = tf.reshape(x, [t, -1, s, s, c])
        h = tf.transpose(h, [1, 2, 3, 0, 4])
        h = tf.reshape(h, [tf.shape(h)[0], s, s, t * c])
    else:
        h = tf.reshape(x, [-1, s, s, c])
    for i in range(1, 5):
      with tf.name_scope(f"layer{i}"):
        kernel, bias = w[f"conv{i}"], w[f"b{i}"]
        if batched:
            kh, kw, cin, cout = kernel.shape[1:]
            kernel = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, cin, t * cout])
            bias = tf.reshape(bias, [t * cout])
        h = _conv(h, kernel, strides, t if batched else 1, spec.precision) + bias
        if batched and spec.norm == "layer_norm":
            hs = tf.shape(h)
            h5 = tf.reshape(h, [hs[0], hs[1], hs[2], t, -1])
            h5 = _normalize(spec, h5, norm_params, str(i - 1), [0, 1, 2], [1, 2, 4])
            h = tf.reshape(h5, hs)
            if spec.max_pool:
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
        else:
            h = _normalize(spec, h, norm_params, str(i - 1), [0, 1, 2], [1, 2, 3],
                           tile=t if batched else 1, pool=spec.max_pool)
    if batched:
        hs = tf.shape(h)
        h = tf.reshape(h, [hs[0], hs[1], hs[2], t, -1])
        h = tf.transpose(h, [3, 0, 1, 2, 4])  # [T, B, h, w, C]
        if spec.flatten:
            h = tf.reshape(h, [t, hs[0], -1])
        else:
            h = tf.reduce_mean(h, [2, 3])
        return h if features else _product(tf.matmul, h, w["w5"], spec.precision) + w["b5"][:, None, :]
    if spec.flatten:
        h = tf.reshape(h, [tf.shape(h)[0], -1])
    else:
        h = tf.reduce_mean(h, [1, 2])
    return h if features else _product(tf.matmul, h, w["w5"], spec.precision) + w["b5"]


def build_network(datasource, dim_input, dim_output, conv=True, num_filters=64,
                  max_pool=False, norm="batch_norm", precision="float32"):
    """The network cbfinn/maml's MAML class builds for a data source (``precision``: of the
    conv nets' products, :func:`_product`)."""
    if datasource == "sinusoid":
        return NetworkSpec("fc", dim_input, dim_output, (40, 40), norm=norm)
    if datasource not in ("omniglot", "miniimagenet"):
        raise ValueError(f"unknown datasource {datasource!r}: use sinusoid, omniglot or miniimagenet")
    channels = 3 if datasource == "miniimagenet" else 1
    img_size = int(round(np.sqrt(dim_input / channels)))
    if not conv:
        return NetworkSpec("fc", dim_input, dim_output, (256, 128, 64, 64), norm=norm,
                           channels=channels, img_size=img_size)
    mini = datasource == "miniimagenet"
    return NetworkSpec("conv", dim_input, dim_output, (num_filters,), norm=norm,
                       channels=channels, img_size=img_size, max_pool=max_pool,
                       flatten=mini, head_init="xavier" if mini else "normal", precision=precision)


ParamDict = Dict[str, tf.Tensor]


@contextlib.contextmanager
def tf_before_1_2_max_pool():
    """Build the batch-norm + max-pool layers as the original's ``special_grads.py``
    differentiated them on TensorFlow < 1.2 (the paper's): its gradient of MaxPoolGrad is 0
    for the incoming gradient, the one input MaxPoolGrad depends on (linearly; it is
    piecewise constant in the others), so every second-order term routed through a
    max-pool layer's gradient is lost.  (The value it returned for the pooled input is no
    derivative of anything; that part is left out.)  For comparisons only
    (reproduce/special_grads.py): graphs built inside use it."""
    _MAXPOOL_GRAD_DIFFERENTIATED[0] = False
    try:
        yield
    finally:
        _MAXPOOL_GRAD_DIFFERENTIATED[0] = True
