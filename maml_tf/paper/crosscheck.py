"""Lockstep against the authors' own code: the same training steps and the same evaluation.

    python -m maml_tf.paper.crosscheck --config omniglot5w1s --iters 500 [--first_order] [--seed S]
        [--eval_tasks E] [--sync_every K] [--no_reference] [--original_batch_norm unfused|fused]
        [--data_dir DIR] [--original DIR] [--work_dir DIR] [main.py flags of the original]

runs the original TF1 code (cbfinn/maml, unmodified, through ``run_original.py``'s
TensorFlow 2 shim) and maml-tf on one configuration, in two processes (the original
needs TF1 graph mode, which is process-wide), and compares them three ways:

1. **Free-running trajectories.**  The original builds its graph (its ``MAML`` class fed
   through placeholders, ``tf.set_random_seed(S)``) and writes its initial variables with
   its own ``tf.compat.v1.train.Saver``; maml-tf builds the model ``main.py`` builds for
   the same flags and loads that checkpoint with the ``--init_checkpoint`` loader.  Both
   then take ``--iters`` outer steps on the same meta-batches (one seeded sampler,
   replayed in each process), recording every step's pre- and post-update losses and
   accuracies (the original's ``total_loss1``, ``total_losses2[n-1]``, ... fetched in the
   ``sess.run`` of its train op: values before the update), and the final weights.
2. **Teacher-forced steps** (every ``--sync_every``-th iteration of the original's own
   trajectory): maml-tf is put into the original's exact state (weights, Adam moments
   and step) and computes that iteration's losses and meta-gradient, compared with the
   original's; then maml-tf's Adam applies *the original's* gradient (clipped as the
   original clips), compared with the original's updated weights.  This checks every
   step of a real trajectory without the drift of 1.
3. **Evaluation**: the original's test graph (meta-batch 1, 10 inner steps: the model
   ``--train=False`` builds) and maml-tf's ``--train=False`` path both load the
   original's final weights and evaluate ``--eval_tasks`` tasks; every task's loss and
   accuracy after 0..10 inner steps is compared.

Why 2 is needed: MAML's training is chaotic in float32.  Adam divides each gradient
entry by its own running magnitude, so an entry whose gradient is at rounding level
(a bias in front of batch norm, whose true gradient is 0; a nearly dead unit) takes
steps of ~meta_lr in directions set by rounding; with Omniglot's alpha = 0.4 the next
inner step amplifies that.  The *reference* run shows the size of this effect on the
original itself: the original is run a second time from its initial weights moved by
one float32 ulp, and maml-tf's drift from the original is judged against the
original's drift from itself (free-running rows pass if within 10x of it, or within
float32 accuracy); teacher-forced steps and evaluation are judged against maml-tf's own
change under 1-ulp jitters of every weight (the largest of REFERENCE_DRAWS copies).  ``--no_reference`` skips it (then free-running rows are judged at
float32 accuracy, which stable configurations such as sinusoid meet).

The original's batch norm.  ``run_original.py`` stands in for ``tf.contrib.layers.
batch_norm`` with TensorFlow 2's fused kernel for 4-D inputs.  Inside the original's
``tf.map_fn`` (a TF1 while loop) TensorFlow 2.x differentiates that kernel's gradient
wrongly: the second-order meta-gradients of the conv nets come out far from finite
differences and from the same graph with the map_fn unrolled (see
:func:`fused_batch_norm_check`, ``--tf_check``).  The paper's TensorFlow (1.0-1.3:
contrib's default was ``fused=False``) normalised with ``tf.nn.moments`` (exact to all
orders up to TF 1.2) and ``tf.nn.batch_normalization``; ``--original_batch_norm=unfused``
(the default) gives the original exactly that, ``=fused`` runs the shim as it is.
First-order runs agree either way.

Data: sinusoid tasks are the original's draws; Omniglot uses the prepared
``DATA_DIR/omniglot_resized`` if present (train split for training, test split for
evaluation), otherwise synthetic stroke images; miniImageNet uses synthetic images
(the real ones are not needed to compare computations).  ``--original`` (default:
``../shared/anchors/original`` beside the repository, or ``$MAML_ORIGINAL_DIR``) holds
``run_original.py`` and ``cbfinn_maml/``.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from maml_tf.paper import original
from maml_tf.run.config import UsageError
from maml_tf.paper.original import OriginalError as CrosscheckError

REPO_ROOT = original.REPO_ROOT

# The original README's usage lines (the paper's alpha for sinusoid), without --logdir and length.
PRESETS = {
    "sinusoid": dict(datasource="sinusoid", norm="None", update_batch_size=10, update_lr=0.01),
    "sinusoid-pretrain": dict(datasource="sinusoid", norm="None", update_batch_size=10,
                              update_lr=0.01, _pretrain=True),
    "sinusoid-oracle": dict(datasource="sinusoid", norm="None", update_batch_size=10,
                            update_lr=0.01, baseline="oracle", _pretrain=True),
    "omniglot5w1s": dict(datasource="omniglot", meta_batch_size=32, update_batch_size=1,
                         update_lr=0.4, num_updates=1, num_classes=5),
    "omniglot20w1s": dict(datasource="omniglot", meta_batch_size=16, update_batch_size=1,
                          num_classes=20, update_lr=0.1, num_updates=5),
    "omniglot5w5s": dict(datasource="omniglot", meta_batch_size=32, update_batch_size=5,
                         update_lr=0.4, num_updates=1, num_classes=5),
    "mini5w1s": dict(datasource="miniimagenet", meta_batch_size=4, update_batch_size=1,
                     update_lr=0.01, num_updates=5, num_classes=5, num_filters=32, max_pool=True),
    "mini5w5s": dict(datasource="miniimagenet", meta_batch_size=4, update_batch_size=5,
                     update_lr=0.01, num_updates=5, num_classes=5, num_filters=32, max_pool=True),
}

# The original's flags (the only ones its code reads); everything else is maml-tf's.
ORIGINAL_FLAGS = ("datasource", "num_classes", "baseline", "pretrain_iterations",
                  "metatrain_iterations", "meta_batch_size", "meta_lr", "update_batch_size",
                  "update_lr", "num_updates", "norm", "num_filters", "conv", "max_pool",
                  "stop_grad")
BATCH_NORMS = original.BATCH_NORMS

# Largest difference accepted (float32 accuracy for each kind of quantity): relative for
# losses, weights, outputs and gradients (per variable, ||ours - original|| / ||original||).
TOLERANCE = {"loss": 1e-4, "weights": 1e-4, "outputs": 1e-4, "gradient": 1e-4, "adam": 1e-5}
# Isolated outliers.  With ReLUs and max-pools the meta-objective is only piecewise
# smooth, and the inner step makes it discontinuous: where a unit of one task sits within
# float32 rounding of its switching point, the two codes' rounding can put it on different
# sides.  In the outer backward pass that changes the gradient by that unit's share
# (seen: 1e-3..7e-3 relative on 5 of 50 Omniglot steps, every per-task loss equal to
# 3e-6); in the inner step it moves one task's adapted weights by a finite amount (seen:
# one task of 32 with its query loss 2e-2 apart, the gradient 4e-2 apart).  Away from
# such points the two agree to ~2e-6.  So a quantity passes if its median is within
# tolerance (a wrong computation is off at every step) and at most this share of its
# values (steps, tasks) is outside.  An accuracy is a count of arg-max decisions: where the
# loss of the same step (or task and step) is already off, its accuracy follows it, and the
# loss's own row judges that value; an accuracy is judged on its own where the losses agree.
OUTLIER_SHARE = 1 / 3
# Task-steps whose post-update loss may jump (see compare()).  Seen: Omniglot 5-way, 1 of
# 32 tasks at 1 of 50 steps; miniImageNet 5-way 1-shot (5 inner steps, max-pool), whose
# inner loop crosses switching points often: 21 of 80 task-steps (meta-batch 4, 20 steps),
# with the other tasks of those steps agreeing to float32 accuracy.
JUMP_SHARE = 1 / 2
# Free-running drift accepted relative to the original's drift from itself (1 ulp apart).
CHAOS_FACTOR = 10.0
# Copies of maml-tf's state with every weight jittered by one ulp (teacher-forced steps,
# evaluation): the reference is the largest change any of them shows.  With ReLUs and
# max-pools a computation near a switching point jumps for some jitters and not others;
# several draws find such points where one would miss them.
REFERENCE_DRAWS = 3


# ----------------------------------------------------------------------------- the job
def build_job(config="sinusoid", iters=50, first_order=False, seed=0, eval_tasks=20,
              data_dir="./data", overrides=None, sync_every=None, reference=True,
              original_batch_norm="unfused"):
    """The job description both processes read: flags, length, seeds, data, checks."""
    if config not in PRESETS:
        raise UsageError(f"--config={config!r} is unknown: use one of {', '.join(PRESETS)}")
    if iters < 1:
        raise UsageError(f"--iters={iters} must be at least 1")
    if original_batch_norm not in BATCH_NORMS:
        raise UsageError(f"--original_batch_norm={original_batch_norm!r}: use unfused or fused")
    flags = dict(PRESETS[config])
    pretrain = flags.pop("_pretrain", False)
    if pretrain:
        flags.update(pretrain_iterations=iters, metatrain_iterations=0)
    else:
        flags.update(pretrain_iterations=0, metatrain_iterations=iters)
    if first_order:
        flags["stop_grad"] = True
    flags.update(overrides or {})
    if flags.get("baseline") == "oracle":  # the original turns every iteration into pre-training
        flags["pretrain_iterations"] = flags.get("pretrain_iterations", 0) + flags.get(
            "metatrain_iterations", 0)
        flags["metatrain_iterations"] = 0
    if flags.get("pretrain_iterations", 0) and flags.get("metatrain_iterations", 0):
        raise UsageError("the crosscheck runs pre-training or meta-training, not both: set one of "
                         "--pretrain_iterations / --metatrain_iterations to 0")
    pretrain = flags.get("metatrain_iterations", 0) == 0
    if sync_every is None:
        sync_every = max(1, math.ceil(iters / 100))
    sync = sorted(set(range(0, iters, max(1, sync_every))) | {iters - 1}) if sync_every > 0 else []
    return {"config": config, "flags": flags, "iters": int(iters), "seed": int(seed),
            "eval_tasks": int(eval_tasks), "pretrain": pretrain, "data_dir": data_dir,
            "sync": sync, "reference": bool(reference), "original_batch_norm": original_batch_norm}


def _config(job, train):
    from maml_tf.run.config import config_from_flags
    values = dict(job["flags"], seed=job["seed"], train=train)
    return config_from_flags(values)


def _synthetic_images(kind, classes, per_class, seed):
    """Class-structured stand-in images, uint8 [classes, per_class, H, W, C]."""
    rng = np.random.default_rng(seed)
    size, ch = (28, 1) if kind == "omniglot" else (84, 3)

    def smooth(shape, passes):
        x = rng.standard_normal(shape)
        for _ in range(passes):  # box blur along H and W (numpy only)
            x = (x + np.roll(x, 1, -3) + np.roll(x, -1, -3)) / 3
            x = (x + np.roll(x, 1, -2) + np.roll(x, -1, -2)) / 3
        return x / (x.std() + 1e-8)

    img = smooth((classes, 1, size, size, ch), 6) + 0.6 * smooth((classes, per_class, size, size, ch), 2)
    if kind == "omniglot":  # binary strokes, as the prepared 1-bit images
        return np.where(img > 0.8, 0, 255).astype(np.uint8)
    return np.clip(128 + 50 * img, 0, 255).astype(np.uint8)


def prepare_data(job, work_dir):
    """Write the image arrays both processes sample from (uint8 .npy) into ``work_dir``."""
    source = job["flags"]["datasource"]
    job["images"] = {}
    if source == "sinusoid":
        return "sinusoid tasks (the original's draws)"
    n = job["flags"].get("num_classes", 5)
    prepared = os.path.join(job["data_dir"], "omniglot_resized")
    if source == "omniglot" and os.path.isdir(prepared):
        from maml_tf.data import image_data
        arrays = {split: image_data.load_omniglot_split(prepared, split)[0]
                  for split in ("train", "test")}
        what = f"Omniglot from {prepared} (train split for training, test split for evaluation)"
    else:
        arrays = {"train": _synthetic_images(source, max(n, 200 if source == "omniglot" else 64),
                                             20, job["seed"]),
                  "test": _synthetic_images(source, max(n, 20), 20, job["seed"] + 7)}
        what = f"synthetic {source} images ({arrays['train'].shape[0]} training classes)"
    for split, a in arrays.items():
        path = os.path.join(work_dir, f"images_{split}.npy")
        np.save(path, a)
        job["images"][split] = path
    return what


def _sources(job, cfg_train, cfg_eval):
    """(training task source, evaluation task source), identical in both processes."""
    from maml_tf.data.tasks import SinusoidTasks
    seed = job["seed"]
    if cfg_train.datasource == "sinusoid":
        oracle = cfg_train.baseline == "oracle"
        train = SinusoidTasks(cfg_train.meta_batch_size, cfg_train.update_batch_size,
                              cfg_train.query_per_class, seed=seed, oracle=oracle)
        evaluation = SinusoidTasks(1, cfg_eval.update_batch_size, cfg_eval.query_per_class,
                                   seed=seed + 1, oracle=oracle)
        return train, evaluation
    from maml_tf.data.image_data import EpisodeSampler
    omniglot = cfg_train.datasource == "omniglot"

    def sampler(split, cfg, mbs, s):
        return EpisodeSampler(np.load(job["images"][split]), cfg.num_classes,
                              cfg.update_batch_size, cfg.query_per_class, rotate=omniglot,
                              invert=omniglot, seed=s, meta_batch_size=mbs)
    return (sampler("train", cfg_train, cfg_train.meta_batch_size, seed),
            sampler("test", cfg_eval, 1, seed + 1))


# ------------------------------------------------------------------ the original's side
def _run_original(job, work_dir, original_dir):
    """In its own process: the original code, trained and evaluated as described above."""
    flag_values = {k: v for k, v in job["flags"].items() if k in ORIGINAL_FLAGS}
    tf, OriginalMAML, FLAGS = original.load(flag_values, original_dir, job["original_batch_norm"])
    cfg_train, cfg_eval = _config(job, True), _config(job, False)
    classification = cfg_train.classification

    def graph(cfg, mbs, test_num_updates, prefix):
        FLAGS.meta_batch_size = mbs
        FLAGS.update_batch_size = cfg.update_batch_size
        nk = cfg.num_classes_per_task * cfg.update_batch_size
        nq = cfg.num_classes_per_task * cfg.query_per_class
        ph = [tf.placeholder(tf.float32, [mbs, nk, cfg.dim_input], "inputa"),
              tf.placeholder(tf.float32, [mbs, nk, cfg.dim_output], "labela"),
              tf.placeholder(tf.float32, [mbs, nq, cfg.dim_input], "inputb"),
              tf.placeholder(tf.float32, [mbs, nq, cfg.dim_output], "labelb")]
        model = OriginalMAML(cfg.dim_input, cfg.dim_output, test_num_updates=test_num_updates)
        model.construct_model(input_tensors=dict(zip(("inputa", "labela", "inputb", "labelb"), ph)),
                              prefix=prefix)
        saver = tf.train.Saver(tf.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES), max_to_keep=10)
        return ph, model, saver

    # Training graph: test_num_updates as the original main() sets it for --train=True.
    tf.set_random_seed(job["seed"])
    ph, model, saver = graph(cfg_train, cfg_train.meta_batch_size, cfg_train.test_num_updates,
                             "metatrain_")
    n = cfg_train.num_updates
    trainable = tf.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES)
    if job["pretrain"]:
        op, grads = model.pretrain_op, tf.gradients(model.total_loss1, trainable)
        slots, powers = ("Adam", "Adam_1"), "beta1_power"
    else:
        op, grads = model.metatrain_op, [g for g, _ in model.gvs]
        slots, powers = ("Adam_2", "Adam_3"), "beta1_power_1"
    by_name = {v.op.name: v for v in tf.global_variables()}
    try:
        state_vars = {"m": [by_name[f"{v.op.name}/{slots[0]}"] for v in trainable],
                      "v": [by_name[f"{v.op.name}/{slots[1]}"] for v in trainable],
                      "power": by_name[powers], "power2": by_name[powers.replace("beta1", "beta2")]}
    except KeyError as e:
        raise CrosscheckError(f"the original's Adam slots are not where expected ({e})") from None
    fetch = [op, model.total_loss1, model.total_losses2[n - 1]]
    if classification:
        fetch += [model.total_accuracy1, model.total_accuracies2[n - 1]]
    names = [v.op.name for v in trainable]
    # Per-task logits of the loss each step minimises (support before, query after the inner steps).
    task_outputs = model.outputas if job["pretrain"] else model.outputbs[n - 1]
    sync = set(job["sync"])
    seconds = {}

    def trajectory(sess, record_sync):
        source = _sources(job, cfg_train, cfg_eval)[0]
        rows, synced = [], {}
        t0 = time.time()
        for i in range(job["iters"]):
            feed = dict(zip(ph, source.sample()))
            if record_sync and i in sync:
                # State and gradient first, in runs without the update (a TF1 graph does not
                # order a variable read against the update in the same run); deterministic
                # kernels give the update's own gradient.
                pre = sess.run([trainable, state_vars, grads, task_outputs], feed)
                labels = feed[ph[1]] if job["pretrain"] else feed[ph[3]]
                synced[f"{i}/task_loss"] = _task_losses(pre[3], labels, cfg_train)
                r = sess.run(fetch, feed)
                post = sess.run(trainable)
                for k, (w, m, v, g, p) in enumerate(zip(pre[0], pre[1]["m"], pre[1]["v"],
                                                        pre[2], post)):
                    synced.update({f"{i}/w/{names[k]}": w, f"{i}/m/{names[k]}": m,
                                   f"{i}/v/{names[k]}": v, f"{i}/g/{names[k]}": g,
                                   f"{i}/post/{names[k]}": p})
                synced[f"{i}/power"] = pre[1]["power"]
                synced[f"{i}/power2"] = pre[1]["power2"]
            else:
                r = sess.run(fetch, feed)
            rows.append([float(x) for x in r[1:]] + ([0.0, 0.0] if not classification else []))
        return np.array(rows), synced, time.time() - t0

    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        init_prefix = saver.save(sess, os.path.join(work_dir, "original_init", "model0"))
        rows, synced, seconds["train"] = trajectory(sess, True)
        final_prefix = saver.save(sess, os.path.join(work_dir, "original_final", f"model{job['iters']}"))
        reference = None
        if job["reference"]:
            # The same run from the initial weights moved by one float32 ulp (fresh Adam).
            sess.run(tf.global_variables_initializer())
            saver.restore(sess, init_prefix)
            for v in trainable:
                x = sess.run(v)
                v.load(np.nextafter(x, np.float32(np.inf)).astype(x.dtype), sess)
            reference, _, seconds["reference"] = trajectory(sess, False)
    np.savez(os.path.join(work_dir, "original_sync.npz"), **synced)

    # Evaluation graph: the model --train=False builds (meta-batch 1, 10 inner steps).
    tf.reset_default_graph()
    ph, model, saver = graph(cfg_eval, 1, cfg_eval.test_num_updates,
                             "metaval_" if classification else "metatrain_")
    if classification:
        ev = [model.metaval_total_loss1] + model.metaval_total_losses2 + \
             [model.metaval_total_accuracy1] + model.metaval_total_accuracies2
    else:
        ev = [model.total_loss1] + model.total_losses2
    steps = len(ev) // 2 if classification else len(ev)
    eval_source = _sources(job, cfg_train, cfg_eval)[1]
    evals = []
    with tf.Session() as sess:
        saver.restore(sess, final_prefix)
        for _ in range(job["eval_tasks"]):
            r = [float(v) for v in sess.run(ev, dict(zip(ph, eval_source.sample())))]
            evals.append(r if classification else r + [1.0] * steps)
    ev = np.array(evals).reshape(len(evals), 2, steps)
    out = dict(train=rows, eval_loss=ev[:, 0], eval_acc=ev[:, 1], seconds=seconds["train"])
    if reference is not None:
        out["reference"] = reference
    np.savez(os.path.join(work_dir, "original.npz"), **out)
    with open(os.path.join(work_dir, "original.json"), "w") as f:
        json.dump({"init": init_prefix, "final": final_prefix}, f)


def _task_losses(logits, labels, cfg):
    """Per-task losses [T] from logits [T, B, N] in float64, with the original's scaling."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
    if not cfg.classification:
        return np.mean((logits - labels) ** 2, axis=(1, 2))
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -(labels * logp).sum(axis=(1, 2)) / cfg.update_batch_size


