"""Trained models published with maml-tf (``pretrained/<name>/``), and how to make one.

A published model is a folder holding

* ``weights.npz``: theta and the normalisation offsets, float32, keyed as the model's
  dicts (``weights/conv1``, ..., ``norm/0/beta``): nothing else of the training state;
* ``manifest.json``: the exact training command, the commit it was trained at, the
  iterations, the seed, the main.py flags of the model, the test result (mean and 95%
  interval of the paper's column, the split, the number of tasks, the test command) and
  the sha256 of every file.

Use one with ``main.py --pretrained=NAME --train=False [--test_set=True]`` (the model's
flags come from its manifest; flags given on the command line win), or export it with
``python -m maml_tf.run.export --pretrained NAME --out DIR``.

    python -m maml_tf.run.pretrained list                 # the published models and their results
    python -m maml_tf.run.pretrained verify [NAME ...]    # check every file's sha256
    python -m maml_tf.run.pretrained publish NAME --logdir LOGDIR [--test_iter I] [--note=TEXT]
        [--command=TEXT] <training flags>
        # make pretrained/NAME from a trained run (needs its test CSV, written by --train=False)
"""
import csv
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import time

from maml_tf.run.config import UsageError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAINED_DIR = os.path.join(REPO_ROOT, "pretrained")
WEIGHTS = "weights.npz"
MANIFEST = "manifest.json"
FORMAT = "maml-tf pretrained/1"
# Config fields that describe the model and how it was trained (copied into manifests).
MODEL_FIELDS = ("datasource", "num_classes", "baseline", "pretrain_iterations", "metatrain_iterations",
                "meta_batch_size", "meta_lr", "update_batch_size", "update_lr", "num_updates", "norm",
                "num_filters", "conv", "max_pool", "stop_grad", "seed", "task_pool")


def folder_of(name):
    """A published model's folder: NAME under pretrained/, or a path to such a folder."""
    path = name if os.path.sep in name or os.path.isdir(name) and not os.path.isdir(
        os.path.join(PRETRAINED_DIR, name)) else os.path.join(PRETRAINED_DIR, name)
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        known = ", ".join(list_names()) or "none"
        raise UsageError(f"--pretrained={name}: no {MANIFEST} at {path} (published models: {known})")
    return path


def list_names():
    if not os.path.isdir(PRETRAINED_DIR):
        return []
    return sorted(d for d in os.listdir(PRETRAINED_DIR)
                  if os.path.isfile(os.path.join(PRETRAINED_DIR, d, MANIFEST)))


def read_manifest(name):
    with open(os.path.join(folder_of(name), MANIFEST)) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT:
        raise UsageError(f"--pretrained={name}: {MANIFEST} is not a {FORMAT} manifest")
    return manifest


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(name):
    """Raise UsageError unless every file listed in the manifest has its sha256."""
    folder, manifest = folder_of(name), read_manifest(name)
    for fname, digest in manifest["sha256"].items():
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            raise UsageError(f"--pretrained={name}: {fname} is missing; fetch the folder again")
        if sha256(path) != digest:
            raise UsageError(f"--pretrained={name}: {fname} does not have the sha256 of its manifest "
                             f"(damaged or changed); fetch the folder again")
    return manifest


def configure(cfg):
    """``cfg`` with the published model's flags for every field not given explicitly."""
    manifest = verify(cfg.pretrained)
    values = {k: v for k, v in manifest["flags"].items() if k not in cfg.explicit}
    return dataclasses.replace(cfg, **values)


