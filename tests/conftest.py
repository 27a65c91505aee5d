"""Shared pytest set-up."""
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The step's path is chosen without timing it (tests/test_autotune.py covers the timing):
# the suite's short runs would spend longer measuring than training.
os.environ.setdefault("MAML_TF_AUTOTUNE", "0")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


# =============================================================================
# Data fixtures (data/prepare_omniglot.py, data/prepare_miniimagenet.py,
# maml_tf/image_data.py).  Everything below this line belongs to the data tests.
# =============================================================================
import importlib.util as _importlib_util
import io as _io
import types as _types

import pytest as _pytest

OMNIGLOT_ZIPS = (SHARED / "data" / "omniglot" / "images_background.zip",
                 SHARED / "data" / "omniglot" / "images_evaluation.zip")
MINIIMAGENET_SHARED = SHARED / "data" / "miniImagenet"
# The miniImageNet stand-in: this many classes per split, this many rows per class.
MINI_FIXTURE_CLASSES = 5
MINI_FIXTURE_ROWS = 6


def load_data_script(name):
    """Import data/<name>.py (a script, not a package module) as a module."""
    path = REPO_ROOT / "data" / f"{name}.py"
    spec = _importlib_util.spec_from_file_location(f"_data_script_{name}", path)
    module = _importlib_util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@_pytest.fixture(scope="session")
def omniglot_prepared(tmp_path_factory):
    """The real Omniglot archives prepared once per session.

    Returns a namespace: data_dir (holds omniglot_resized/, pass it as data_dir to
    maml_tf.data.image_data.make_sampler), omniglot_dir, summary (prepare()'s dict), log.
    """
    missing = [str(p) for p in OMNIGLOT_ZIPS if not p.is_file()]
    if missing:
        _pytest.skip(f"Omniglot archives not found: {', '.join(missing)}")
    data_dir = tmp_path_factory.mktemp("data")
    omniglot_dir = data_dir / "omniglot_resized"
    log = _io.StringIO()
    summary = load_data_script("prepare_omniglot").prepare(
        [str(p) for p in OMNIGLOT_ZIPS], str(omniglot_dir), log=log)
    return _types.SimpleNamespace(data_dir=data_dir, omniglot_dir=omniglot_dir,
                                  summary=summary, log=log.getvalue())


@_pytest.fixture(scope="session")
def omniglot_data_dir(omniglot_prepared):
    """A data folder holding the full prepared Omniglot set in omniglot_resized/."""
    return omniglot_prepared.data_dir