# ------------------------------------------------------------------------- our side
def _run_ours(job, work_dir):
    from maml_tf.runtime import import_tensorflow
    tf = import_tensorflow()
    tf.get_logger().setLevel("ERROR")
    from maml_tf.methods.maml import configure_threads
    from maml_tf.run.tf1_checkpoint import load_tf1_checkpoint, tf1_variable_names
    from maml_tf.run.model import build_model, network_spec
    with open(os.path.join(work_dir, "original.json")) as f:
        prefixes = json.load(f)
    cfg_train, cfg_eval = _config(job, True), _config(job, False)
    configure_threads(network_spec(cfg_train))
    train_source, eval_source = _sources(job, cfg_train, cfg_eval)
    model = build_model(cfg_train)
    load_tf1_checkpoint(model, prefixes["init"])
    rows = []
    t0 = time.time()
    batches = {}
    sync = set(job["sync"])
    for i in range(job["iters"]):
        batch = train_source.sample()
        if i in sync:
            batches[i] = batch
        if job["pretrain"]:  # its step uses the pre-update loss only
            m = model.pretrain_step(*batch)
            rows.append([m["preloss"], 0.0, m["preacc"], 0.0])
        else:
            m = model.metatrain_step(*batch)
            rows.append([m["preloss"], m["postloss"], m["preacc"], m["postacc"]])
    train_seconds = time.time() - t0
    weights, norms = model.get_weights()
    results = {}

    # Teacher-forced steps: maml-tf in the original's state at each synced iteration, and
    # (the conditioning reference) in that state with every weight moved up by one ulp.
    synced = np.load(os.path.join(work_dir, "original_sync.npz"))
    names = {(group, key): name for name, group, key in tf1_variable_names(model.spec)}
    keys = [("weights", k) for k in model.weights] + [("norm", k) for k in model.norm_params]
    opt = model.pretrain_optimizer if job["pretrain"] else model.metatrain_optimizer
    n = model.num_updates

    @tf.function(autograph=False)
    def step(inputs):
        if job["pretrain"]:
            m, grads = model.pretrain_gradients(*inputs)
            zero = tf.zeros_like(m["preloss"])
            row = tf.stack([m["preloss"], zero, m["preacc"], zero])
            task_loss = model.task_metalearn(*inputs, 0, query_steps=[])[0]
        else:
            m, grads = model.meta_gradients(*inputs)
            row = tf.stack([m[k] for k in ("preloss", "postloss", "preacc", "postacc")])
            task_loss = model.task_metalearn(*inputs, n, model.first_order)[2][n][0]
        return row, grads, task_loss

    out = {k: [] for k in ("step", "step_ref", "grad_err", "grad_ref", "task_err", "task_ref", "adam_err")}
    for i in job["sync"]:
        orig = lambda part, gk: synced[f"{i}/{part}/{names[gk]}"]  # noqa: E731
        inputs = tuple(model._inputs(batches[i]))
        for v, gk in zip(model.meta_vars, keys):
            v.assign(orig("w", gk))
        row, grads, task = _numpy(step(inputs))
        refs = []
        for r in range(REFERENCE_DRAWS):
            rng = np.random.default_rng([job["seed"], i, r])
            for v, gk in zip(model.meta_vars, keys):
                v.assign(_ulp_jitter(orig("w", gk), rng))
            refs.append(_numpy(step(inputs)))
        for v, gk in zip(model.meta_vars, keys):
            v.assign(orig("w", gk))
        g_orig = [orig("g", gk) for gk in keys]
        out["step"].append(row)
        out["step_ref"].append(np.max([_diff_row(rp, row) for rp, _, _ in refs], axis=0))
        out["grad_err"].append([_norm_rel(g, go) for g, go in zip(grads, g_orig)])
        out["grad_ref"].append(np.max([[_norm_rel(gp, g) for gp, g in zip(gps, grads)] for _, gps, _ in refs], axis=0))
        out["task_err"].append(_rel(task, synced[f"{i}/task_loss"]))
        out["task_ref"].append(np.max([_rel(tp, task) for _, _, tp in refs], axis=0))
        # Our Adam in the original's optimizer state, on the original's gradient (clipped as
        # the original clips it), against the original's updated weights.
        opt.m_flat.assign(np.concatenate([orig("m", gk).ravel() for gk in keys]))
        opt.v_flat.assign(np.concatenate([orig("v", gk).ravel() for gk in keys]))
        opt.step.assign(i)  # both started fresh: i updates done before iteration i
        opt.beta1_power.assign(synced[f"{i}/power"])
        opt.beta2_power.assign(synced[f"{i}/power2"])
        g_orig = [tf.constant(g) for g in g_orig]
        if cfg_train.clip_value is not None and not job["pretrain"]:
            g_orig = [tf.clip_by_value(g, -cfg_train.clip_value, cfg_train.clip_value) for g in g_orig]
        opt.apply_gradients(g_orig, model.meta_vars)
        out["adam_err"].append([np.abs(v.numpy() - orig("post", gk)).max()
                                / max(np.abs(orig("post", gk)).max(), 1e-6)
                                for v, gk in zip(model.meta_vars, keys)])
    results = {k: np.array(v) for k, v in out.items()}
    results.update(sync=np.array(job["sync"]), var_keys=np.array([k for _, k in keys]))

    # Evaluation on the original's final weights (the same theta for both codes), and on
    # them moved up by one ulp (the conditioning reference).
    evaluator = build_model(cfg_eval)
    load_tf1_checkpoint(evaluator, prefixes["final"])
    shifted = []
    for r in range(REFERENCE_DRAWS):
        m = build_model(cfg_eval)
        rng = np.random.default_rng([job["seed"], 10 ** 6, r])
        for v, w in zip(m.meta_vars, evaluator.meta_vars):
            v.assign(_ulp_jitter(w.numpy(), rng))
        shifted.append(m)
    ev = {k: [] for k in ("loss", "acc", "loss_p", "acc_p")}
    first = None
    for _ in range(job["eval_tasks"]):
        batch = eval_source.sample()
        first = batch if first is None else first
        l, a = evaluator.evaluate(*batch, num_steps=cfg_eval.eval_num_updates)
        ev["loss"].append(l[0])
        ev["acc"].append(a[0] if cfg_eval.classification else np.ones_like(l[0]))
        lp, ap = zip(*[m.evaluate(*batch, num_steps=cfg_eval.eval_num_updates) for m in shifted])
        ev["loss_p"].append(np.array([x[0] for x in lp]))
        ev["acc_p"].append(np.array([x[0] for x in ap]) if cfg_eval.classification else np.ones((len(lp),) + l[0].shape))
    ev = {k: np.array(v) for k, v in ev.items()}
    # Per task and step: the largest change any of the jittered copies shows.
    loss_ref = np.max(_rel(ev["loss_p"], ev["loss"][:, None]), axis=1)
    acc_ref = np.max(np.abs(ev["acc_p"] - ev["acc"][:, None]), axis=1)
    shifted = shifted[0]
    # Network outputs of both final weight sets (ours, the original's) on one eval batch.
    x = tf.constant(first[0][0])
    out_orig = evaluator.forward(x, evaluator.weights).numpy()
    for k, v in {**weights, **norms}.items():
        (shifted.weights if k in shifted.weights else shifted.norm_params)[k].assign(v)
    out_ours = shifted.forward(x, shifted.weights).numpy()
    orig_w, orig_n = evaluator.get_weights()
    np.savez(os.path.join(work_dir, "ours.npz"), train=np.array(rows, dtype=np.float64),
             eval_loss=ev["loss"], eval_acc=ev["acc"], eval_loss_ref=loss_ref,
             eval_acc_ref=acc_ref, seconds=train_seconds,
             out_ours=out_ours, out_orig=out_orig, **results,
             **{f"w_ours/{k}": v for k, v in {**weights, **norms}.items()},
             **{f"w_orig/{k}": v for k, v in {**orig_w, **orig_n}.items()})