def load_into(model, name):
    """Assign a published model's weights to ``model`` (shapes checked); returns the manifest."""
    import numpy as np
    manifest = verify(name)
    with np.load(os.path.join(folder_of(name), WEIGHTS), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    targets = {f"weights/{k}": v for k, v in model.weights.items()}
    targets.update({f"norm/{k}": v for k, v in model.norm_params.items()})
    if set(arrays) != set(targets):
        raise UsageError(f"--pretrained={name}: its arrays ({', '.join(sorted(arrays))}) do not fit this "
                         f"model ({', '.join(sorted(targets))}); do not override its architecture flags")
    for key, var in targets.items():
        if tuple(arrays[key].shape) != tuple(var.shape):
            raise UsageError(f"--pretrained={name}: {key} has shape {arrays[key].shape}, this model's is "
                             f"{tuple(var.shape)}; do not override its architecture flags")
    for key, var in targets.items():
        var.assign(arrays[key].astype(var.dtype.as_numpy_dtype))
    return manifest


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=REPO_ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _flag_line(values):
    import shlex
    return shlex.join(["python", "main.py"] + [f"--{k}={v}" for k, v in values.items()])


def publish(name, cfg, test_iter=-1, note="", command=None):
    """Make ``pretrained/<name>`` from the run of ``cfg`` (its latest or --test_iter
    checkpoint, and the test CSV its --train=False wrote)."""
    import numpy as np
    from maml_tf.run.checkpoints import CheckpointManager, iteration_of
    from maml_tf.run.model import build_model
    model = build_model(dataclasses.replace(cfg, train=False))
    manager = CheckpointManager(cfg.exp_dir, model)
    latest = manager.latest()
    path = manager.path_for(test_iter) if test_iter > 0 else latest
    if path is None:
        raise UsageError(f"no checkpoint in {cfg.exp_dir}: give the training run's --logdir and flags")
    manager.restore(path, weights_only=True)
    test_cfg = dataclasses.replace(cfg, train=False)
    csv_path = test_cfg.test_csv_path
    if not os.path.isfile(csv_path):
        raise UsageError(f"no test result at {csv_path}: run the same flags with --train=False "
                         f"--test_set=True first")
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    means, ci95 = [float(v) for v in rows[1]], [float(v) for v in rows[3]]
    folder = os.path.join(PRETRAINED_DIR, name)
    os.makedirs(folder, exist_ok=True)
    arrays = {f"weights/{k}": v.numpy().astype(np.float32) for k, v in model.weights.items()}
    arrays.update({f"norm/{k}": v.numpy().astype(np.float32) for k, v in model.norm_params.items()})
    np.savez_compressed(os.path.join(folder, WEIGHTS), **arrays)
    flags = {k: getattr(cfg, k) for k in MODEL_FIELDS}
    column = cfg.reported_steps[-1]
    manifest = {
        "format": FORMAT, "name": name,
        "command": command or _flag_line({**flags, "logdir": cfg.logdir}),
        "commit": _commit(), "iterations": iteration_of(path) + 1, "checkpoint": os.path.basename(path),
        # how far the run itself got (below the flags' total: a run stopped short)
        "run_iterations": iteration_of(latest) + 1,
        "seed": cfg.seed, "flags": flags,
        "test": {"metric": "accuracy" if cfg.classification else "mse", "column": f"update{column}",
                 "inner_steps": column, "mean": means[column], "ci95": ci95[column],
                 "split": "test" if cfg.test_set else "validation",
                 "tasks": cfg.num_test_tasks, "test_seed": cfg.test_seed,
                 "all_columns": {"mean": means, "ci95": ci95}},
        "note": note, "created": time.strftime("%Y-%m-%d"),
        "sha256": {WEIGHTS: sha256(os.path.join(folder, WEIGHTS))},
    }
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return folder, manifest


def run_length(manifest):
    """(iterations the run reached, iterations its flags ask for); a manifest without
    ``run_iterations`` is of a run that reached its flags' length."""
    flags = manifest.get("flags", {})
    total = flags.get("pretrain_iterations", 0) + flags.get("metatrain_iterations", 0)
    return manifest.get("run_iterations", total), total


def _short_of_full_length(manifest):
    """', SHORT OF FULL LENGTH (...)' where the run stopped before its flags' iterations."""
    reached, total = run_length(manifest)
    if not total or reached >= total:
        return ""
    return f", SHORT OF FULL LENGTH (the run stopped at {reached} of {total} iterations)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[-1])
        return 0 if argv else 2
    verb, rest = argv[0], argv[1:]
    try:
        if verb == "list":
            for n in list_names():
                m = read_manifest(n)
                t = m["test"]
                unit = (lambda v: f"{100 * v:.2f}%") if t["metric"] == "accuracy" else (lambda v: f"{v:.3f}")
                print(f"{n}: {unit(t['mean'])} +- {unit(t['ci95'])} ({t['metric']}, {t['column']}, "
                      f"{t['tasks']} {t['split']} tasks), {m['iterations']} iterations, seed {m['seed']}"
                      f"{_short_of_full_length(m)}")
            return 0
        if verb == "verify":
            for n in rest or list_names():
                verify(n)
                print(f"{n}: ok")
            return 0
        if verb == "publish":
            if not rest:
                raise UsageError("publish needs a NAME")
            from maml_tf.run.config import config_from_flags, parse_flags
            values, leftover = parse_flags(rest[1:], known=("test_iter", "note", "command"))
            texts = {"note": "", "command": None}
            for a in list(leftover):
                for key in texts:
                    if a.startswith(f"--{key}="):
                        texts[key] = a.split("=", 1)[1]
                        leftover.remove(a)
            if leftover:
                raise UsageError(f"not a main.py flag: {' '.join(leftover)}")
            test_iter = int(values.pop("test_iter", -1))
            cfg = config_from_flags({**values, "test_set": values.get("test_set", True)})
            folder, m = publish(rest[0], cfg, test_iter, texts["note"], texts["command"])
            print(f"Published {folder}: {m['test']['mean']:.4f} +- {m['test']['ci95']:.4f} ({m['test']['column']})")
            return 0
        raise UsageError(f"unknown verb {verb!r}: use list, verify or publish")
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from maml_tf.runtime import quiet_start
    quiet_start()
    sys.exit(main())
