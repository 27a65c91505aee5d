"""The MAML model: meta-parameters, the meta-training step and evaluation.

Mirrors the paper's MAML class.  theta lives in ``weights`` (adapted by the
inner loop) and ``norm_params`` (normalisation offsets/scales: meta-learned,
not adapted, as in the original).  Two outer Adam optimisers with step beta
(``meta_lr``) as in the original graph: one for pre-training on the pre-update
loss, one for meta-training on the post-update loss.

A meta-batch of T tasks is processed together (``task_mode='batched'``): every
layer runs on all tasks at once, and one inner gradient of the summed task
losses gives each task its own gradient, since the tasks share nothing.  Conv
nets broadcast theta to T per-task copies and run one grouped convolution per
layer; fc nets keep the per-task fast weights factored (theta plus low-rank
inner-step updates, :class:`maml_tf.core.networks.FactoredFCWeights`).
``task_mode='loop'`` runs the tasks one after another; both compute the same
numbers (tests check it, and against :mod:`maml_tf.core.meta`).

Speed (bench/README.md): the fc nets' training step is compiled with XLA
(``jit_compile=None`` chooses), the conv nets' runs as a TF graph on oneDNN;
``metatrain_step`` calls the traced graph directly (:class:`_DirectCall`), and
:func:`configure_threads` sizes TF's thread pools for the network.
"""
import dataclasses
import itertools
import os

import numpy as np
import tensorflow as tf

from maml_tf.core import engines, losses
from maml_tf.core.meta import ZERO, tape_gradient
from maml_tf.core.networks import FactoredFCWeights
from maml_tf.core.optimizer import Adam

TASK_MODES = ("batched", "loop")
METRIC_KEYS = ("preloss", "postloss", "preacc", "postacc")


THREAD_SPLIT = "MAML_TF_THREAD_SPLIT"


def thread_settings(spec, cpus=None, split=None):
    """(intra_op, inter_op) TF thread-pool sizes for training ``spec`` on ``cpus`` CPUs.

    The fc nets' whole step is one XLA program of ~100 tiny kernels: handing them
    to a second thread costs more than it saves (sinusoid: 0.36 ms/step with one
    intra-op thread, 0.45 ms with two).  The conv nets' oneDNN convolutions use
    every CPU (intra = inter = cpus), or, with ``split``, each op one core and up to
    ``cpus`` ops side by side (intra 1): independent branches (the per-task loop's
    tasks) then share the cores without splitting each small op (mini5w1s, loop, 2
    cores of an AMD EPYC Zen 5: 0.58 s against 0.66-0.75 s per step; omniglot20w1s
    batched: 13% slower).  Which is faster is measured, not assumed
    (:func:`maml_tf.run.autotune.choose_threads`).  ``cpus``: default, the CPUs this
    process may run on; ``split`` default: the environment's ``MAML_TF_THREAD_SPLIT=1``
    (which that measured choice sets).
    """
    if split is None:
        split = os.environ.get(THREAD_SPLIT) == "1"
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = max(1, int(cpus))
    if spec.kind == "fc":
        return 1, cpus
    return (1, cpus) if split else (cpus, cpus)


def configure_threads(spec, cpus=None, split=None):
    """Size TF's thread pools for ``spec`` (see :func:`thread_settings`).

    Must run before TensorFlow executes its first op (the pools are fixed then);
    returns False, changing nothing, if it is too late.
    """
    intra, inter = thread_settings(spec, cpus, split)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        return False
    return True


class _DirectCall:
    """Runs a ``tf.function``'s traced graph without tf.function's Python dispatch.

    ``tf.function.__call__`` spends ~0.3-0.5 ms per call binding arguments and
    looking up its trace cache, more than a whole sinusoid meta-step.  This keeps
    one concrete function per input signature and calls its graph the way
    ``ConcreteFunction`` does when no gradient tape is recording (the runtime's
    function call op), falling back to the plain call whenever that shortcut
    does not apply (a tape recording, a distribution strategy, graph mode, or
    TF internals that moved).
    """

    def __init__(self, fn):
        self.fn = fn
        self._entries = {}
        try:
            from tensorflow.python.eager import context, execute, record
            self._context, self._execute, self._record = context, execute, record
        except ImportError:  # TF internals moved: plain calls
            self._context = None

    def __call__(self, *args):
        if (self._context is None or self._record.could_possibly_record()
                or not tf.executing_eagerly() or tf.distribute.has_strategy()):
            return self.fn(*args)
        try:
            key = tuple((a.dtype, a._shape_tuple()) for a in args)  # pylint: disable=protected-access
        except AttributeError:  # not eager tensors
            return self.fn(*args)
        entry = self._entries.get(key)
        if entry is None:
            try:
                cf = self.fn.get_concrete_function(*args)
                atomic = cf._inference_function  # pylint: disable=protected-access
                ctx = self._context.context()
                attrs = tuple(itertools.chain(*ctx.function_call_options.as_attrs().items()))
                entry = (cf, atomic.name.decode("utf-8"), len(atomic.function_type.flat_outputs),
                         list(cf.captured_inputs), attrs, ctx,
                         isinstance(cf.structured_outputs, tf.Tensor))
            except (AttributeError, TypeError):  # TF internals changed: plain calls
                self._context = None
                return self.fn(*args)
            self._entries[key] = entry
        cf, name, n_out, captured, attrs, ctx, single = entry
        flat = self._execute.execute(name, n_out, list(args) + captured, attrs, ctx)
        if single:
            return flat[0]
        return tf.nest.pack_sequence_as(cf.structured_outputs, flat)


