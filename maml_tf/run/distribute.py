"""Meta-training under ``tf.distribute``: the meta-batch split across replicas.

Each replica adapts its own tasks (batch-norm statistics stay per task) and
computes the meta-gradient of (sum of its tasks' query losses) / T, T the
global meta-batch size; the replicas' gradients are summed (all-reduce), so
the update equals the single-device update on the same meta-batch.

Strategies: 'none' (the model's own step), 'mirrored' (several GPUs, or CPU
logical devices, in one process), 'multi_worker' (several processes or
machines, configured by the standard ``TF_CONFIG``).  Every worker draws the
same meta-batch (same seed) and feeds its replicas their slice of it.
"""
import json
import os

import numpy as np
import tensorflow as tf

from maml_tf.run.config import UsageError

STRATEGIES = ("none", "mirrored", "multi_worker")


def split_cpu(num_devices):
    """Split the (first) CPU into ``num_devices`` logical devices, before TF starts."""
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])


def make_strategy(kind, cpu_devices=0):
    """The tf.distribute strategy for ``kind`` (None for 'none')."""
    if kind not in STRATEGIES:
        raise UsageError(f"--distribution={kind!r} is unknown: use none, mirrored or multi_worker")
    if kind == "none":
        return None
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise UsageError("--distribution=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster and task) on every worker; see docs/distributed.md")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except ValueError:
            raise UsageError("TF_CONFIG is not valid JSON: see docs/distributed.md for its form") from None
        if cpu_devices:
            split_cpu(cpu_devices)
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_devices:
        split_cpu(cpu_devices)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy([d.name for d in gpus] if gpus else None)


def is_chief(strategy):
    """Whether this process writes checkpoints, summaries and test output."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()


def worker_id(strategy):
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    return 0 if resolver is None else int(resolver.task_id or 0)


class Stepper:
    """Meta-training / pre-training steps of ``model``, on one device or under ``strategy``."""

    def __init__(self, model, strategy, meta_batch_size):
        self.model, self.strategy = model, strategy
        self.replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        if meta_batch_size % self.replicas:
            raise UsageError(f"--meta_batch_size={meta_batch_size} is not divisible by the "
                             f"{self.replicas} replicas: use a multiple of {self.replicas}")
        self.meta_batch_size = meta_batch_size
        self.per_replica = meta_batch_size // self.replicas
        if strategy is not None:
            self._metatrain = tf.function(self._distributed_metatrain)
            self._pretrain = tf.function(self._distributed_pretrain)

    # ---------------------------------------------------------------- public
    def metatrain_step(self, *batch):
        if self.strategy is None:
            return self.model.metatrain_step(*batch)
        return {k: v.numpy() for k, v in self._metatrain(*self._distribute(batch)).items()}

    def pretrain_step(self, *batch):
        if self.strategy is None:
            return self.model.pretrain_step(*batch)
        return {k: v.numpy() for k, v in self._pretrain(*self._distribute(batch)).items()}

    # ---------------------------------------------------------------- internals
    def _distribute(self, batch):
        n = self.per_replica

        def piece(arr):
            return self.strategy.experimental_distribute_values_from_function(
                lambda ctx: tf.constant(arr[ctx.replica_id_in_sync_group * n:
                                            (ctx.replica_id_in_sync_group + 1) * n]))
        return [piece(np.asarray(a)) for a in batch]

    def _replica(self, gradients_fn, keys, inputa, *rest):
        """This replica's share of the meta-batch: the model's own (engine, method) mean
        over its tasks, rescaled to its share of the global mean; metrics as sums."""
        metrics, grads = gradients_fn(inputa, *rest)
        local = tf.cast(inputa.shape[0], metrics[keys[0]].dtype)
        share = local / tf.cast(self.meta_batch_size, local.dtype)
        return [g * share for g in grads], tf.stack([metrics[k] * local for k in keys])

    def _replica_metatrain(self, *batch):
        return self._replica(self.model.meta_gradients, ("preloss", "postloss", "preacc", "postacc"), *batch)

    def _replica_pretrain(self, *batch):
        return self._replica(self.model.pretrain_gradients, ("preloss", "preacc"), *batch)

    def _reduce(self, grads, sums):
        sum_ = tf.distribute.ReduceOp.SUM
        grads = [self.strategy.reduce(sum_, g, axis=None) for g in grads]
        sums = self.strategy.reduce(sum_, sums, axis=None) / self.meta_batch_size
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads])
        return grads, sums, finite

    def _distributed_metatrain(self, *batch):
        m = self.model
        grads, sums = self.strategy.run(self._replica_metatrain, args=tuple(batch))
        grads, sums, finite = self._reduce(grads, sums)
        m.apply_meta_update(grads)
        return {"preloss": sums[0], "postloss": sums[1], "preacc": sums[2], "postacc": sums[3],
                "grad_finite": finite}

    def _distributed_pretrain(self, *batch):
        m = self.model
        grads, sums = self.strategy.run(self._replica_pretrain, args=tuple(batch))
        grads, sums, finite = self._reduce(grads, sums)
        m.pretrain_optimizer.apply_gradients(grads, m.meta_vars)
        return {"preloss": sums[0], "preacc": sums[1], "grad_finite": finite}
