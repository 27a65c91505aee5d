#!/usr/bin/env python
"""Lay out miniImageNet as the folders MAML reads: OUTPUT/{train,val,test}/<wnid>/<image>.

Two input forms.

1. Split files + ImageNet images (the form of the original ``proc_images.py``)::

       python data/prepare_miniimagenet.py --csv_dir DIR_WITH_CSVS --images_dir IMAGES \
           --output data/miniImagenet

   ``--csv_dir`` holds ``train.csv``, ``val.csv`` and ``test.csv`` (Ravi & Larochelle's
   split files, header ``filename,label``) and ``--images_dir`` the images they name,
   e.g. ``IMAGES/n0153282900000005.jpg`` (the content of the usual ``images.zip``).
   Each image is resized with the original's call
   ``im.resize((84, 84), resample=Image.LANCZOS)`` and saved as JPEG with Pillow's
   default settings (quality 75), as the original's ``im.save(path)`` on a ``.jpg``
   name did, to ``OUTPUT/<split>/<wnid>/<name>.jpg``.  Images in mode RGB, L or CMYK are
   kept in their mode as the original did; images in other modes (RGBA, P, LA, I, ...),
   which the original could not save as JPEG, are converted to RGB before resizing.
   Unlike the original, the source images are left untouched (it overwrote them) and
   no shell commands are run.

2. The pickled cache files some mirrors distribute::

       python data/prepare_miniimagenet.py --pickle_dir DIR --output data/miniImagenet

   ``DIR/mini-imagenet-cache-{train,val,test}.pkl``, each a dict with ``image_data``
   (N x 84 x 84 x 3 uint8) and ``class_dict`` (class name -> list of row indices).  These
   images are already 84x84; they are written as lossless PNG files
   ``OUTPUT/<split>/<wnid>/<wnid>_<row index:05d>.png`` (re-encoding them as JPEG would
   lose information).  The files come from third-party mirrors, so they are read with
   ``maml_tf.data.safe_pickle``, which admits only numpy arrays, dtypes and scalars inside
   dicts and lists: a file that asks for anything else (``os.system``, ``builtins.eval``,
   any other function or class) is refused without running it, as is a truncated or
   corrupt file; all three files are checked before anything is written.

``--output`` defaults to the ``miniImagenet`` folder next to this script
(``data/miniImagenet``), which is where ``maml_tf`` looks by default.

Both forms are idempotent and safe to interrupt: each image goes to a hidden temporary
file in its destination folder and is renamed into place with os.replace, so an existing
output file is complete and a rerun skips it (``--force`` rewrites).  Temporary files
left by a killed run are removed on the next run.

Exit status: 0 on success (possibly with warnings), 2 on bad input, 130 if interrupted.
"""
import argparse
import csv
import os
import re
import sys
import time

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPT_DIR)
sys.path.insert(1, os.path.dirname(SCRIPT_DIR))  # the repository root, for maml_tf
from _preparing import InputError, remove_stale_temps, save_atomic, warn  # noqa: E402
from maml_tf.data import safe_pickle  # noqa: E402
DEFAULT_OUTPUT = os.path.join(SCRIPT_DIR, "miniImagenet")

SPLITS = ("train", "val", "test")
IMAGE_SIZE = (84, 84)
EXPECTED_CLASSES = {"train": 64, "val": 16, "test": 20}
EXPECTED_IMAGES_PER_CLASS = 600
KEPT_MODES = ("RGB", "L", "CMYK")
PROGRESS_EVERY = 2000
PICKLE_NAME = "mini-imagenet-cache-{}.pkl"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _examples(items, n=3):
    items = list(items)
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(str(x) for x in items[:n]) + more