def _mini_fixture_image(rng, kind, size):
    """A synthetic photo-like image (smooth gradients + noise) of a given PIL mode/kind."""
    from PIL import Image
    import numpy as np

    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)),
                     ((xx + yy) * 127 // max(w + h - 2, 1))], axis=-1)
    noise = rng.integers(0, 48, size=(h, w, 3))
    rgb = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")
    if kind == "RGB":
        return rgb, "JPEG"
    if kind == "L":
        return rgb.convert("L"), "JPEG"
    if kind == "CMYK":
        return rgb.convert("CMYK"), "JPEG"
    if kind == "RGBA-png":
        im = rgb.convert("RGBA")
        im.putalpha(Image.fromarray(rng.integers(0, 256, size=(h, w)).astype(np.uint8)))
        return im, "PNG"
    if kind == "P-png":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"
    raise ValueError(kind)


MINI_FIXTURE_KINDS = ("RGB", "L", "CMYK", "RGBA-png", "P-png")
MINI_FIXTURE_SIZES = ((500, 375), (84, 84), (120, 90), (60, 200), (333, 250))


def build_miniimagenet_sources(root):
    """miniImageNet in the layout of the original release, cut down: root/csv/{split}.csv
    (rows cut from the real split files) and root/images/<csv filename> (per class, the
    real ImageNet photo of that class from imagenet_samples/ plus synthetic images of
    several sizes and modes, some with PNG content under a .jpg name).

    Returns a namespace: csv_dir, images_dir, rows {split: [(filename, wnid)]},
    kinds {filename: kind} ('real' for the copied photos).
    """
    import csv
    import shutil
    import numpy as np

    if not (MINIIMAGENET_SHARED / "train.csv").is_file():
        _pytest.skip(f"miniImageNet split files not found in {MINIIMAGENET_SHARED}")
    csv_dir, images_dir = root / "csv", root / "images"
    csv_dir.mkdir(parents=True)
    images_dir.mkdir()
    rng = np.random.default_rng(1234)
    rows, kinds = {}, {}
    n = 0
    for split in ("train", "val", "test"):
        per_class = {}
        with open(MINIIMAGENET_SHARED / f"{split}.csv", newline="") as f:
            for name, wnid in list(csv.reader(f))[1:]:
                if wnid not in per_class and len(per_class) == MINI_FIXTURE_CLASSES:
                    continue
                if len(per_class.setdefault(wnid, [])) < MINI_FIXTURE_ROWS:
                    per_class[wnid].append(name)
        rows[split] = [(name, wnid) for wnid, names in per_class.items() for name in names]
        with open(csv_dir / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["filename", "label"])
            w.writerows(rows[split])
        for wnid, names in per_class.items():
            photos = sorted((MINIIMAGENET_SHARED / "imagenet_samples" / split).glob(
                f"{wnid}_*"))
            for i, name in enumerate(names):
                if i == 0 and photos:
                    shutil.copyfile(photos[0], images_dir / name)
                    kinds[name] = "real"
                    continue
                kind = MINI_FIXTURE_KINDS[n % len(MINI_FIXTURE_KINDS)]
                size = MINI_FIXTURE_SIZES[(n + n // len(MINI_FIXTURE_KINDS))
                                          % len(MINI_FIXTURE_SIZES)]
                n += 1
                im, fmt = _mini_fixture_image(rng, kind, size)
                im.save(images_dir / name, format=fmt)
                kinds[name] = kind
    return _types.SimpleNamespace(csv_dir=csv_dir, images_dir=images_dir, rows=rows,
                                  kinds=kinds)


@_pytest.fixture(scope="session")
def miniimagenet_sources(tmp_path_factory):
    """A cut-down miniImageNet in its original release layout (see
    build_miniimagenet_sources); treat it as read-only."""
    return build_miniimagenet_sources(tmp_path_factory.mktemp("mini_sources"))


@_pytest.fixture(scope="session")
def miniimagenet_data_dir(miniimagenet_sources, tmp_path_factory):
    """A data folder holding miniImagenet/{train,val,test}/<wnid>/*.jpg prepared from
    miniimagenet_sources (5 classes per split, 6 images per class)."""
    data_dir = tmp_path_factory.mktemp("mini_data")
    load_data_script("prepare_miniimagenet").prepare_from_csv(
        str(miniimagenet_sources.csv_dir), str(miniimagenet_sources.images_dir),
        str(data_dir / "miniImagenet"), log=_io.StringIO())
    return data_dir


# A finished short sinusoid run (101 iterations, checkpoints model50 and model100), trained
# once in-process; the tests that need one as a starting point (a log folder that must
# survive bad input, a resume after a crash) each take a copy.
# SINE: the crash tests' sinusoid flags (without a length); SINE_SHORT: those, 101 iterations.
SINE = ["--datasource=sinusoid", "--norm=None", "--update_batch_size=5", "--update_lr=0.01",
        "--save_interval=50"]
SINE_SHORT = SINE + ["--metatrain_iterations=101"]


@_pytest.fixture(scope="session")
def sine_short_run(tmp_path_factory):
    """The log folder of ``SINE_SHORT``, trained as ``main.py SINE_SHORT --logdir=...`` trains."""
    from maml_tf.run.config import config_from_flags
    from maml_tf.run.train import train
    d = tmp_path_factory.mktemp("sine_short_run")
    train(config_from_flags({**dict(a[2:].split("=") for a in SINE_SHORT), "logdir": str(d)}),
          out=lambda *a, **k: None)
    return d


@_pytest.fixture
def sine_short_copy(sine_short_run, tmp_path):
    """A copy of ``sine_short_run`` of the test's own (tmp_path/run)."""
    import shutil
    return pathlib.Path(shutil.copytree(sine_short_run, tmp_path / "run"))