def _numpy(structure):
    import tensorflow as tf
    return tf.nest.map_structure(lambda t: t.numpy().astype(np.float64), structure)


def _ulp_jitter(x, rng):
    """``x`` with every element moved one unit in the last place (its own dtype), up or
    down at random: a perturbation at the size of the codes' rounding differences."""
    x = np.asarray(x)
    direction = np.where(rng.random(x.shape) < 0.5, np.inf, -np.inf).astype(x.dtype)
    return np.nextafter(x, direction)


def _diff_row(a, b):
    """Per-metric differences of two [preloss, postloss, preacc, postacc] rows."""
    return np.concatenate([_rel(a[:2], b[:2]), np.abs(np.asarray(a[2:]) - b[2:])])


# ------------------------------------------------------------------------- comparison
def bn_cancelled(job):
    """Keys of the biases in front of batch norm: cancelled by its mean subtraction, so
    their true gradient is 0 and what each code computes for them is rounding noise."""
    cfg = _config(job, True)
    if cfg.norm != "batch_norm":
        return set()
    if cfg.classification and cfg.conv:
        return {f"b{i}" for i in range(1, 5)}
    hidden = 4 if cfg.classification else 2  # fc 256-128-64-64 / 40-40
    return {f"b{i}" for i in range(1, hidden + 1)}


