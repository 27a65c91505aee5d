"""Meta-training and evaluation loops, as the original main.py's train() and test()."""
import contextlib
import csv
import os
import pickle
import shutil
import signal
import sys
import time

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from maml_tf.run.model import build_model, network_spec
from maml_tf.run.checkpoints import CheckpointManager
from maml_tf.run.config import UsageError
from maml_tf.run.distribute import Stepper, is_chief, make_strategy, worker_id
from maml_tf.methods.maml import configure_threads
from maml_tf.data.tasks import Prefetcher, Synchronous, make_task_source

SUMMARY_INTERVAL = 100


class NonFiniteError(RuntimeError):
    """A loss or meta-gradient became NaN/inf; the last good checkpoint is kept."""


def _print_interval(cfg):
    return 1000 if cfg.datasource == "sinusoid" else 100


def _write_scalars(writer, prefix, itr, losses, accs, classification):
    """The original's summary tags: '<prefix>Pre-update loss', '<prefix>Post-update loss, step j',
    all of one iteration written as one Summary record (one op: a record per tag costs
    ~0.1 ms each, a tenth of a sinusoid training step)."""
    values = [(prefix + "Pre-update loss", losses[0])]
    if classification:
        values.append((prefix + "Pre-update accuracy", accs[0]))
    for j in range(1, len(losses)):
        values.append((prefix + f"Post-update loss, step {j}", losses[j]))
        if classification:
            values.append((prefix + f"Post-update accuracy, step {j}", accs[j]))
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=float(v))
                                         for t, v in values])
    with writer.as_default(step=itr):
        tf.summary.experimental.write_raw_pb(summary.SerializeToString())


def _quiet(itr, cfg, print_interval):
    """Whether iteration ``itr`` has nothing but its step to do (no summary, progress
    line, checkpoint or validation; the same phase as its neighbours)."""
    return not (itr % SUMMARY_INTERVAL == 0 or itr % print_interval == 0
                or itr % cfg.save_interval == 0 or itr == cfg.pretrain_iterations)