class MAML(tf.Module):
    """Model-agnostic meta-learner for one network ``spec``.

    loss: 'mse' (regression) or 'xent' (classification, scaled by 1/K with
    K = ``update_batch_size``).  update_lr is alpha, meta_lr beta, num_updates
    the number of inner steps used for the meta-gradient; ``first_order`` drops
    the second-order terms; ``clip_value`` clips meta-gradients elementwise
    (the original did this for miniImageNet with 10).
    """

    # Loop mode's evaluation: the tasks inside tf.map_fn (one task's graph) rather than
    # unrolled (see _evaluate_each_task); the same numbers either way (tests check it).
    map_eval_tasks = True

    def __init__(self, spec, loss="mse", update_batch_size=1, update_lr=1e-3, num_updates=1,
                 meta_lr=1e-3, first_order=False, clip_value=None, seed=0,
                 task_mode="batched", jit_compile=None, dtype=tf.float32, engine="nested",
                 lslr=False, msl_iterations=0, bnwb=False, ca_iterations=0, min_meta_lr=1e-5,
                 transductive=True, **engine_options):
        super().__init__(name="maml")
        if task_mode not in TASK_MODES:
            raise ValueError(f"task_mode must be one of {TASK_MODES}, got {task_mode!r}")
        # How the meta-gradient flows back (maml_tf/engines.py): 'nested' runs the fast
        # paths below (with truncate_steps and dropgrad); the others build an
        # engines.Problem of the meta-batch.
        self.engine = engine
        self.engine_options = engines.Options(first_order=first_order, seed=seed, **engine_options)
        self.engine_options.check(engine, num_updates)
        self.spec = spec
        self.classification = loss == "xent"
        self.update_batch_size = update_batch_size
        self.update_lr = update_lr
        self.num_updates = num_updates
        self.first_order = first_order
        self.clip_value = clip_value
        self.task_mode = task_mode
        self.dtype = tf.as_dtype(dtype)
        # MAML++ (Antoniou et al. 2019), each usable alone: per-layer per-step inner step
        # sizes (LSLR), the multi-step loss annealed over msl_iterations (MSL), per-step
        # batch-norm offsets and scales (BNWB), cosine annealing of the outer step size
        # over ca_iterations (CA).  Derivative-order annealing (DA) is the training
        # loop's: it calls use_first_order().
        self.lslr, self.msl_iterations, self.bnwb = bool(lslr), int(msl_iterations), bool(bnwb)
        # Evaluation: batch statistics over the whole query set (transductive, as the
        # original), or each query example normalised with the support set alone.
        self.transductive = bool(transductive)
        # None: XLA where it wins on CPU.  The fc nets are many tiny ops (XLA fuses
        # them: sinusoid 2x faster); XLA:CPU convolutions are several times slower
        # than TF's oneDNN kernels, so the conv nets run as TF graphs.
        self.jit_compile = (spec.kind == "fc") if jit_compile is None else bool(jit_compile)
        np_dtype = self.dtype.as_numpy_dtype
        w, n = spec.init(seed, dtype=np_dtype)
        self.weights = {k: tf.Variable(v, name=k.replace("/", "_")) for k, v in w.items()}
        if bnwb:
            if spec.norm != "batch_norm":
                raise ValueError("bnwb (per-step batch-norm offsets and scales) needs norm='batch_norm'")
            # One offset and one scale per channel for each of the steps 0..n (the weights
            # theta_j of step j are normalised with set j; steps beyond n use set n).
            n = {**{k: np.stack([v] * (num_updates + 1)) for k, v in n.items()},
                 **{k.replace("/beta", "/gamma"): np.ones((num_updates + 1,) + v.shape, np_dtype)
                    for k, v in n.items()}}
        self.norm_params = {k: tf.Variable(v, name=k.replace("/", "_")) for k, v in n.items()}
        if lslr:  # one step size per weight tensor (layer) and inner step, from alpha
            self.step_lrs = {k: tf.Variable(np.full([max(num_updates, 1)], update_lr, np_dtype),
                                            name="lslr_" + k) for k in self.weights}
        self.method_vars = self._method_variables(np_dtype)
        self.meta_vars = (list(self.weights.values()) + list(self.norm_params.values())
                          + list(self.method_vars.values()))
        self.pretrain_optimizer = Adam(self.meta_vars, meta_lr, name="pretrain_adam")
        schedule = None
        if ca_iterations:  # MAML++'s cosine annealing: meta_lr -> min_meta_lr over ca_iterations
            schedule = lambda t: min_meta_lr + 0.5 * (meta_lr - min_meta_lr) * (  # noqa: E731
                1.0 + tf.cos(np.pi * tf.minimum(t / ca_iterations, 1.0)))
        self.metatrain_optimizer = Adam(self.meta_vars, meta_lr, name="metatrain_adam", schedule=schedule)
        jit = self.jit_compile
        self._metatrain = _DirectCall(tf.function(self._metatrain_packed, jit_compile=jit,
                                                  autograph=False))
        self._metatrain_by_order = {self.first_order: self._metatrain}
        self._pretrain = _DirectCall(tf.function(self._pretrain_packed, jit_compile=jit,
                                                 autograph=False))

        self._evaluate = tf.function(self._evaluate_step, jit_compile=jit, autograph=False)
        self._fused = {}

    # ------------------------------------------------------------ building blocks
    def forward(self, x, weights, batched=False, step=0):
        """Network output for ``x`` under (fast) ``weights`` (theta_step) and the
        meta-learned normalisation parameters (of that step, with BNWB)."""
        return self.spec.forward(x, weights, self.norms_at(step), batched=batched)

    # ------------------------------------------------------------ method hooks
    # What a meta-learner changes, one place each: the extra meta-parameters, which
    # weights the inner loop adapts and with which step size, the normalisation
    # parameters of each step, the outer objective.  MAML: all weights, alpha, one set
    # of offsets, the query loss after n steps.
    def _method_variables(self, np_dtype):
        """Extra meta-parameters of a method (name -> tf.Variable), created before the
        optimisers; saved in checkpoints with everything else."""
        return {}

    @property
    def adapted_keys(self):
        """The weights the inner loop adapts (the others stay at theta)."""
        return list(self.weights)

    def inner_lr(self, key, step):
        """The inner step size of weight ``key`` at step ``step`` (a float or a tensor
        broadcast against the weight).  Steps beyond the trained number (evaluation with
        more steps) use the last trained step's size."""
        if self.lslr:
            return self.step_lrs[key][min(step, self.step_lrs[key].shape[0] - 1)]
        return self.update_lr

    def norms_at(self, step):
        """The normalisation parameters used at inner step ``step`` (BNWB: that step's set;
        beyond the trained steps the last set)."""
        if not self.bnwb:
            return self.norm_params
        j = min(step, self.num_updates)
        return {k: v[j] for k, v in self.norm_params.items()}

    def msl_weights(self):
        """MAML++'s multi-step loss weights of the query losses after steps 1..n at the
        current training step: uniform at first, annealed over msl_iterations towards the
        last step (the others down to 0.03/n), then the last step alone."""
        n = self.num_updates
        p = tf.minimum(tf.cast(self.metatrain_optimizer.step, self.dtype) / float(self.msl_iterations), 1.0)
        early = tf.maximum(1.0 / n - p / n, 0.03 / n)
        last = tf.minimum(1.0 / n + p * (n - 1) / n, 1.0 - (n - 1) * 0.03 / n)
        annealed = tf.concat([tf.fill([n - 1], early), [last]], 0)
        return tf.where(p < 1.0, annealed, tf.one_hot(n - 1, n, dtype=self.dtype))

    def use_first_order(self, flag):
        """Switch the meta-gradient between first and second order (MAML++'s derivative-
        order annealing: first order for the first iterations); each order has its own
        compiled step."""
        flag = bool(flag)
        if flag == self.first_order:
            return
        self.first_order = flag
        self.engine_options = dataclasses.replace(self.engine_options, first_order=flag)
        if flag not in self._metatrain_by_order:
            self._metatrain_by_order[flag] = _DirectCall(tf.function(
                self._metatrain_packed, jit_compile=self.jit_compile, autograph=False))
        self._metatrain = self._metatrain_by_order[flag]

    def apply_meta_update(self, grads):
        """The outer update from the meta-gradient: clipped (miniImageNet) TF1 Adam."""
        if self.clip_value is not None:
            grads = [tf.clip_by_value(g, -self.clip_value, self.clip_value) for g in grads]
        self.metatrain_optimizer.apply_gradients(grads, self.meta_vars)
        return grads

    def query_predictions(self, inputa, inputb, fast, step, batched):
        """The query outputs at fast weights ``fast`` (theta_step): one forward pass over
        the query set (transductive batch statistics), or, with ``transductive=False``,
        each query example normalised together with the support set alone."""
        if self.transductive or self.spec.norm != "batch_norm":
            return self.forward(inputb, fast, batched=batched, step=step)
        if not batched:  # one task: its query examples as a batch of (support + 1) sets
            inputa, inputb = inputa[None], inputb[None]
            fast = {k: v[None] for k, v in fast.items()}
        t, q = inputb.shape[0], inputb.shape[1]
        x = tf.concat([tf.repeat(inputa, q, axis=0), tf.reshape(inputb, [t * q, 1, -1])], axis=1)
        out = self.forward(x, {k: tf.repeat(v, q, axis=0) for k, v in fast.items()}, batched=True,
                           step=step)[:, -1]
        out = tf.reshape(out, [t, q, -1])
        return out if batched else out[0]

    @property
    def _plain(self):
        """No method hook changes the inner loop (the factored fc fast path applies)."""
        return (type(self).adapted_keys is MAML.adapted_keys and type(self).inner_lr is MAML.inner_lr
                and not self.lslr and not self.bnwb)

    def loss(self, pred, label):
        """The original's loss (:mod:`maml_tf.core.losses`): a scalar, or [T] for batched input."""
        per_task = len(pred.shape) == 3
        if self.classification:
            return losses.xent(pred, label, self.update_batch_size, per_task=per_task)
        return losses.mse(pred, label, per_task=per_task)

    def accuracy(self, pred, label):
        if pred.shape[-1] == 1 and pred.shape.rank is not None and pred.shape[:-2].is_fully_defined():
            # One output (regression): the arg-max is always 0, every example a hit.
            return tf.ones(pred.shape[:-2], pred.dtype)
        return losses.accuracy(pred, label, per_task=len(pred.shape) == 3)

    def _trajectory(self, fwd, fast, inputa, labela, inputb, labelb, num_updates, first_order,
                    outer_tape, query_steps, dropgrad=None):
        """Inner loop from ``fast``: pre-update support loss/accuracy and, for each
        j in ``query_steps``, the query loss/accuracy after j inner steps.  The inner
        gradients of steps j < ``cut`` are constants (``truncate_steps``); ``dropgrad``:
        grads, j -> masked grads."""
        cut = self._truncation(num_updates, outer_tape)
        adapted = self.adapted_keys
        lossa = acca = None
        query = {}
        for j in range(num_updates + 1):
            if j in query_steps:
                predb = self.query_predictions(inputa, inputb, fast, j, len(inputb.shape) == 3)
                query[j] = (self.loss(predb, labelb), self.accuracy(predb, labelb))
            if j == num_updates:
                break
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch([fast[k] for k in adapted])
                preda = fwd(inputa, fast, j)
                la = self.loss(preda, labela)
                total = tf.reduce_sum(la)
            if j == 0:
                lossa, acca = la, self.accuracy(preda, labela)
            grads = tape_gradient(tape, total, {k: fast[k] for k in adapted}, first_order or j < cut,
                                  outer_tape)
            if dropgrad is not None:
                grads = dropgrad(grads, j)
            fast = {**fast, **{k: fast[k] - self.inner_lr(k, j) * grads[k] for k in adapted}}
        if lossa is None:  # no inner step
            preda = fwd(inputa, fast, 0)
            lossa, acca = self.loss(preda, labela), self.accuracy(preda, labela)
        return lossa, acca, query

    def _trajectory_factored(self, inputa, labela, inputb, labelb, num_updates, first_order,
                             outer_tape, query_steps):
        """:meth:`_trajectory` for fc networks, tasks batched, fast weights factored
        (see :class:`maml_tf.core.networks.FactoredFCWeights`)."""
        t, bs = inputa.shape[0], inputa.shape[1]
        cut = self._truncation(num_updates, outer_tape)
        fast = FactoredFCWeights.initial(self.spec, self.weights, t, bs, inputb.shape[1],
                                         max(num_updates, 1))
        lossa = acca = None
        query = {}
        for j in range(num_updates + 1):
            if j in query_steps:
                predb, _ = fast.forward(inputb, self.norm_params)
                query[j] = (self.loss(predb, labelb), self.accuracy(predb, labelb))
            if j == num_updates:
                break
            offsets = [tf.zeros(s, inputa.dtype) for s in fast.output_shapes(t, bs)]
            step_first_order = first_order or j < cut
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(offsets)
                preda, inputs = fast.forward(inputa, self.norm_params, offsets)
                la = self.loss(preda, labela)
                total = tf.reduce_sum(la)
            if j == 0:
                lossa, acca = la, self.accuracy(preda, labela)
            grads = tape_gradient(tape, total, offsets, step_first_order, outer_tape)
            fast = fast.updated(inputs, grads, self.update_lr, stop_gradient=step_first_order)
        if lossa is None:  # no inner step
            preda, _ = fast.forward(inputa, self.norm_params)
            lossa, acca = self.loss(preda, labela), self.accuracy(preda, labela)
        return lossa, acca, query

    def task_metalearn(self, inputa, labela, inputb, labelb, num_updates, first_order=False,
                       outer_tape=None, query_steps=None):
        """Adapt to every task of a meta-batch ([T, ...] inputs).

        Returns (lossa [T], acca [T], {j: (lossb_j [T], accb_j [T])}) with the
        pre-update support loss and the query loss after j inner steps for each
        j in ``query_steps`` (default: only ``num_updates``).
        """
        if query_steps is None:
            query_steps = [num_updates]
        # DropGrad only while meta-training (outer_tape given), not in evaluation.
        drop = self.engine_options.dropgrad and outer_tape is not None
        t = inputa.shape[0]
        if (self.task_mode == "batched" and self.spec.kind == "fc" and not drop and self._plain
                and self.transductive):
            return self._trajectory_factored(inputa, labela, inputb, labelb, num_updates,
                                             first_order, outer_tape, query_steps)
        if self.task_mode == "batched":
            fast = {k: tf.broadcast_to(v, [t] + v.shape.as_list()) for k, v in self.weights.items()}
            fwd = lambda x, w, j: self.forward(x, w, batched=True, step=j)
            return self._trajectory(fwd, fast, inputa, labela, inputb, labelb, num_updates,
                                    first_order, outer_tape, query_steps,
                                    self._dropgrad_fn(t) if drop else None)
        fwd = lambda x, w, j: self.forward(x, w, step=j)
        if outer_tape is None and t > 1 and self.map_eval_tasks:
            return self._evaluate_each_task(fwd, inputa, labela, inputb, labelb, num_updates,
                                            first_order, query_steps)
        per_task = [self._trajectory(fwd, dict(self.weights), inputa[i], labela[i],
                                     inputb[i], labelb[i], num_updates, first_order, outer_tape,
                                     query_steps, self._dropgrad_fn(t, i) if drop else None)
                    for i in range(t)]
        lossa = tf.stack([r[0] for r in per_task])
        acca = tf.stack([r[1] for r in per_task])
        query = {j: (tf.stack([r[2][j][0] for r in per_task]),
                     tf.stack([r[2][j][1] for r in per_task])) for j in query_steps}
        return lossa, acca, query

    def _evaluate_each_task(self, fwd, inputa, labela, inputb, labelb, num_updates, first_order,
                            query_steps):
        """Loop mode without an outer gradient (evaluation): one task's inner loop inside
        ``tf.map_fn`` over the tasks, as the original's graph does, instead of T copies
        of it.  Per task the same operations as the unrolled loop; the graph is T times
        smaller, which is what its first call costs where this path is taken (TensorFlow
        builds and optimises the graph once): Omniglot 5-way 1-shot, 32 tasks and 10
        steps: the first call 346 s unrolled, 10 s mapped on an AVX2 EPYC (Zen 3), most of a
        short run's time (``python bench/trace_cost.py --config omniglot5w1s --task_mode loop``
        measures both; docs/speed.md; ``map_eval_tasks = False`` unrolls)."""
        def one(task):
            a, la, b, lb = task
            lossa, acca, query = self._trajectory(fwd, dict(self.weights), a, la, b, lb, num_updates,
                                                  first_order, None, query_steps)
            return (lossa, acca, tuple(query[j][0] for j in query_steps),
                    tuple(query[j][1] for j in query_steps))
        scalar = tf.TensorSpec([], self.dtype)
        steps = tuple(scalar for _ in query_steps)
        lossa, acca, qloss, qacc = tf.map_fn(one, (inputa, labela, inputb, labelb),
                                             fn_output_signature=(scalar, scalar, steps, steps),
                                             parallel_iterations=int(inputa.shape[0]))
        return lossa, acca, {j: (qloss[i], qacc[i]) for i, j in enumerate(query_steps)}

    def _truncation(self, num_updates, outer_tape):
        """Steps j < cut have constant inner gradients (truncate_steps; meta-training only)."""
        k = self.engine_options.truncate_steps
        return 0 if (k is None or outer_tape is None) else max(num_updates - k, 0)

    def _dropgrad_fn(self, num_tasks, task=None):
        """grads, j -> grads masked by DropGrad's D_j (engines.dropgrad_mask), drawn for the
        whole meta-batch ([T, ...]) from (seed, training step, j, parameter), so the
        loop mode (task ``task``'s rows) sees the batched mode's masks."""
        opts = dataclasses.replace(self.engine_options, step=self.metatrain_optimizer.step)

        def apply(grads, j):
            if task is None:
                mask = engines.dropgrad_mask(grads, opts, j)
                return {k: grads[k] * mask[k] for k in grads}
            full = {k: tf.zeros([num_tasks] + g.shape.as_list(), g.dtype) for k, g in grads.items()}
            mask = engines.dropgrad_mask(full, opts, j)
            return {k: grads[k] * mask[k][task] for k in grads}
        return apply

    def engine_problem(self, inputa, labela, inputb, labelb):
        """The meta-batch as an :class:`maml_tf.core.engines.Problem`: theta broadcast to T
        per-task copies; the normalisation parameters and a method's own meta-parameters
        (learned step sizes) as the meta-parameters the inner loop does not adapt; the
        method's step sizes (0 for weights it leaves alone); per-task losses summed
        (inner) or summed / T (outer: the meta-objective)."""
        t = inputa.shape[0]
        norm_keys = list(self.norm_params)
        adapted = set(self.adapted_keys)
        n = self.num_updates

        def fwd(x, fast, extra, step):
            norms = dict(zip(norm_keys, extra[:len(norm_keys)]))
            if self.bnwb:
                norms = {k: v[min(step, n)] for k, v in norms.items()}
            return self.spec.forward(x, fast, norms, batched=True)

        def task_dot(a, b):
            return tf.add_n([tf.reduce_sum(a[k] * b[k], axis=list(range(1, a[k].shape.rank)))
                             for k in a])
        fixed = self._plain or not (self.lslr or type(self).inner_lr is not MAML.inner_lr
                                    or adapted != set(self.weights))
        return engines.Problem(
            theta=dict(self.weights),
            extra=list(self.norm_params.values()) + list(self.method_vars.values()),
            update_lr=self.update_lr if fixed else (
                lambda key, k: self.inner_lr(key, k) if key in adapted else 0.0),
            num_updates=n,
            inner_loss=lambda fast, extra, k: tf.reduce_sum(self.loss(fwd(inputa, fast, extra, k), labela)),
            outer_loss=lambda fast, extra: tf.reduce_sum(self.loss(fwd(inputb, fast, extra, n), labelb))
            / tf.cast(t, inputa.dtype),
            expand=lambda theta: {k: tf.broadcast_to(v, [t] + v.shape.as_list()) for k, v in theta.items()},
            task_dot=task_dot, step_dependent=bool(self.bnwb or self.lslr))

    def _engine_gradients(self, inputa, labela, inputb, labelb):
        """(metrics, grads) by a non-nested engine (see :meth:`meta_gradients`)."""
        problem = self.engine_problem(inputa, labela, inputb, labelb)
        opts = dataclasses.replace(self.engine_options, step=self.metatrain_optimizer.step)
        result = engines.run(problem, self.engine, opts)
        preda = self.forward(inputa, problem.expand(problem.theta), batched=True, step=0)
        predb = self.forward(inputb, result.fast, batched=True, step=self.num_updates)
        t = tf.cast(inputa.shape[0], preda.dtype)
        metrics = {"preloss": tf.reduce_sum(self.loss(preda, labela)) / t,
                   "postloss": tf.reduce_sum(self.loss(predb, labelb)) / t,
                   "preacc": tf.reduce_sum(self.accuracy(preda, labela)) / t,
                   "postacc": tf.reduce_sum(self.accuracy(predb, labelb)) / t}
        grads = [result.grad_theta[k] for k in self.weights] + list(result.grad_extra)
        return metrics, grads

    # ------------------------------------------------------------ steps
    def meta_loss(self, inputa, labela, inputb, labelb, outer_tape=None):
        """Meta-objective: sum over tasks of the query loss after num_updates steps / T
        (with MAML++'s multi-step loss: the msl_weights-weighted sum over steps 1..n)."""
        n = self.num_updates
        steps = list(range(1, n + 1)) if self.msl_iterations and n > 1 else [n]
        lossa, acca, query = self.task_metalearn(inputa, labela, inputb, labelb, n,
                                                 self.first_order, outer_tape, query_steps=steps)
        lossb, accb = query[n]
        t = tf.cast(inputa.shape[0], lossb.dtype)
        metrics = {"preloss": tf.reduce_sum(lossa) / t, "postloss": tf.reduce_sum(lossb) / t,
                   "preacc": tf.reduce_sum(acca) / t, "postacc": tf.reduce_sum(accb) / t}
        if len(steps) > 1:
            w = self.msl_weights()
            objective = tf.add_n([w[j - 1] * tf.reduce_sum(query[j][0]) for j in steps]) / t
            return objective, metrics
        return metrics["postloss"], metrics

    def meta_gradients(self, inputa, labela, inputb, labelb):
        """(metrics, [dmeta_loss/dvar for var in meta_vars]) without applying them: the
        meta-gradient by ``engine`` (an estimate for 'es'; iMAML's for 'implicit')."""
        if self.engine not in ("nested", "truncated"):
            return self._engine_gradients(inputa, labela, inputb, labelb)
        with tf.GradientTape() as tape:
            loss, metrics = self.meta_loss(inputa, labela, inputb, labelb, outer_tape=tape)
        grads = tape.gradient(loss, self.meta_vars, unconnected_gradients=ZERO)
        return metrics, grads

    def _metatrain_step(self, inputa, labela, inputb, labelb):
        metrics, grads = self.meta_gradients(inputa, labela, inputb, labelb)
        grads = self.apply_meta_update(grads)
        metrics["grad_finite"] = _all_finite(grads)
        return metrics

    def pretrain_gradients(self, inputa, labela, inputb, labelb):
        """(metrics, [dpre_loss/dvar for var in meta_vars]): the pretrained baseline's
        objective, the pre-update loss summed over tasks / T, without applying them."""
        with tf.GradientTape() as tape:
            lossa, acca, _ = self.task_metalearn(inputa, labela, inputb, labelb, 0, query_steps=[])
            t = tf.cast(inputa.shape[0], lossa.dtype)
            loss = tf.reduce_sum(lossa) / t
        grads = tape.gradient(loss, self.meta_vars, unconnected_gradients=ZERO)
        return {"preloss": loss, "preacc": tf.reduce_sum(acca) / t}, grads

    def _pretrain_step(self, inputa, labela, inputb, labelb):
        metrics, grads = self.pretrain_gradients(inputa, labela, inputb, labelb)
        self.pretrain_optimizer.apply_gradients(grads, self.meta_vars)
        metrics["grad_finite"] = _all_finite(grads)
        return metrics

    # One vector out of the compiled steps: a single device-to-host copy per step.
    def _metatrain_packed(self, inputa, labela, inputb, labelb):
        m = self._metatrain_step(inputa, labela, inputb, labelb)
        return tf.stack([m[k] for k in METRIC_KEYS] + [tf.cast(m["grad_finite"], m["preloss"].dtype)])

    def _pretrain_packed(self, inputa, labela, inputb, labelb):
        m = self._pretrain_step(inputa, labela, inputb, labelb)
        return tf.stack([m["preloss"], m["preacc"], tf.cast(m["grad_finite"], m["preloss"].dtype)])

    def _evaluate_step(self, inputa, labela, inputb, labelb, num_steps):
        lossa, acca, query = self.task_metalearn(inputa, labela, inputb, labelb, num_steps,
                                                 query_steps=list(range(1, num_steps + 1)))
        losses = tf.stack([lossa] + [query[j][0] for j in range(1, num_steps + 1)], axis=1)
        accs = tf.stack([acca] + [query[j][1] for j in range(1, num_steps + 1)], axis=1)
        return losses, accs

    # ------------------------------------------------------------ public API
    def _inputs(self, batch):
        """The four arrays of a meta-batch as tensors of the model's dtype."""
        out = []
        for a in batch:
            if not (isinstance(a, tf.Tensor) and a.dtype == self.dtype):
                a = tf.constant(np.asarray(a, dtype=self.dtype.as_numpy_dtype))
            out.append(a)
        return out

    def metatrain_step(self, inputa, labela, inputb, labelb):
        """One outer Adam step on the post-update loss; returns the metrics (pre-update values)."""
        return _metatrain_metrics(self._metatrain(*self._inputs((inputa, labela, inputb, labelb))))

    # Fused steps.  A sinusoid meta-step takes ~0.3 ms, about what calling a compiled
    # function from Python and reading its result back cost: run one step per call and
    # the loop around it is a third of the time.  Here K steps run inside one compiled
    # call, a ``tf.while_loop`` over K stacked meta-batches, each iteration the same
    # step function (the same ops, the same variable updates in the same order) as a
    # single call.  The loop stops after the first step whose loss or meta-gradient is
    # not finite, as the training loop does.
    def _fused_fn(self, pretrain):
        key = (pretrain, self.first_order)
        if key not in self._fused:
            step = self._pretrain_packed if pretrain else self._metatrain_packed
            loss_at = 0 if pretrain else 1

            def run(inputa, labela, inputb, labelb):
                k = inputa.shape[0]
                width = 3 if pretrain else len(METRIC_KEYS) + 1
                out = tf.zeros([k, width], self.dtype)

                def body(i, ok, out):
                    packed = step(inputa[i], labela[i], inputb[i], labelb[i])
                    ok = tf.logical_and(tf.math.is_finite(packed[loss_at]), packed[-1] != 0)
                    return i + 1, ok, tf.tensor_scatter_nd_update(out, [[i]], [packed])
                i, _, out = tf.while_loop(lambda i, ok, out: tf.logical_and(i < k, ok), body,
                                          (tf.constant(0), tf.constant(True), out), parallel_iterations=1)
                return out, i
            self._fused[key] = _DirectCall(tf.function(run, jit_compile=self.jit_compile, autograph=False))
        return self._fused[key]

    def metatrain_steps(self, inputa, labela, inputb, labelb):
        """K meta-steps in one compiled call, on K stacked meta-batches (a leading [K]
        axis on each array): the updates of K ``metatrain_step`` calls.  Returns their
        metrics, a list of dicts, shorter than K if a step's loss or meta-gradient was
        not finite (that step's the last, applied, as ``metatrain_step`` applies it)."""
        out, n = self._fused_fn(False)(*self._inputs((inputa, labela, inputb, labelb)))
        return [_metatrain_metrics(row) for row in out.numpy()[:int(n)]]

    def pretrain_steps(self, inputa, labela, inputb, labelb):
        """K pre-training steps in one call (see :meth:`metatrain_steps`)."""
        out, n = self._fused_fn(True)(*self._inputs((inputa, labela, inputb, labelb)))
        return [_pretrain_metrics(row) for row in out.numpy()[:int(n)]]

    def pretrain_step(self, inputa, labela, inputb, labelb):
        """One outer Adam step on the pre-update loss (the pretrained baseline)."""
        return _pretrain_metrics(self._pretrain(*self._inputs((inputa, labela, inputb, labelb))))


    def evaluate(self, inputa, labela, inputb, labelb, num_steps):
        """Per-task losses and accuracies, [T, 1 + num_steps] each: column 0 is the
        pre-update loss on the support set (the original's 'update0'), column j
        the query loss after j inner steps.  theta is not changed."""
        losses, accs = self._evaluate(*self._inputs((inputa, labela, inputb, labelb)), num_steps)
        return losses.numpy(), accs.numpy()

    def get_weights(self):
        """theta and the norm parameters as numpy arrays (two dicts)."""
        return ({k: v.numpy() for k, v in self.weights.items()},
                {k: v.numpy() for k, v in self.norm_params.items()})


def _metatrain_metrics(packed):
    v = packed.numpy() if hasattr(packed, "numpy") else packed
    out = dict(zip(METRIC_KEYS, v[:4]))
    out["grad_finite"] = np.bool_(v[4] != 0)
    return out


def _pretrain_metrics(packed):
    v = packed.numpy() if hasattr(packed, "numpy") else packed
    return {"preloss": v[0], "preacc": v[1], "grad_finite": np.bool_(v[2] != 0)}


def _all_finite(tensors):
    """Whether every element of every tensor is finite (one reduction over all)."""
    flat = tf.concat([tf.reshape(g, [-1]) for g in tensors], axis=0)
    return tf.reduce_all(tf.math.is_finite(flat))