def _norm_rel(a, b):
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(np.ravel(b)), 1e-12))


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b) / np.maximum(np.abs(b), 1e-6)


def _diff(kind, a, b):
    return np.abs(np.asarray(a, np.float64) - b) if kind == "accuracy" else _rel(a, b)


def _over(kind, d):
    """Which values of ``d`` are outside float32 accuracy for ``kind``."""
    d = np.asarray(d, np.float64)
    return d > (1e-6 if kind == "accuracy" else TOLERANCE[kind])


def _explained(kind, d, ref=None):
    """Which values of ``d`` are within float32 accuracy, or within CHAOS_FACTOR times
    the same computation's change when its inputs move by one ulp (``ref``)."""
    d = np.asarray(d, np.float64)
    ok = ~_over(kind, d)
    if ref is not None:
        ok |= d <= CHAOS_FACTOR * np.asarray(ref, np.float64)
    return ok


def _row(section, quantity, kind, d, at, first, ref=None, ok="judge", loss=None, jump=None):
    """A report row; verdict: at most OUTLIER_SHARE of the values outside float32 accuracy
    and unexplained by the 1-ulp reference.  ``loss``: for an accuracy, the relative
    difference of the matching loss values; where that is outside float32 accuracy the
    accuracy's difference is the loss's consequence (judged in the loss's row).  ``jump``:
    the steps at which a task's loss jumped (judged in the row of jumps, not here)."""
    d = np.asarray(d, np.float64)
    unexplained = ~_explained(kind, d, ref)
    if loss is not None:
        unexplained &= ~_over("loss", np.reshape(loss, d.shape))
    if jump is not None:
        unexplained &= ~np.asarray(jump, bool)
    share = OUTLIER_SHARE
    return dict(section=section, quantity=quantity, kind=kind, diff=float(d.max()), at=at,
                first=first, reference=None if ref is None else float(np.max(ref)),
                over=int(_over(kind, d).sum()), unexplained=int(unexplained.sum()), n=int(d.size),
                ok=bool(np.mean(unexplained) <= share) if ok == "judge" else ok)


