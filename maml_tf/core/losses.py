"""Losses and metrics, with the original code's scaling.

* ``mse``: mean squared error over all outputs (regression, sinusoid).
* ``xent``: softmax cross-entropy *summed* over the examples and divided by
  ``update_batch_size`` (K), exactly as cbfinn/maml's ``utils.xent`` (which
  returned the per-example vector / K that ``tf.gradients`` then summed).  For an
  N-way K-shot support set this is N times the mean cross-entropy; the paper's
  step sizes (alpha = 0.4 for Omniglot 5-way, ...) were tuned for this scale.
"""
import tensorflow as tf


def mse(pred, label, per_task=False):
    """Mean of (pred - label)^2 over every element; ``per_task``: over all axes but
    the leading task axis of [T, ...] inputs, one value per task."""
    if per_task:
        diff = pred - tf.cast(label, pred.dtype)
        return tf.reduce_mean(tf.square(diff), axis=list(range(1, len(pred.shape))))
    pred = tf.reshape(pred, [-1])
    label = tf.reshape(tf.cast(label, pred.dtype), [-1])
    return tf.reduce_mean(tf.square(pred - label))


def xent(pred, label, update_batch_size, per_task=False):
    """sum_i CE(softmax(pred_i), label_i) / K, the original's classification loss;
    ``per_task``: summed per task of [T, examples, N] inputs, one value per task."""
    label = tf.cast(label, pred.dtype)
    per_example = tf.nn.softmax_cross_entropy_with_logits(labels=label, logits=pred)
    return (tf.reduce_sum(per_example, axis=-1 if per_task else None)
            / tf.cast(update_batch_size, pred.dtype))


def make_xent(update_batch_size):
    """``loss_fn(pred, label)`` closure of :func:`xent` for a fixed K."""
    def loss_fn(pred, label):
        return xent(pred, label, update_batch_size)
    return loss_fn


def accuracy(pred, label, per_task=False):
    """Fraction of examples whose arg-max prediction equals the arg-max label;
    ``per_task``: per task of [T, examples, N] inputs."""
    hit = tf.equal(tf.argmax(pred, -1), tf.argmax(label, -1))
    return tf.reduce_mean(tf.cast(hit, pred.dtype), axis=-1 if per_task else None)
