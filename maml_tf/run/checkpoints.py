"""Checkpoints: ``logdir/<exp_string>/model<itr>``, the original's names, the complete state.

Each checkpoint holds theta, the norm parameters, both Adam optimisers' slots
and step counts, the number of finished iterations and the task sampler's RNG
state, so ``--resume`` continues exactly.  The ``checkpoint`` index file is
rewritten atomically only after a checkpoint is completely written, so a run
killed while saving resumes from the previous good one.  The newest 10 are kept.
"""
import os
import re

import tensorflow as tf

from maml_tf.run.config import UsageError

_MODEL_RE = re.compile(r"model(\d+)$")


def iteration_of(path):
    """The iteration number in a 'model<itr>' checkpoint path."""
    m = _MODEL_RE.search(path)
    if not m:
        raise UsageError(f"checkpoint path {path!r} is not named model<iteration>")
    return int(m.group(1))


class CheckpointManager:
    """Saves and restores the full training state of a MAML model."""

    def __init__(self, directory, model, max_to_keep=10):
        self.directory = directory
        self.max_to_keep = max_to_keep
        self.iteration = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.sampler_state = tf.Variable("", dtype=tf.string, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=model, iteration=self.iteration,
                                              sampler=self.sampler_state)
        self.model = model

    def all_checkpoints(self):
        state = tf.train.get_checkpoint_state(self.directory)
        if state is None:
            return []
        paths = [os.path.join(self.directory, os.path.basename(p))
                 for p in state.all_model_checkpoint_paths]
        return [p for p in paths if tf.io.gfile.exists(p + ".index")]

    def latest(self):
        """Newest complete checkpoint, or None."""
        paths = self.all_checkpoints()
        return paths[-1] if paths else None

    def path_for(self, itr):
        return os.path.join(self.directory, f"model{itr}")

    def save(self, itr, iterations_done, sampler_state=""):
        """Write model<itr> holding the state after ``iterations_done`` iterations.
        ``sampler_state``: the task source's state string, or a function returning it
        (serialised only when a checkpoint is written)."""
        os.makedirs(self.directory, exist_ok=True)
        self.iteration.assign(iterations_done)
        if callable(sampler_state):
            sampler_state = sampler_state()
        self.sampler_state.assign(sampler_state or "")
        path = self.checkpoint.write(self.path_for(itr))
        listed = [p for p in self.all_checkpoints() if p != path] + [path]
        kept, dropped = listed[-self.max_to_keep:], listed[:-self.max_to_keep]
        # The index names a checkpoint only once it is completely written (relative
        # names, so that a log directory can be moved); old ones go only after that.
        # TensorFlow rewrites a relative name relative to a relative directory as if
        # the name were relative to the working directory: give it the path from there
        # then, so that the index holds the bare name ('model<itr>', not '../../../model<itr>',
        # which tf.train.latest_checkpoint and the original's test would resolve wrongly).
        def name(p):
            return os.path.basename(p) if os.path.isabs(self.directory) else os.path.join(
                self.directory, os.path.basename(p))
        tf.compat.v1.train.update_checkpoint_state(
            self.directory, model_checkpoint_path=name(path),
            all_model_checkpoint_paths=[name(p) for p in kept])
        for old in dropped:
            for f in tf.io.gfile.glob(old + ".*"):
                tf.io.gfile.remove(f)
        return path

    def restore(self, path, weights_only=False):
        """Load ``path``; returns (iterations_done, sampler_state)."""
        if not tf.io.gfile.exists(path + ".index"):
            raise UsageError(f"no checkpoint at {path} (missing {path}.index): check --logdir and --test_iter")
        try:
            status = self.checkpoint.read(path)
            if weights_only:
                status.expect_partial()
            else:
                status.assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UsageError(f"checkpoint {path} does not fit this model ({first}): "
                             f"check the architecture flags (--num_filters, --max_pool, --norm, "
                             f"--num_classes, --conv, --baseline)") from None
        return int(self.iteration.numpy()), self.sampler_state.numpy().decode()