def _where(d, axis):
    flat = d.reshape(len(d), -1)
    idx = np.unravel_index(int(np.argmax(flat)), flat.shape)
    return str(idx[0]) if axis == "iteration" else f"{idx[0]},{idx[1]}"


def compare(job, work_dir):
    """Report rows (dicts), the two training times, whether the free runs are chaotic,
    and the synced steps where a task's loss jumped."""
    orig = np.load(os.path.join(work_dir, "original.npz"))
    ours = np.load(os.path.join(work_dir, "ours.npz"))
    classification = job["flags"]["datasource"] != "sinusoid"
    names = ["pre-update loss", "post-update loss", "pre-update accuracy", "post-update accuracy"]
    used = [i for i in range(4) if (classification or i < 2) and not (job["pretrain"] and i in (1, 3))]
    rows = []
    sync = list(ours["sync"])
    ref = orig["reference"] if "reference" in orig.files else None
    def paired(i, a, b):  # an accuracy's loss difference (post with post, pre with pre)
        return _rel(a[:, i - 2], b[:, i - 2]) if i >= 2 and (i - 2) in used else None

    for i in used:
        kind = "accuracy" if i >= 2 else "loss"
        d = _diff(kind, ours["train"][:, i], orig["train"][:, i])
        r = None if ref is None else np.maximum.accumulate(_diff(kind, ref[:, i], orig["train"][:, i]))
        rows.append(_row("free-running", f"train {names[i]}", kind, d, _where(d, "iteration"),
                         float(d[0]), r, loss=paired(i, ours["train"], orig["train"])))
    # Synced steps at which some task's post-update loss differs beyond float32 accuracy and
    # beyond what a 1-ulp change of the weights does to it: a unit of that task at its
    # switching point (OUTLIER_SHARE's comment).  Such a step's post-update values and
    # meta-gradient carry the jump; they are judged in one row of their own (at most
    # JUMP_SHARE of the task-steps, at least one step without a jump), and every other
    # step is judged to float32 accuracy.  A wrong computation moves every task at
    # every step; a jump moves one task at a time.
    jumped = np.stack([~_explained("loss", e, r) for e, r in zip(ours["task_err"], ours["task_ref"])])
    jump = jumped.any(axis=1) if not job["pretrain"] else np.zeros(len(sync), bool)
    for i in used:
        kind = "accuracy" if i >= 2 else "loss"
        d = _diff(kind, ours["step"][:, i], orig["train"][sync, i])
        rows.append(_row("teacher-forced", f"step {names[i]}", kind, d, str(sync[int(np.argmax(d))]),
                         float(d[0]), ours["step_ref"][:, i],
                         loss=paired(i, ours["step"], orig["train"][sync]),
                         jump=jump if i in (1, 3) else None))
    if jumped.any() and not job["pretrain"]:
        share = float(jumped.mean())
        rows.append(dict(section="teacher-forced", quantity="task losses that jumped", kind="share",
                         diff=share, at=str(sync[int(np.argmax(jumped.sum(axis=1)))]), first=None,
                         reference=None, over=int(jumped.sum()), unexplained=int(jumped.sum()),
                         n=int(jumped.size), ok=bool(share <= JUMP_SHARE and not jump.all())))
    skip = bn_cancelled(job)
    keys = [str(k) for k in ours["var_keys"]]
    for j, key in enumerate(keys):
        d = ours["grad_err"][:, j]
        rows.append(_row("teacher-forced", f"meta-gradient {key}", "gradient", d,
                         str(sync[int(np.argmax(d))]), float(d[0]), ours["grad_ref"][:, j],
                         ok=None if key in skip else "judge", jump=jump))
    judged = [j for j, k in enumerate(keys) if k not in skip]
    if (~jump).any():  # the summary of the rows above: every judged variable, steps without a jump
        clean = np.flatnonzero(~jump)
        d = ours["grad_err"][clean][:, judged].max(axis=1)
        rows.append(_row("teacher-forced", "meta-gradient, steps without a jump", "gradient", d,
                         str(sync[int(clean[np.argmax(d)])]), float(d[0]),
                         ours["grad_ref"][clean][:, judged].max(axis=1)))
    d = ours["adam_err"][:, judged].max(axis=1)
    rows.append(_row("teacher-forced", "Adam update" + (" (biases before BN aside)" if skip else ""),
                     "adam", d, str(sync[int(np.argmax(d))]), float(d[0])))
    for what, key in (("eval loss", "eval_loss"), ("eval accuracy", "eval_acc")):
        if what == "eval accuracy" and not classification:
            continue
        kind = "accuracy" if key == "eval_acc" else "loss"
        d = _diff(kind, ours[key], orig[key])
        loss = _rel(ours["eval_loss"], orig["eval_loss"]) if key == "eval_acc" else None
        rows.append(_row("evaluation", what, kind, d, _where(d, "task,step"),
                         float(d.reshape(len(d), -1)[0].max()), ours[key + "_ref"], loss=loss))
    chaotic = ref is not None and any(r["section"] == "free-running" and r["over"] > r["unexplained"]
                                      for r in rows)
    for k in sorted(x[len("w_ours/"):] for x in ours.files if x.startswith("w_ours/")):
        a, b = ours["w_ours/" + k], ours["w_orig/" + k]
        d = float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))
        rows.append(_row("free-running", f"final weights {k}", "weights", [d], "-", None,
                         ok=None if (k in skip or chaotic) else "judge"))
    d = float(np.abs(ours["out_ours"] - ours["out_orig"]).max() / max(np.abs(ours["out_orig"]).max(), 1e-6))
    rows.append(_row("free-running", "final network outputs", "outputs", [d], "-", None,
                     ok=None if chaotic else "judge"))
    jumps = [f"{sync[i]} ({int(b.sum())} of {b.size} tasks)" for i, b in enumerate(jumped) if b.any()]
    return rows, float(orig["seconds"]), float(ours["seconds"]), chaotic, ", ".join(jumps)