def _clock(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Rate and time left of a loop from ``start`` to ``total`` (exclusive), for the
    progress lines.  The rate is measured over the recent past (the first steps, with
    their tracing, and earlier phases do not distort it)."""

    def __init__(self, start, total, window=5):
        self.start, self.total = start, total
        self.t0 = time.time()
        self._marks = [(start, self.t0)]
        self._window = window

    def elapsed(self):
        return _clock(time.time() - self.t0)

    def rate(self, done, left=True):
        """'2.31 it/s, 1:23:45 left' after ``done`` iterations (absolute count)."""
        now = time.time()
        self._marks = (self._marks + [(done, now)])[-(self._window + 1):]
        (i0, t0), (i1, t1) = self._marks[0], self._marks[-1]
        if i1 <= i0 or t1 <= t0:
            return "-- it/s"
        r = (i1 - i0) / (t1 - t0)
        text = f"{r:.2f} it/s" if r >= 1 else f"{1 / r:.2f} s/it"
        if left:
            text += f", {_clock(max(self.total - done, 0) / r)} left"
        return text


class _ChunkDraws:
    """A task source whose sample() is the next chunk of sinusoid meta-batches, drawn at
    once (``SinusoidTasks.sample_chunk``: the same numbers as one at a time) and
    converted to tensors: the stacked tensors (for fused steps) and their per-step
    slices.  The first chunk is ``first`` long, the others ``size``, so that chunks
    start at multiples of ``size`` whatever iteration a run resumes at."""

    def __init__(self, source, model, size, first=None):
        self.source, self.model, self.size = source, model, size
        self.next_size = first or size

    def sample(self):
        stacked = self.model._inputs(self.source.sample_chunk(self.next_size))
        self.next_size = self.size
        return list(zip(*[tf.unstack(t) for t in stacked])), stacked

    def get_state(self):
        return self.source.get_state()


class _Chunks:
    """Sinusoid meta-batches for the loop, a chunk of 100 at a time from a prefetch
    thread (a sinusoid step takes ~0.3 ms: converting one meta-batch to tensors costs
    0.06 ms, drawing 100 at once 1 ms).  Chunks cover iterations [100 m, 100 m + 100).
    ``next()``: the next meta-batch; ``run(n)``: the next n stacked, for fused steps, if
    they lie in the current chunk.  The state handed to a checkpoint is the source's
    state after exactly the last meta-batch handed out."""

    def __init__(self, source, model, start=0, size=100):
        self.source, self.size = source, size
        self.end_state = source.get_state()
        self.prefetch = Prefetcher(_ChunkDraws(source, model, size, size - start % size), depth=1)
        self.i = self.n = 0

    def _load(self):
        if self.i == self.n:
            self.start_state = self.end_state
            (self.steps, self.stacked), self.end_state = self.prefetch.next()
            self.i, self.n = 0, len(self.steps)

    def next(self):
        self._load()
        i, start = self.i, self.start_state
        self.i += 1
        return list(self.steps[i]), (lambda: self.source.state_after(start, i + 1))

    def can_run(self, n):
        self._load()
        return self.i + n <= self.n

    def run(self, n):
        i, start = self.i, self.start_state
        self.i += n
        return [t[i:i + n] for t in self.stacked], (lambda: self.source.state_after(start, i + n))

    def close(self):
        self.prefetch.close()


class _StopRequest:
    """SIGINT/SIGTERM: finish the current iteration, save, exit."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def train(cfg, out=print):
    """Meta-train (or pre-train) as the original, with checkpoints and summaries in exp_dir.

    Returns the list of (iteration, metrics) recorded at each summary interval.
    """
    configure_threads(network_spec(cfg))  # before any TF op: thread pools suited to the net
    strategy = make_strategy(cfg.distribution, cfg.cpu_devices)  # it may split the CPU
    chief = is_chief(strategy)
    if not chief:
        out = lambda *a, **k: None  # noqa: E731  (one worker reports)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(cfg, tune=strategy is None and cfg.train, out=out)
    stepper = Stepper(model, strategy, cfg.meta_batch_size)
    source = make_task_source(cfg, "train", pool=cfg.task_pool)
    val_source = None
    if cfg.datasource != "sinusoid":
        from maml_tf.data.image_data import ORIGINAL_EVAL_POOL
        val_source = make_task_source(cfg, "test" if cfg.test_set else "val", seed=cfg.seed + 1,
                                      pool=ORIGINAL_EVAL_POOL if cfg.task_pool else 0)
    _check_logdir(cfg.logdir)
    manager = CheckpointManager(cfg.exp_dir, model, max_to_keep=cfg.max_to_keep)
    writer_manager = manager if chief else CheckpointManager(
        os.path.join(cfg.exp_dir, f".worker{worker_id(strategy)}"), model, max_to_keep=1)
    start = 0
    latest = manager.latest() if cfg.resume else None
    if cfg.init_checkpoint and not latest:
        _load_init_checkpoint(model, cfg, out)
    elif cfg.pretrained and not latest:
        from maml_tf.run import pretrained
        manifest = pretrained.load_into(model, cfg.pretrained)
        out(f"Starting from the published model {manifest['name']}")
    if latest:
        start, sampler_state = manager.restore(latest)
        if sampler_state:
            source.set_state(sampler_state)
        out(f"Restoring model weights from {latest} (resuming at iteration {start})")
    os.makedirs(cfg.exp_dir, exist_ok=True)
    writer = val_writer = None
    if cfg.log and chief:
        writer = tf.summary.create_file_writer(cfg.exp_dir)
        if val_source is not None:
            val_writer = tf.summary.create_file_writer(os.path.join(cfg.exp_dir, "val"))
    out("Done initializing, starting training.")
    print_interval = _print_interval(cfg)
    test_print_interval = print_interval * 5
    pre, post, pre_acc, post_acc, history = [], [], [], [], []
    total = cfg.total_iterations
    last_saved = None
    itr = start - 1
    progress = Progress(start, total)
    step_times = [] if cfg.step_times else None  # (iteration, end time, checkpoint written)
    sampler_state = source.get_state()
    # From here on only the prefetch thread touches the source.  Sinusoid tasks cost less
    # to draw than a thread hand-off: they are drawn in the loop, 100 meta-batches at a
    # time when no strategy splits them (_Chunks: the step takes ~0.3 ms, converting a
    # meta-batch to tensors 0.06 ms).
    if cfg.datasource != "sinusoid":
        batches = Prefetcher(source)
    elif strategy is None:
        batches = _Chunks(source, model, start)
    else:
        batches = Synchronous(source)
    # Fused steps (MAML.metatrain_steps: one compiled call for many steps): the 99
    # iterations between two summary iterations have nothing but their step to do, and
    # for the sinusoid a call per step costs a third of the step.  The same updates, bit
    # for bit (tests/test_fast_paths.py); --fuse_steps=False calls one step at a time.
    fuse = SUMMARY_INTERVAL - 1 if (cfg.fuse_steps and isinstance(batches, _Chunks)
                                    and not cfg.da_iterations) else 0
    fused_until = start

    def check_finite(metrics, itr, pretraining):
        if not (np.isfinite(metrics["preloss" if pretraining else "postloss"]) and metrics["grad_finite"]):
            raise NonFiniteError(
                f"non-finite loss or meta-gradient at iteration {itr}; stopped without saving it "
                f"(last good checkpoint: {last_saved or manager.latest() or 'none'}): "
                f"try a smaller --meta_lr or --update_lr")

    def stop_after(itr, sampler_state, signum):
        """SIGINT/SIGTERM: save iteration ``itr`` (unless just saved) and exit."""
        if last_saved != writer_manager.path_for(itr):
            writer_manager.save(itr, itr + 1, sampler_state)
        out(f"Stopped by signal {signum} after iteration {itr}; saved {manager.path_for(itr)}. "
            f"Rerun the same command to resume.")
        _flush(writer, val_writer)
        sys.exit(128 + signum)

    with _StopRequest() as stop, contextlib.closing(batches):
        for itr in range(start, total):
            if itr < fused_until:
                continue
            pretraining = itr < cfg.pretrain_iterations
            if (fuse and itr + fuse <= total and batches.can_run(fuse)
                    and all(_quiet(j, cfg, print_interval) for j in range(itr, itr + fuse))):
                chunk, sampler_state = batches.run(fuse)
                t0 = time.perf_counter()
                done = model.pretrain_steps(*chunk) if pretraining else model.metatrain_steps(*chunk)
                t1 = time.perf_counter()
                for j, metrics in enumerate(done):
                    check_finite(metrics, itr + j, pretraining)
                if step_times is not None:  # inside a fused call each step takes the call's mean
                    step_times.extend((itr + j, t0 + (j + 1) * (t1 - t0) / fuse, False) for j in range(fuse))
                fused_until = itr + fuse
                if stop.signum is not None:
                    stop_after(fused_until - 1, sampler_state, stop.signum)
                continue
            batch, sampler_state = batches.next()
            if itr % SUMMARY_INTERVAL == 0 or itr % print_interval == 0:
                losses, accs = model.evaluate(*batch, num_steps=cfg.eval_num_updates)
                losses, accs = losses.mean(0), accs.mean(0)
                pre.append(losses[0]); post.append(losses[cfg.num_updates])
                pre_acc.append(accs[0]); post_acc.append(accs[cfg.num_updates])
                history.append((itr, {"preloss": float(losses[0]), "postloss": float(losses[cfg.num_updates]),
                                      "preacc": float(accs[0]), "postacc": float(accs[cfg.num_updates])}))
                if writer is not None:
                    _write_scalars(writer, "metatrain_", itr, losses, accs, cfg.classification)
            if cfg.da_iterations and not pretraining:  # MAML++: first order, then second
                model.use_first_order(itr - cfg.pretrain_iterations < cfg.da_iterations)
            metrics = stepper.pretrain_step(*batch) if pretraining else stepper.metatrain_step(*batch)
            check_finite(metrics, itr, pretraining)
            if itr != 0 and itr % print_interval == 0:
                label = f"Pretrain Iteration {itr}" if pretraining else f"Iteration {itr - cfg.pretrain_iterations}"
                rate = progress.rate(itr + 1)
                if cfg.classification:
                    out(f"{label}: {np.mean(pre_acc)}, {np.mean(post_acc)} "
                        f"(loss {np.mean(pre):.4f}, {np.mean(post):.4f}) | {rate}")
                else:
                    out(f"{label}: {np.mean(pre)}, {np.mean(post)} | {rate}")
                pre, post, pre_acc, post_acc = [], [], [], []
            saved = itr != 0 and itr % cfg.save_interval == 0
            if saved:
                last_saved = writer_manager.save(itr, itr + 1, sampler_state)
            # Validation as the original: its metaval_ summaries were part of merge_all, so
            # written with every summary (each 100 iterations); printed every 500.
            if val_source is not None and itr % SUMMARY_INTERVAL == 0:
                vl, va = model.evaluate(*val_source.sample(), num_steps=cfg.eval_num_updates)
                vl, va = vl.mean(0), va.mean(0)
                if val_writer is not None:
                    _write_scalars(val_writer, "metaval_", itr, vl, va, cfg.classification)
                if itr != 0 and itr % test_print_interval == 0:
                    if cfg.classification:
                        out(f"Validation results: {va[0]}, {va[cfg.num_updates]}")
                    else:
                        out(f"Validation results: {vl[0]}, {vl[cfg.num_updates]}")
            if step_times is not None:
                step_times.append((itr, time.perf_counter(), saved))
            if stop.signum is not None:
                stop_after(itr, sampler_state, stop.signum)
    if itr >= start:
        if last_saved != writer_manager.path_for(itr):
            writer_manager.save(itr, itr + 1, sampler_state)
        out(f"Done: iterations {start}-{itr} in {progress.elapsed()} ({progress.rate(itr + 1, left=False)}); "
            f"checkpoint {manager.path_for(itr)}")
    else:
        out(f"Nothing to do: {cfg.exp_dir} already holds all {total} iterations.")
    _flush(writer, val_writer)
    if step_times:
        np.save(cfg.step_times, np.array(step_times, dtype=np.float64))
    if not chief:
        shutil.rmtree(writer_manager.directory, ignore_errors=True)
    return history


def _check_logdir(logdir):
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise UsageError(f"--logdir={logdir} is a file, not a folder: choose another --logdir")
    probe = logdir
    while not os.path.exists(probe):
        probe = os.path.dirname(os.path.abspath(probe))
    if not os.access(probe, os.W_OK):
        raise UsageError(f"--logdir={logdir} is not writable (no write permission on {probe}): choose another --logdir")


def _load_init_checkpoint(model, cfg, out):
    """Start from a checkpoint of the original TF1 code (--init_checkpoint)."""
    from maml_tf.run.tf1_checkpoint import load_tf1_checkpoint
    report = load_tf1_checkpoint(model, cfg.init_checkpoint)
    out(f"Loaded original TF1 checkpoint {cfg.init_checkpoint}: {report}")


def _flush(*writers):
    for w in writers:
        if w is not None:
            w.flush()


def _atomic_write(path, data, mode="w"):
    tmp = path + ".tmp"
    with open(tmp, mode) as f:
        f.write(data) if not callable(data) else data(f)
    os.replace(tmp, path)


def evaluate_tasks(cfg, model, split, num_tasks=None, seed=None, out=None):
    """[num_tasks, 1 + eval_num_updates] per-task accuracies (classification) or
    losses (regression) on the fixed evaluation tasks of ``split`` (meta-batch 1).
    ``out``: where to print progress lines (about every 10 seconds)."""
    num_tasks = cfg.num_test_tasks if num_tasks is None else num_tasks
    source = make_task_source(cfg, split, meta_batch_size=1, seed=cfg.test_seed if seed is None else seed)
    rows = []
    progress = Progress(0, num_tasks)
    last = time.time()
    for i in range(num_tasks):
        losses, accs = model.evaluate(*source.sample(), num_steps=cfg.eval_num_updates)
        rows.append(accs[0] if cfg.classification else losses[0])
        if out is not None and (time.time() - last >= 10 or i + 1 == num_tasks) and i + 1 < num_tasks:
            last = time.time()
            out(f"Testing: {i + 1}/{num_tasks} tasks | {progress.rate(i + 1).replace('it/s', 'tasks/s')}")
    return np.array(rows)


def summary_line(cfg, rows):
    """One readable line: the paper's column(s) with 95% intervals (and, for regression,
    the median, which the few diverging tasks of K=5 sinusoid do not move).  A method that
    learned its step sizes for ``num_updates`` steps (Meta-SGD, LSLR) also gets that column,
    and a second line saying that the later ones go beyond what it learned (they can diverge)."""
    n = len(rows)
    ci = 1.96 * rows.std(0) / np.sqrt(n)
    steps = [j for j in cfg.reported_steps if j < rows.shape[1]]
    learned = cfg.learned_step_sizes
    if learned and cfg.num_updates < rows.shape[1]:
        steps = sorted(set(steps) | {cfg.num_updates})
    where = (f"{'test' if cfg.test_set else 'validation'} set, " if cfg.classification else "") + f"{n} tasks, 95% intervals"
    note = (f"\n  {learned} learned its step sizes for {cfg.num_updates} inner step{'s' * (cfg.num_updates > 1)}: "
            f"read column update{cfg.num_updates}; later columns repeat steps it was not trained for"
            if learned and rows.shape[1] - 1 > cfg.num_updates else "")
    if cfg.classification:
        vals = ", ".join(f"{100 * rows[:, j].mean():.2f}% +- {100 * ci[j]:.2f}% after {j} step{'s' * (j > 1)}"
                         for j in steps)
        return f"Meta-test accuracy: {vals} ({where}; before adaptation {100 * rows[:, 0].mean():.1f}%){note}"
    vals = ", ".join(f"{rows[:, j].mean():.3f} +- {ci[j]:.3f} after {j} step{'s' * (j > 1)}" for j in steps)
    med = " / ".join(f"{np.median(rows[:, j]):.3f}" for j in steps)
    return f"Meta-test MSE: {vals} (median {med}; {where}){note}"


def load_for_test(cfg, out=None):
    """(model, cfg, where the weights came from) for evaluating: a published model
    (--pretrained), an original TF1 checkpoint (--init_checkpoint), or the run's own
    checkpoint in --logdir (the latest, or --test_iter)."""
    if cfg.pretrained and not cfg.init_checkpoint:
        from maml_tf.run import pretrained
        cfg = pretrained.configure(cfg)
        model = build_model(cfg)
        manifest = pretrained.load_into(model, cfg.pretrained)
        origin = f"published model {manifest['name']} ({manifest['iterations']} iterations)"
    else:
        model = build_model(cfg)
        if cfg.init_checkpoint:
            _load_init_checkpoint(model, cfg, out or (lambda *a: None))
            origin = f"original checkpoint {cfg.init_checkpoint}"
        else:
            manager = CheckpointManager(cfg.exp_dir, model)
            path = manager.path_for(cfg.test_iter) if cfg.test_iter > 0 else manager.latest()
            if path is None:
                raise UsageError(f"no checkpoint in {cfg.exp_dir}: train with the same flags first, "
                                 f"or point --logdir at the run (or give --init_checkpoint or --pretrained)")
            manager.restore(path, weights_only=True)
            origin = path
    if out is not None and not cfg.init_checkpoint:
        out(f"Restoring model weights from {origin}")
    return model, cfg, origin


def test(cfg, out=print):
    """The original's test(): 600 tasks, meta-batch 1, mean/std/ci95 per inner step.

    Column 0 is the pre-update (support) loss or accuracy, column j the query
    value after j inner steps of size update_lr, j up to eval_num_updates
    (10).  Writes test_ubs{K}_stepsize{alpha}.csv and .pkl into exp_dir.
    """
    configure_threads(network_spec(cfg))
    model, cfg, origin = load_for_test(cfg, out)
    rows = evaluate_tasks(cfg, model, "test" if cfg.test_set else "val", out=out)
    means, stds = rows.mean(0), rows.std(0)
    ci95 = 1.96 * stds / np.sqrt(cfg.num_test_tasks)
    out("Mean validation accuracy/loss, stddev, and confidence intervals")
    out(str((means, stds, ci95)))
    os.makedirs(cfg.exp_dir, exist_ok=True)
    stem = os.path.join(cfg.exp_dir, cfg.test_csv_stem)

    def write_csv(f):
        w = csv.writer(f, delimiter=",")
        w.writerow([f"update{i}" for i in range(len(means))])
        for row in (means, stds, ci95):
            w.writerow([repr(float(v)) for v in row])

    _atomic_write(stem + ".pkl", lambda f: pickle.dump({"mses": rows}, f), mode="wb")
    _atomic_write(stem + ".csv", write_csv)
    out(summary_line(cfg, rows))
    out(f"Wrote {stem}.csv")
    return means, stds, ci95


def run(cfg, out=print):
    """Validate ``cfg`` and train or test, as the original main()."""
    if cfg.pretrained:
        from maml_tf.run import pretrained
        cfg = pretrained.configure(cfg)
    cfg = cfg.validate().resolved()
    if cfg.train:
        return train(cfg, out=out)
    return test(cfg, out=out)