class _Writer:
    """Shared bookkeeping of both input forms: folders, skips, progress, summary."""

    def __init__(self, output, force, total, log):
        self.output, self.force, self.total, self.log = output, force, total, log
        self.done = 0
        self.written = self.skipped = self.stale = 0
        self.dirs = set()
        self.start = time.time()
        self.per_split = {s: {} for s in SPLITS}  # split -> {wnid: images present}
        try:
            os.makedirs(output, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create --output {output} ({exc.strerror}); choose a "
                             f"writable folder")

    def target(self, split, wnid, name):
        folder = os.path.join(self.output, split, wnid)
        if folder not in self.dirs:
            self.dirs.add(folder)
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create {folder} ({exc.strerror}); choose a "
                                 f"writable --output")
            self.stale += remove_stale_temps(folder)
        return os.path.join(folder, name)

    def needs(self, path):
        return self.force or not os.path.exists(path)

    def save(self, im, path, fmt):
        try:
            save_atomic(im, path, fmt)
        except OSError as exc:
            raise InputError(f"cannot write {path} ({exc.strerror or exc}); choose a "
                             f"writable --output with free space")

    def count(self, split, wnid, wrote, present=True):
        if wrote:
            self.written += 1
        elif present:
            self.skipped += 1
        if present:
            d = self.per_split[split]
            d[wnid] = d.get(wnid, 0) + 1
        self.done += 1
        if self.done % PROGRESS_EVERY == 0 or self.done == self.total:
            print(f"[prepare_miniimagenet] {self.done}/{self.total} images ({self.written} "
                  f"written, {self.skipped} already done) {time.time() - self.start:.1f}s",
                  file=self.log, flush=True)

    def summary(self):
        for split in SPLITS:
            classes = self.per_split[split]
            if len(classes) != EXPECTED_CLASSES[split]:
                warn(f"{split} has {len(classes)} classes; the standard miniImageNet split "
                      f"has {EXPECTED_CLASSES[split]}")
            odd = sorted(w for w, n in classes.items() if n != EXPECTED_IMAGES_PER_CLASS)
            if odd:
                warn(f"{len(odd)} {split} class(es) do not have {EXPECTED_IMAGES_PER_CLASS} "
                      f"images, e.g. {odd[0]} has {classes[odd[0]]}")
        return dict(output=self.output, written=self.written, skipped=self.skipped,
                    stale_temps_removed=self.stale,
                    classes={s: len(self.per_split[s]) for s in SPLITS},
                    images={s: sum(self.per_split[s].values()) for s in SPLITS})


# ----------------------------------------------------------------------------- CSV form