def format_report(job, rows, seconds_orig, seconds_ours, chaotic=False, data_note="", kinks=""):
    f = job["flags"]
    lines = [f"crosscheck {job['config']}: {job['iters']} iterations, seed {job['seed']}, "
             f"{'first' if f.get('stop_grad') else 'second'} order"
             f"{', pretrained baseline' if job['pretrain'] else ''}; {len(job['sync'])} teacher-forced "
             f"steps; {job['eval_tasks']} evaluation tasks",
             f"flags: {' '.join(f'--{k}={v}' for k, v in f.items())}",
             f"original: cbfinn/maml via run_original.py, batch norm {job['original_batch_norm']}"
             + (" (contrib's fused=False path, TF 1.0-1.2 moments)" if job["original_batch_norm"] == "unfused"
                else " (the shim's fused kernel)")]
    if data_note:
        lines.append(f"data: {data_note}")
    lines.append(f"training time: original {seconds_orig:.1f} s, maml-tf {seconds_ours:.1f} s")
    lines.append("columns: largest difference (relative; absolute for accuracies) and where; at the first "
                 "iteration; how many values are outside float32 accuracy / how many of those the 1-ulp "
                 "reference does not explain; the reference's largest value (free-running: the original "
                 "against itself started 1 ulp away; teacher-forced and evaluation: the largest change of "
                 f"maml-tf against itself over {REFERENCE_DRAWS} copies with every weight 1 ulp off)")
    skip = bn_cancelled(job)
    section = None
    for r in rows:
        if r["section"] != section:
            section = r["section"]
            lines.append(f"-- {section}")
            lines.append(f"   {'quantity':32s} {'largest diff':>16s} {'at':>6s} {'first':>9s} "
                         f"{'outside/unexpl.':>16s} {'1-ulp ref':>9s}  verdict")
        unit = {"accuracy": "abs", "share": "   "}.get(r["kind"], "rel")
        if r["ok"] is None:
            if r["quantity"].split()[-1] in skip and r["kind"] in ("gradient", "weights"):
                verdict = "not judged: bias before batch norm (true gradient 0: rounding noise)"
            else:
                verdict = "not judged: the runs drift apart (chaos: see the train rows)"
        else:
            verdict = "ok" if r["ok"] else "FAIL"
        first = "" if r["first"] is None else f"{r['first']:.2e}"
        refc = "" if r["reference"] is None else f"{r['reference']:.2e}"
        outside = f"{r['over']}/{r['unexplained']} of {r['n']}" if r["n"] > 1 else ""
        lines.append(f"   {r['quantity']:32s} {r['diff']:12.2e} {unit} {r['at']:>6s} {first:>9s} "
                     f"{outside:>16s} {refc:>9s}  {verdict}")
    lines.append(f"verdict: at most {OUTLIER_SHARE:.0%} of the values outside "
                 f"float32 accuracy and more than {CHAOS_FACTOR:g}x the 1-ulp reference.")
    if kinks:
        lines.append(f"Synced steps where a task's loss jumped (a unit at its switching point): {kinks}.")
    if chaotic:
        lines.append("The free-running trajectories drift apart as the original drifts from itself when its "
                     "initial weights move by one float32 ulp: float32 chaos, not a difference of "
                     "computation (the teacher-forced steps compare each step from the same state).")
    if job["original_batch_norm"] == "fused" and any(r["ok"] is False and r["kind"] == "gradient" for r in rows):
        lines.append("Expected with --original_batch_norm=fused in second order: TensorFlow 2 differentiates "
                     "the fused batch norm's gradient wrongly inside the original's tf.map_fn "
                     "(python -m maml_tf.paper.crosscheck --tf_check).")
    return "\n".join(lines)


