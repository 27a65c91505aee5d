"""The MAML model: meta-parameters, the meta-training step and evaluation.

Mirrors the paper's MAML class.  theta lives in ``weights`` (adapted by the
inner loop) and ``norm_params`` (normalisation offsets/scales: meta-learned,
not adapted, as in the original).  Two outer Adam optimisers with step beta
(``meta_lr``) as in the original graph: one for pre-training on the pre-update
loss, one for meta-training on the post-update loss.

A meta-batch of T tasks is processed together (``task_mode='batched'``): theta
is broadcast to T per-task copies, every layer runs on all tasks at once
(batched matmuls, one grouped convolution), and one inner gradient of the summed
task losses gives each task its own gradient, since the tasks share nothing.
``task_mode='loop'`` runs the tasks one after another; both compute the same
numbers (tests check it, and against :mod:`maml_tf.meta`).
"""
import numpy as np
import tensorflow as tf

from maml_tf import losses
from maml_tf.meta import ZERO
from maml_tf.optimizer import Adam

TASK_MODES = ("batched", "loop")


class MAML(tf.Module):
    """Model-agnostic meta-learner for one network ``spec``.

    loss: 'mse' (regression) or 'xent' (classification, scaled by 1/K with
    K = ``update_batch_size``).  update_lr is alpha, meta_lr beta, num_updates
    the number of inner steps used for the meta-gradient; ``first_order`` drops
    the second-order terms; ``clip_value`` clips meta-gradients elementwise
    (the original did this for miniImageNet with 10).
    """

    def __init__(self, spec, loss="mse", update_batch_size=1, update_lr=1e-3, num_updates=1,
                 meta_lr=1e-3, first_order=False, clip_value=None, seed=0,
                 task_mode="batched", jit_compile=False, dtype=tf.float32):
        super().__init__(name="maml")
        if task_mode not in TASK_MODES:
            raise ValueError(f"task_mode must be one of {TASK_MODES}, got {task_mode!r}")
        self.spec = spec
        self.classification = loss == "xent"
        self.update_batch_size = update_batch_size
        self.update_lr = update_lr
        self.num_updates = num_updates
        self.first_order = first_order
        self.clip_value = clip_value
        self.task_mode = task_mode
        np_dtype = dtype.as_numpy_dtype
        w, n = spec.init(seed, dtype=np_dtype)
        self.weights = {k: tf.Variable(v, name=k.replace("/", "_")) for k, v in w.items()}
        self.norm_params = {k: tf.Variable(v, name=k.replace("/", "_")) for k, v in n.items()}
        self.meta_vars = list(self.weights.values()) + list(self.norm_params.values())
        self.pretrain_optimizer = Adam(self.meta_vars, meta_lr, name="pretrain_adam")
        self.metatrain_optimizer = Adam(self.meta_vars, meta_lr, name="metatrain_adam")
        self._metatrain = tf.function(self._metatrain_step, jit_compile=jit_compile)
        self._pretrain = tf.function(self._pretrain_step, jit_compile=jit_compile)
        self._evaluate = tf.function(self._evaluate_step, jit_compile=jit_compile)

    # ------------------------------------------------------------ building blocks
    def forward(self, x, weights, batched=False):
        """Network output for ``x`` under (fast) ``weights`` and the meta-learned norms."""
        return self.spec.forward(x, weights, self.norm_params, batched=batched)

    def loss(self, pred, label):
        """Per-task loss over the last two axes: a scalar, or [T] for batched input."""
        axes = list(range(1, len(pred.shape))) if len(pred.shape) == 3 else None
        if self.classification:
            ce = tf.nn.softmax_cross_entropy_with_logits(labels=tf.cast(label, pred.dtype), logits=pred)
            return tf.reduce_sum(ce, axis=-1 if axes else None) / tf.cast(self.update_batch_size, pred.dtype)
        return tf.reduce_mean(tf.square(pred - tf.cast(label, pred.dtype)), axis=axes)

    def accuracy(self, pred, label):
        hit = tf.cast(tf.equal(tf.argmax(pred, -1), tf.argmax(label, -1)), pred.dtype)
        return tf.reduce_mean(hit, axis=-1)

    def _trajectory(self, fwd, fast, inputa, labela, inputb, labelb, num_updates, first_order,
                    outer_tape, query_steps):
        """Inner loop from ``fast``: pre-update support loss/accuracy and, for each
        j in ``query_steps``, the query loss/accuracy after j inner steps."""
        lossa = acca = None
        query = {}
        for j in range(num_updates + 1):
            if j in query_steps:
                predb = fwd(inputb, fast)
                query[j] = (self.loss(predb, labelb), self.accuracy(predb, labelb))
            if j == num_updates:
                break
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(list(fast.values()))
                preda = fwd(inputa, fast)
                la = self.loss(preda, labela)
                total = tf.reduce_sum(la)
            if j == 0:
                lossa, acca = la, self.accuracy(preda, labela)
            if first_order and outer_tape is not None:
                with outer_tape.stop_recording():
                    grads = tape.gradient(total, fast, unconnected_gradients=ZERO)
            else:
                grads = tape.gradient(total, fast, unconnected_gradients=ZERO)
                if first_order:
                    grads = {k: tf.stop_gradient(g) for k, g in grads.items()}
            fast = {k: fast[k] - self.update_lr * grads[k] for k in fast}
        if lossa is None:  # no inner step
            preda = fwd(inputa, fast)
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
        if self.task_mode == "batched":
            t = inputa.shape[0]
            fast = {k: tf.broadcast_to(v, [t] + v.shape.as_list()) for k, v in self.weights.items()}
            fwd = lambda x, w: self.forward(x, w, batched=True)
            return self._trajectory(fwd, fast, inputa, labela, inputb, labelb, num_updates,
                                    first_order, outer_tape, query_steps)
        per_task = [self._trajectory(self.forward, dict(self.weights), inputa[i], labela[i],
                                     inputb[i], labelb[i], num_updates, first_order, outer_tape,
                                     query_steps)
                    for i in range(inputa.shape[0])]
        lossa = tf.stack([r[0] for r in per_task])
        acca = tf.stack([r[1] for r in per_task])
        query = {j: (tf.stack([r[2][j][0] for r in per_task]),
                     tf.stack([r[2][j][1] for r in per_task])) for j in query_steps}
        return lossa, acca, query

    # ------------------------------------------------------------ steps
    def meta_loss(self, inputa, labela, inputb, labelb, outer_tape=None):
        """Meta-objective: sum over tasks of the query loss after num_updates steps / T."""
        lossa, acca, query = self.task_metalearn(inputa, labela, inputb, labelb, self.num_updates,
                                                 self.first_order, outer_tape)
        lossb, accb = query[self.num_updates]
        t = tf.cast(inputa.shape[0], lossb.dtype)
        metrics = {"preloss": tf.reduce_sum(lossa) / t, "postloss": tf.reduce_sum(lossb) / t,
                   "preacc": tf.reduce_sum(acca) / t, "postacc": tf.reduce_sum(accb) / t}
        return metrics["postloss"], metrics

    def meta_gradients(self, inputa, labela, inputb, labelb):
        """(metrics, [dmeta_loss/dvar for var in meta_vars]) without applying them."""
        with tf.GradientTape() as tape:
            loss, metrics = self.meta_loss(inputa, labela, inputb, labelb, outer_tape=tape)
        grads = tape.gradient(loss, self.meta_vars, unconnected_gradients=ZERO)
        return metrics, grads

    def _metatrain_step(self, inputa, labela, inputb, labelb):
        metrics, grads = self.meta_gradients(inputa, labela, inputb, labelb)
        if self.clip_value is not None:
            grads = [tf.clip_by_value(g, -self.clip_value, self.clip_value) for g in grads]
        self.metatrain_optimizer.apply_gradients(grads, self.meta_vars)
        metrics["grad_finite"] = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return metrics

    def _pretrain_step(self, inputa, labela, inputb, labelb):
        with tf.GradientTape() as tape:
            lossa, acca, _ = self.task_metalearn(inputa, labela, inputb, labelb, 0, query_steps=[])
            t = tf.cast(inputa.shape[0], lossa.dtype)
            loss = tf.reduce_sum(lossa) / t
        grads = tape.gradient(loss, self.meta_vars, unconnected_gradients=ZERO)
        self.pretrain_optimizer.apply_gradients(grads, self.meta_vars)
        return {"preloss": loss, "preacc": tf.reduce_sum(acca) / t,
                "grad_finite": tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])}

    def _evaluate_step(self, inputa, labela, inputb, labelb, num_steps):
        lossa, acca, query = self.task_metalearn(inputa, labela, inputb, labelb, num_steps,
                                                 query_steps=list(range(1, num_steps + 1)))
        losses = tf.stack([lossa] + [query[j][0] for j in range(1, num_steps + 1)], axis=1)
        accs = tf.stack([acca] + [query[j][1] for j in range(1, num_steps + 1)], axis=1)
        return losses, accs

    # ------------------------------------------------------------ public API
    def metatrain_step(self, inputa, labela, inputb, labelb):
        """One outer Adam step on the post-update loss; returns the metrics (pre-update values)."""
        return {k: v.numpy() for k, v in self._metatrain(inputa, labela, inputb, labelb).items()}

    def pretrain_step(self, inputa, labela, inputb, labelb):
        """One outer Adam step on the pre-update loss (the pretrained baseline)."""
        return {k: v.numpy() for k, v in self._pretrain(inputa, labela, inputb, labelb).items()}

    def evaluate(self, inputa, labela, inputb, labelb, num_steps):
        """Per-task losses and accuracies, [T, 1 + num_steps] each: column 0 is the
        pre-update loss on the support set (the original's 'update0'), column j
        the query loss after j inner steps.  theta is not changed."""
        losses, accs = self._evaluate(inputa, labela, inputb, labelb, num_steps)
        return losses.numpy(), accs.numpy()

    def get_weights(self):
        """theta and the norm parameters as numpy arrays (two dicts)."""
        return ({k: v.numpy() for k, v in self.weights.items()},
                {k: v.numpy() for k, v in self.norm_params.items()})