def read_split_csv(path):
    """Rows (filename, wnid) of one split file, validated."""
    if not os.path.isfile(path):
        raise InputError(f"{path} not found; --csv_dir must hold train.csv, val.csv and "
                         f"test.csv (header 'filename,label')")
    rows = []
    try:
        with open(path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["filename", "label"]:
                raise InputError(f"{path}: first line is {','.join(header or [])!r}, expected "
                                 f"'filename,label'; use the miniImageNet split files")
            for lineno, row in enumerate(reader, 2):
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != 2:
                    raise InputError(f"{path} line {lineno}: expected 'filename,label', got "
                                     f"{','.join(row)!r}")
                name, wnid = row[0].strip(), row[1].strip()
                if not SAFE_NAME.match(name) or not SAFE_NAME.match(wnid):
                    raise InputError(f"{path} line {lineno}: {name!r},{wnid!r} is not a plain "
                                     f"file name and class name")
                rows.append((name, wnid))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text CSV file; use the miniImageNet split files")
    if not rows:
        raise InputError(f"{path} lists no images; use the miniImageNet split files")
    return rows


def _index_images(images_dir):
    if not os.path.isdir(images_dir):
        raise InputError(f"--images_dir {images_dir} is not a folder; pass the folder that "
                         f"holds the images named in the CSV files (e.g. the unpacked "
                         f"images.zip, with files like n0153282900000005.jpg)")
    exact, folded = {}, {}
    with os.scandir(images_dir) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            exact[entry.name] = entry.path
            folded.setdefault(entry.name.lower(), entry.path)
    return exact, folded


def prepare_from_csv(csv_dir, images_dir, output, force=False, allow_missing=False,
                     log=sys.stderr):
    from PIL import Image

    splits = {s: read_split_csv(os.path.join(csv_dir, s + ".csv")) for s in SPLITS}
    seen_name, seen_class = {}, {}
    for split, rows in splits.items():
        for name, wnid in rows:
            out_name = os.path.splitext(name)[0] + ".jpg"
            if out_name in seen_name:
                raise InputError(f"{name} is listed twice (in {seen_name[out_name]}.csv and "
                                 f"{split}.csv); use the miniImageNet split files")
            seen_name[out_name] = split
            if seen_class.setdefault(wnid, split) != split:
                raise InputError(f"class {wnid} is in both {seen_class[wnid]}.csv and "
                                 f"{split}.csv; the splits must not share classes")

    exact, folded = _index_images(images_dir)
    missing = []
    for split in SPLITS:
        for name, _ in splits[split]:
            if name not in exact and name.lower() not in folded:
                missing.append(name)
    if missing and not allow_missing:
        raise InputError(
            f"{len(missing)} image(s) named in the CSV files are not in {images_dir} "
            f"(e.g. {_examples(missing)}); put them there (unpack images.zip into that "
            f"folder) or pass --allow_missing to leave them out")
    missing_set = set(missing)

    total = sum(len(r) for r in splits.values())
    w = _Writer(output, force, total, log)
    unreadable = []
    for split in SPLITS:
        for name, wnid in splits[split]:
            path = w.target(split, wnid, os.path.splitext(name)[0] + ".jpg")
            if name in missing_set:
                w.count(split, wnid, wrote=False, present=os.path.exists(path))
                continue
            if not w.needs(path):
                w.count(split, wnid, wrote=False)
                continue
            src = exact.get(name) or folded[name.lower()]
            try:
                with Image.open(src) as im:
                    im.load()
                    if im.mode not in KEPT_MODES:
                        im = im.convert("RGB")
                    out = im.resize(IMAGE_SIZE, resample=Image.LANCZOS)
            except Exception as exc:  # not an image / corrupt
                unreadable.append(f"{src} ({type(exc).__name__})")
                w.count(split, wnid, wrote=False, present=False)
                continue
            w.save(out, path, "JPEG")
            w.count(split, wnid, wrote=True)
    if missing:
        warn(f"--allow_missing: left out {len(missing)} image(s) absent from {images_dir}, "
              f"e.g. {_examples(missing)}")
    if unreadable:
        if not allow_missing:
            raise InputError(f"{len(unreadable)} file(s) are not readable images: "
                             f"{_examples(unreadable)}; replace them with the original images "
                             f"or pass --allow_missing to leave them out")
        warn(f"--allow_missing: left out {len(unreadable)} unreadable file(s): "
              f"{_examples(unreadable)}")
    s = w.summary()
    s.update(missing=len(missing), unreadable=len(unreadable))
    return s


# -------------------------------------------------------------------------- pickle form

def load_pickle(path):
    import numpy as np

    if not os.path.isfile(path):
        raise InputError(f"{path} not found; --pickle_dir must hold "
                         f"{', '.join(PICKLE_NAME.format(s) for s in SPLITS)}")
    try:
        data = safe_pickle.load(path)
    except safe_pickle.UnsafePickleError as exc:
        raise InputError(f"{path} refused: it asks for {exc.what}, which a miniImageNet cache "
                         f"never holds (only numpy arrays, dtypes and scalars are admitted; "
                         f"unpickling anything else could run code); delete this file and "
                         f"download the cache from a source you trust")
    except safe_pickle.CorruptPickleError as exc:
        raise InputError(f"cannot unpickle {path}: truncated or corrupt pickle ({exc.detail}); "
                         f"download the file again")
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc})")
    if not isinstance(data, dict) or "image_data" not in data or "class_dict" not in data:
        found = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path} holds {found}, expected a dict with keys 'image_data' and "
                         f"'class_dict'; use the mini-imagenet-cache pickles")
    images = data["image_data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != IMAGE_SIZE + (3,):
        desc = (f"{images.dtype} array of shape {images.shape}"
                if isinstance(images, np.ndarray) else type(images).__name__)
        raise InputError(f"{path}: image_data is a {desc}, expected a uint8 array of shape "
                         f"(N, 84, 84, 3); use the mini-imagenet-cache pickles")
    classes = data["class_dict"]
    if not isinstance(classes, dict) or not classes:
        raise InputError(f"{path}: class_dict is not a non-empty dict of class name -> list "
                         f"of row indices")
    n = images.shape[0]
    for wnid, idx in classes.items():
        if not isinstance(wnid, str) or not SAFE_NAME.match(wnid):
            raise InputError(f"{path}: class_dict key {wnid!r} is not a plain class name")
        try:
            arr = np.asarray(idx)
            ok = arr.ndim == 1 and arr.size > 0 and np.issubdtype(arr.dtype, np.integer) \
                and arr.min() >= 0 and arr.max() < n and np.unique(arr).size == arr.size
        except Exception:
            ok = False
        if not ok:
            raise InputError(f"{path}: class_dict[{wnid!r}] is not a non-empty list of row "
                             f"indices in [0, {n})")
    return images, classes


def prepare_from_pickles(pickle_dir, output, force=False, log=sys.stderr):
    from PIL import Image

    if not os.path.isdir(pickle_dir):
        raise InputError(f"--pickle_dir {pickle_dir} is not a folder; pass the folder holding "
                         f"{', '.join(PICKLE_NAME.format(s) for s in SPLITS)}")
    for split in SPLITS:  # report a missing file before doing any work
        path = os.path.join(pickle_dir, PICKLE_NAME.format(split))
        if not os.path.isfile(path):
            raise InputError(f"{path} not found; --pickle_dir must hold "
                             f"{', '.join(PICKLE_NAME.format(s) for s in SPLITS)}")
    # Validate all three files before writing anything (one at a time, to bound memory).
    seen_class = {}
    total = 0
    for split in SPLITS:
        images, classes = load_pickle(os.path.join(pickle_dir, PICKLE_NAME.format(split)))
        for wnid in classes:
            if seen_class.setdefault(wnid, split) != split:
                raise InputError(f"class {wnid} is in both the {seen_class[wnid]} and {split} "
                                 f"pickles; the splits must not share classes")
        total += sum(len(v) for v in classes.values())
        del images, classes
    w = _Writer(output, force, total, log)
    for split in SPLITS:
        images, classes = load_pickle(os.path.join(pickle_dir, PICKLE_NAME.format(split)))
        for wnid in sorted(classes):
            for idx in sorted(int(i) for i in classes[wnid]):
                path = w.target(split, wnid, f"{wnid}_{idx:05d}.png")
                if not w.needs(path):
                    w.count(split, wnid, wrote=False)
                    continue
                w.save(Image.fromarray(images[idx]), path, "PNG")
                w.count(split, wnid, wrote=True)
        del images
    s = w.summary()
    s.update(missing=0, unreadable=0)
    return s


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Lay out miniImageNet as OUTPUT/{train,val,test}/<wnid>/<image> for MAML.")
    parser.add_argument("--csv_dir", help="folder with train.csv, val.csv, test.csv")
    parser.add_argument("--images_dir", help="folder with the images the CSV files name")
    parser.add_argument("--pickle_dir",
                        help="folder with mini-imagenet-cache-{train,val,test}.pkl "
                             "(instead of --csv_dir/--images_dir)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help="output folder (default: miniImagenet next to this script, i.e. "
                             "data/miniImagenet)")
    parser.add_argument("--allow_missing", action="store_true",
                        help="leave out (with a warning) images that are absent or unreadable "
                             "instead of stopping")
    parser.add_argument("--force", action="store_true",
                        help="rewrite images that already exist in the output")
    args = parser.parse_args(argv)
    try:
        if args.pickle_dir:
            if args.csv_dir or args.images_dir:
                raise InputError("give either --pickle_dir or --csv_dir with --images_dir, "
                                 "not both")
            s = prepare_from_pickles(args.pickle_dir, args.output, force=args.force)
        else:
            if not (args.csv_dir and args.images_dir):
                raise InputError("give --csv_dir and --images_dir (split files and the images "
                                 "they name), or --pickle_dir")
            s = prepare_from_csv(args.csv_dir, args.images_dir, args.output, force=args.force,
                                 allow_missing=args.allow_missing)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    per = ", ".join(f"{sp} {s['classes'][sp]} classes / {s['images'][sp]} images"
                    for sp in SPLITS)
    print(f"miniImageNet ready in {s['output']}: {per} ({s['written']} written, "
          f"{s['skipped']} already done, {s['missing']} missing, {s['unreadable']} unreadable, "
          f"{s['stale_temps_removed']} stale temporary files removed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