# ------------------------------------------------------------------------- TF check
def fused_batch_norm_check():
    """The second derivative of TF's fused batch norm inside a TF1 ``tf.map_fn``, against
    the same graph unrolled and against batch norm written with plain ops.

    Builds, in TF1 graph mode, one MAML-like step per task (conv, batch norm, ReLU; inner
    gradient; query loss at the adapted kernel) for 2 tasks, and the gradient of the sum
    with respect to the kernel and the offset.  Returns {(batch norm, loop): (grad kernel,
    grad offset)} for batch norm in ('fused', 'plain') and loop in ('map_fn', 'python').
    Run in a fresh process (it switches TF to graph mode).
    """
    import tensorflow.compat.v1 as tf
    tf.disable_v2_behavior()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((2, 4, 5, 5, 2)).astype(np.float32))
    u = tf.constant(rng.standard_normal((2, 4, 5, 5, 3)).astype(np.float32))
    w = tf.Variable(rng.standard_normal((3, 3, 2, 3)).astype(np.float32) * 0.5)
    beta = tf.Variable(rng.standard_normal(3).astype(np.float32))

    def bn(h, kind):
        if kind == "fused":
            return tf.nn.fused_batch_norm(h, tf.ones([3]), beta, epsilon=1e-3, is_training=True)[0]
        mean, var = original.moments_tf1(tf, h, [0, 1, 2])
        return (h - mean) * tf.rsqrt(var + 1e-3) + beta

    def task(xi, ui, kind):
        def loss(k):
            return tf.reduce_sum(ui * tf.nn.relu(bn(tf.nn.conv2d(xi, k, [1, 1, 1, 1], "SAME"), kind)) ** 2)
        g = tf.gradients(loss(w), [w])[0]
        return loss(w - 0.1 * g)

    out = {}
    for kind in ("fused", "plain"):
        for loop in ("map_fn", "python"):
            if loop == "map_fn":
                z = tf.reduce_sum(tf.map_fn(lambda e: task(e[0], e[1], kind), (x, u), dtype=tf.float32))
            else:
                z = tf.add_n([task(x[i], u[i], kind) for i in range(2)])
            out[kind, loop] = tf.gradients(z, [w, beta])
    with tf.Session() as sess:
        sess.run(tf.global_variables_initializer())
        return {k: tuple(a for a in sess.run(v)) for k, v in out.items()}


def _tf_check_report():
    res = fused_batch_norm_check()
    truth = res["plain", "python"]
    lines = ["Second-order gradient of a MAML step through batch norm (TF1 graph mode, this TensorFlow), "
             "relative error against plain-op batch norm unrolled over the tasks:"]
    for (kind, loop), (gw, gb) in res.items():
        lines.append(f"  {kind:6s} batch norm, {loop:7s}: kernel {_norm_rel(gw, truth[0]):.2e}, "
                     f"offset {_norm_rel(gb, truth[1]):.2e}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- driver
def _child(args, work_dir, log, what):
    cmd = [sys.executable, "-m", "maml_tf.paper.crosscheck"] + args
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join(
        [REPO_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=work_dir)
    if r.returncode != 0:
        with open(log) as f:
            tail = f.read().strip().splitlines()[-15:]
        raise CrosscheckError(f"{what} failed (exit {r.returncode}); last lines of {log}:\n" + "\n".join(tail))


def run_crosscheck(job, original_dir=None, work_dir=None, out=print):
    """Run both sides of ``job`` (see :func:`build_job`); returns (rows, report text, all ok)."""
    original_dir = original.find_original(original_dir)
    own = work_dir is None
    work_dir = os.path.abspath(work_dir or tempfile.mkdtemp(prefix="maml_crosscheck_"))
    os.makedirs(work_dir, exist_ok=True)
    note = prepare_data(job, work_dir)
    with open(os.path.join(work_dir, "job.json"), "w") as f:
        json.dump(dict(job, data_note=note), f)
    runs = " (and its 1-ulp reference run)" if job["reference"] else ""
    out(f"running the original code: {job['iters']} iterations{runs} ...")
    _child(["--_side=original", f"--_work={work_dir}", f"--original={original_dir}"], work_dir,
           os.path.join(work_dir, "original.log"), "the original's side")
    out("running maml-tf ...")
    _child(["--_side=ours", f"--_work={work_dir}"], work_dir, os.path.join(work_dir, "ours.log"),
           "maml-tf's side")
    rows, so, su, chaotic, kinks = compare(job, work_dir)
    report = format_report(job, rows, so, su, chaotic, note, kinks)
    ok = all(r["ok"] is not False for r in rows)
    if own and ok:
        shutil.rmtree(work_dir, ignore_errors=True)
    elif not ok:
        report += f"\n(kept for inspection: {work_dir})"
    return rows, report, ok


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m maml_tf.paper.crosscheck",
                                description="Lockstep of maml-tf against the authors' own code.")
    p.add_argument("--config", default="sinusoid", help=f"one of {', '.join(PRESETS)}")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--first_order", action="store_true", help="--stop_grad=True on both sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval_tasks", type=int, default=20)
    p.add_argument("--sync_every", type=int, default=None,
                   help="teacher-forced step every K iterations (default: at most 100 of them; 0: none)")
    p.add_argument("--no_reference", action="store_true",
                   help="skip the original's second run from initial weights 1 ulp away")
    p.add_argument("--original_batch_norm", default="unfused", choices=BATCH_NORMS)
    p.add_argument("--data_dir", default="./data")
    p.add_argument("--original", default=None)
    p.add_argument("--work_dir", default=None, help="keep the checkpoints and logs here")
    p.add_argument("--report_only", action="store_true",
                   help="judge a kept run again (--work_dir of an earlier run) without running it")
    p.add_argument("--tf_check", action="store_true",
                   help="only show how this TensorFlow differentiates fused batch norm twice in a map_fn")
    p.add_argument("--_side", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_work", default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args._side:
        with open(os.path.join(args._work, "job.json")) as f:
            job = json.load(f)
        if args._side == "original":
            _run_original(job, args._work, args.original)
        else:
            _run_ours(job, args._work)
        return 0
    if args.tf_check:
        print(_tf_check_report())
        return 0
    if args.report_only:
        try:
            with open(os.path.join(args.work_dir or ".", "job.json")) as f:
                job = json.load(f)
        except (OSError, TypeError):
            print(f"error: --report_only needs the --work_dir of an earlier run (no job.json in "
                  f"{args.work_dir})", file=sys.stderr)
            return 2
        rows, so, su, chaotic, kinks = compare(job, args.work_dir)
        print(format_report(job, rows, so, su, chaotic, job.get("data_note", ""), kinks))
        return 0 if all(r["ok"] is not False for r in rows) else 1
    try:
        from maml_tf.run.config import parse_flags
        overrides, leftover = parse_flags(rest)
        if leftover:
            raise UsageError(f"not a crosscheck option or main.py flag: {' '.join(leftover)}")
        unknown = [k for k in overrides if k not in ORIGINAL_FLAGS]
        if unknown:
            raise UsageError(f"--{unknown[0]} is not a flag of the original code: the crosscheck "
                             f"sets only {', '.join(ORIGINAL_FLAGS)}")
        job = build_job(args.config, args.iters, args.first_order, args.seed, args.eval_tasks,
                        args.data_dir, overrides, args.sync_every, not args.no_reference,
                        args.original_batch_norm)
        _, report, ok = run_crosscheck(job, args.original, args.work_dir)
    except (UsageError, CrosscheckError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
