"""Omniglot and miniImageNet for MAML: load prepared splits, sample N-way K-shot episodes.

The data folders are made by ``data/prepare_omniglot.py`` and
``data/prepare_miniimagenet.py``::

    DATA_DIR/omniglot_resized/<alphabet>/<character>/*.png      (28x28, 1 channel)
    DATA_DIR/miniImagenet/{train,val,test}/<wnid>/*.jpg|*.png    (84x84, 3 channels)

Each image is decoded once, with the TensorFlow ops the original code used
(``tf.io.decode_png`` / ``tf.io.decode_jpeg(channels=3)``, so pixel values match it bit
for bit), and each split is held in memory as a uint8 array
``[num_classes, images_per_class, H, W, C]``.  Decoding tens of thousands of files takes
a while, so the arrays are cached in ``DATA_DIR/.cache/*.npz`` (beside the dataset
folders, never inside them); the cache is keyed by the list of files with their sizes and
modification times and is rebuilt when they change.  When DATA_DIR is read-only the cache
goes to ``$MAML_TF_CACHE_DIR`` or ``~/.cache/maml_tf`` instead, and is skipped (with a
warning) if neither is writable.

The dataset folders hold exactly the original's layout and nothing else: the original's
loader reads every folder of ``omniglot_resized/`` as an alphabet (and every entry of an
alphabet as a character), so a file or folder of ours in there would break it.

Omniglot split (as the original, but independent of the filesystem's listing order): the
``<alphabet>/<character>`` folders are sorted, shuffled with ``random.Random(1)`` (the
original called ``random.seed(1); random.shuffle(...)`` on an unsorted ``os.listdir``), and
cut into 1100 meta-train, 100 meta-val and the remaining 423 meta-test characters.  The
lists are written beside it, to ``DATA_DIR/omniglot_splits/{train,val,test}.txt``, for the
record.

Episodes follow the original ``DataGenerator.make_data_tensor``; see ``EpisodeSampler``.
The random stream is numpy's PCG64, so episodes are reproducible from a seed (but are not
the original's TF1 random stream).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import warnings

import numpy as np

SPLITS = ("train", "val", "test")
DATASOURCES = ("omniglot", "miniimagenet")
OMNIGLOT_DIRNAME = "omniglot_resized"
MINIIMAGENET_DIRNAME = "miniImagenet"
OMNIGLOT_SHAPE = (28, 28, 1)
MINIIMAGENET_SHAPE = (84, 84, 3)
OMNIGLOT_NUM_TRAIN = 1100  # the original: num_train = 1200 - num_val
OMNIGLOT_NUM_VAL = 100
OMNIGLOT_SPLIT_SEED = 1
OMNIGLOT_NUM_CHARACTERS = 1623
MINIIMAGENET_NUM_CLASSES = {"train": 64, "val": 16, "test": 20}
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
SPLITS_DIRNAME = "omniglot_splits"  # beside omniglot_resized/, not inside
LEGACY_SPLITS_DIRNAME = "splits"    # inside omniglot_resized/ up to maml-tf 0.1
CACHE_DIRNAME = ".cache"
CACHE_VERSION = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STATE_FORMAT = "maml_tf.data.image_data.EpisodeSampler/1"  # fresh tasks
_POOL_STATE_FORMAT = "maml_tf.data.image_data.EpisodeSampler/pool/1"
# The same states as written before the package was split into layers (the module was
# maml_tf.image_data): checkpoints of those versions resume unchanged.
_LEGACY_FORMATS = {"maml_tf.image_data.EpisodeSampler/1": _STATE_FORMAT,
                   "maml_tf.image_data.EpisodeSampler/pool/1": _POOL_STATE_FORMAT}
ORIGINAL_TRAIN_POOL = 200000  # the original's make_data_tensor: num_total_batches (tasks)
ORIGINAL_EVAL_POOL = 600      # ... for the metaval tensor

_OMNIGLOT_FIX = ("(re)create it with: python data/prepare_omniglot.py --source "
                 "images_background.zip images_evaluation.zip --output {path}")
_MINI_FIX = ("(re)create it with: python data/prepare_miniimagenet.py --csv_dir CSV_DIR "
             "--images_dir IMAGES_DIR --output {path} (or --pickle_dir PICKLE_DIR)")


class DataError(ValueError):
    """Bad or missing data; the message names the path and how to fix it."""


class DataWarning(UserWarning):
    """Something about the data worth knowing that does not stop loading."""


def _warn(msg):
    warnings.warn(msg, DataWarning, stacklevel=3)


# --------------------------------------------------------------------------- listing

def _is_image_name(name):
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(folder):
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_file() and _is_image_name(e.name))


def _subdirs(folder):
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def list_omniglot_characters(omniglot_dir):
    """Sorted ``'<alphabet>/<character>'`` paths of the character folders of ``omniglot_dir``."""
    fix = _OMNIGLOT_FIX.format(path=omniglot_dir)
    if not os.path.isdir(omniglot_dir):
        raise DataError(f"Omniglot folder {omniglot_dir} does not exist; {fix}")
    characters = []
    for alphabet in _subdirs(omniglot_dir):
        if alphabet == LEGACY_SPLITS_DIRNAME:
            _warn(f"{os.path.join(omniglot_dir, alphabet)} holds split lists written by an older "
                  f"maml-tf; the original code reads it as an alphabet and fails: delete it "
                  f"(they are now written to {_splits_folder(omniglot_dir)})")
            continue
        for character in _subdirs(os.path.join(omniglot_dir, alphabet)):
            characters.append(f"{alphabet}/{character}")
    if not characters:
        raise DataError(f"Omniglot folder {omniglot_dir} has no <alphabet>/<character> "
                        f"folders; {fix}")
    return sorted(characters)


def _data_root(dataset_dir):
    """The folder holding a dataset folder (DATA_DIR): where caches and split lists go."""
    return os.path.dirname(os.path.abspath(dataset_dir))


def _splits_folder(omniglot_dir):
    return os.path.join(_data_root(omniglot_dir), SPLITS_DIRNAME)


def omniglot_split(characters, num_train=OMNIGLOT_NUM_TRAIN, num_val=OMNIGLOT_NUM_VAL,
                   seed=OMNIGLOT_SPLIT_SEED):
    """Split character paths as the original: sort, shuffle with seed 1, cut 1100/100/rest."""
    order = sorted(characters)
    random.Random(seed).shuffle(order)
    return {"train": order[:num_train],
            "val": order[num_train:num_train + num_val],
            "test": order[num_train + num_val:]}


def _check_split(split):
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------- decoding

def _decode_files(paths, shape, fix):
    """Decode image files with TF into a uint8 array [len(paths), H, W, C]."""
    import tensorflow as tf

    h, w, c = shape

    @tf.autograph.experimental.do_not_convert
    def decode(path):
        data = tf.io.read_file(path)
        is_png = tf.equal(tf.strings.substr(data, 0, len(_PNG_SIGNATURE)), _PNG_SIGNATURE)
        image = tf.cond(is_png,
                        lambda: tf.io.decode_png(data, channels=c),
                        lambda: tf.io.decode_jpeg(data, channels=c))
        s = tf.shape(image)
        ok = tf.logical_and(tf.equal(s[0], h), tf.equal(s[1], w))
        image = tf.cond(ok, lambda: image, lambda: tf.zeros([h, w, c], tf.uint8))
        return tf.reshape(image, [h, w, c]), ok, s[:2]

    out = np.empty((len(paths), h, w, c), np.uint8)
    if not paths:
        return out
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(1024).prefetch(2)
    pos = 0
    try:
        for images, ok, sizes in ds.as_numpy_iterator():
            if not ok.all():
                i = int(np.argmin(ok))
                raise DataError(f"{paths[pos + i]} is {sizes[i][1]}x{sizes[i][0]} pixels, "
                                f"expected {w}x{h}; {fix}")
            out[pos:pos + len(images)] = images
            pos += len(images)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError,
            tf.errors.UnknownError):
        # Find the file TF could not decode, to name it.
        for p in paths:
            try:
                decode(tf.constant(p))
            except Exception as exc:
                raise DataError(f"cannot decode {p} as an image "
                                f"({type(exc).__name__}); {fix}") from None
        raise
    return out


# ----------------------------------------------------------------------------- cache

def _tmp_name(path):
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def _file_key(root, relpaths, shape):
    h = hashlib.sha256(f"v{CACHE_VERSION} {shape}\n".encode())
    for rel in relpaths:
        st = os.stat(os.path.join(root, rel))
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _cache_candidates(dataset_dir, name, cache_dir):
    if cache_dir is not None:
        return [os.path.join(cache_dir, name)]
    tag = hashlib.sha1(os.path.abspath(dataset_dir).encode()).hexdigest()[:12]
    fallback = os.environ.get("MAML_TF_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "maml_tf")
    return [os.path.join(dataset_dir, CACHE_DIRNAME, name),
            os.path.join(fallback, f"{os.path.basename(os.path.abspath(dataset_dir))}-{tag}",
                         name)]


def _cache_read(path, key):
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            return z["images"], [str(n) for n in z["names"]]
    except Exception:  # missing, truncated, stale format: rebuild
        return None


def _cache_write(candidates, key, images, names):
    for path in candidates:
        folder = os.path.dirname(path)
        tmp = None
        try:
            os.makedirs(folder, exist_ok=True)
            tmp = _tmp_name(path)
            with open(tmp, "wb") as f:
                np.savez(f, key=np.array(key), images=images, names=np.array(names))
            os.replace(tmp, path)
            return path
        except OSError:
            if tmp is not None:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
    _warn(f"could not write the decoded-image cache (tried {', '.join(candidates)}); "
          f"images will be decoded again next time")
    return None


def _load_grouped(root, groups, shape, cache_root, cache_name, fix, cache, cache_dir):
    """Decode ``groups`` (class name -> sorted image names under root/class) into
    [num_classes, images_per_class, H, W, C], through the cache (cache_root/.cache/...;
    cache_root is DATA_DIR, the folder holding the dataset folders)."""
    names = list(groups)
    counts = {len(v) for v in groups.values()}
    if len(counts) != 1:
        lo = min(names, key=lambda n: len(groups[n]))
        hi = max(names, key=lambda n: len(groups[n]))
        raise DataError(f"class folders in {root} hold different numbers of images "
                        f"({lo}: {len(groups[lo])}, {hi}: {len(groups[hi])}); rerun the "
                        f"preparation, which completes what is missing: {fix}")
    per_class = counts.pop()
    if per_class == 0:
        raise DataError(f"the class folders in {root} hold no images; {fix}")
    relpaths = [f"{n}/{f}" for n in names for f in groups[n]]
    key = _file_key(root, relpaths, shape) if cache else None
    candidates = _cache_candidates(cache_root, cache_name, cache_dir) if cache else []
    for path in candidates:
        hit = _cache_read(path, key)
        if hit is not None and hit[1] == names and hit[0].shape == (
                len(names), per_class) + tuple(shape):
            return hit[0], names
    flat = _decode_files([os.path.join(root, r) for r in relpaths], shape, fix)
    images = flat.reshape((len(names), per_class) + tuple(shape))
    if cache:
        _cache_write(candidates, key, images, names)
    return images, names


# ---------------------------------------------------------------------------- loaders

def load_omniglot(omniglot_dir, *, cache=True, cache_dir=None):
    """All Omniglot characters: (uint8 [num_chars, 20, 28, 28, 1], sorted character paths)."""
    fix = _OMNIGLOT_FIX.format(path=omniglot_dir)
    characters = list_omniglot_characters(omniglot_dir)
    groups = {c: _list_images(os.path.join(omniglot_dir, c)) for c in characters}
    images, names = _load_grouped(omniglot_dir, groups, OMNIGLOT_SHAPE, _data_root(omniglot_dir),
                                  "omniglot_28x28x1.npz", fix, cache, cache_dir)
    if len(names) != OMNIGLOT_NUM_CHARACTERS:
        _warn(f"{omniglot_dir} has {len(names)} characters; the full Omniglot set has "
              f"{OMNIGLOT_NUM_CHARACTERS} and the standard split assumes it")
    return images, names


def _write_split_files(omniglot_dir, split_lists):
    folder = _splits_folder(omniglot_dir)
    try:
        os.makedirs(folder, exist_ok=True)
        for split, chars in split_lists.items():
            path = os.path.join(folder, f"{split}.txt")
            text = "".join(c + "\n" for c in chars)
            try:
                with open(path) as f:
                    if f.read() == text:
                        continue
            except OSError:
                pass
            tmp = _tmp_name(path)
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
    except OSError as exc:
        _warn(f"could not write the split lists to {folder} ({exc.strerror or exc}); "
              f"continuing without them")


def load_omniglot_split(omniglot_dir, split, *, cache=True, cache_dir=None,
                        write_split_files=True):
    """One Omniglot split: (uint8 [num_chars, 20, 28, 28, 1], character paths)."""
    _check_split(split)
    images, names = load_omniglot(omniglot_dir, cache=cache, cache_dir=cache_dir)
    split_lists = omniglot_split(names)
    if write_split_files:
        _write_split_files(omniglot_dir, split_lists)
    chosen = split_lists[split]
    if not chosen:
        raise DataError(f"the Omniglot {split} split of {omniglot_dir} is empty (the folder "
                        f"has {len(names)} characters); "
                        + _OMNIGLOT_FIX.format(path=omniglot_dir))
    index = {n: i for i, n in enumerate(names)}
    return images[[index[c] for c in chosen]], chosen


def load_miniimagenet_split(miniimagenet_dir, split, *, cache=True, cache_dir=None):
    """One miniImageNet split: (uint8 [num_classes, images_per_class, 84, 84, 3], wnids)."""
    _check_split(split)
    fix = _MINI_FIX.format(path=miniimagenet_dir)
    root = os.path.join(miniimagenet_dir, split)
    if not os.path.isdir(root):
        raise DataError(f"miniImageNet folder {root} does not exist; {fix}")
    groups = {w: _list_images(os.path.join(root, w)) for w in _subdirs(root)}
    if not groups:
        raise DataError(f"miniImageNet folder {root} has no <wnid> class folders; {fix}")
    images, names = _load_grouped(root, groups, MINIIMAGENET_SHAPE, _data_root(miniimagenet_dir),
                                  f"miniimagenet_{split}_84x84x3.npz", fix, cache, cache_dir)
    if len(names) != MINIIMAGENET_NUM_CLASSES[split]:
        _warn(f"{root} has {len(names)} classes; the standard miniImageNet {split} split "
              f"has {MINIIMAGENET_NUM_CLASSES[split]}")
    return images, names


# ---------------------------------------------------------------------------- episodes

class EpisodeSampler:
    """Samples meta-batches of N-way classification tasks from one split held in memory.

    Per task, as the original ``make_data_tensor``: N distinct classes drawn uniformly
    without replacement, in random order (label i = the i-th drawn class); K + Q distinct
    images per class drawn without replacement; with ``rotate`` (Omniglot) one rotation
    from {0, 90, 180, 270} degrees per class per task, applied to all its images
    (counter-clockwise, as ``tf.image.rot90``).  Examples are ordered k-major as in the
    original: for each sample index k in range(K + Q), a fresh random permutation of the
    N classes, each contributing its k-th image.  The support set is the first N*K
    examples (k < K), the query set the remaining N*Q.

    Pixels become float32 ``x / 255`` (then ``1 - x`` with ``invert``, for Omniglot), the
    same float32 arithmetic as the original, and images are flattened to H*W*C.

    ``pool_size`` > 0: a fixed pool of that many tasks cycled through in order, as the
    original (its ``make_data_tensor`` drew ``num_total_batches`` = 200000 training tasks,
    600 evaluation tasks, once, and its input queue cycled through them).  What the
    original fixed per pool task is fixed here too: the N classes with their labels and
    the K + Q images of each class (task i of the pool is drawn from its own generator,
    seeded by (seed, i)); what it redrew at every use, in the graph, is redrawn at every
    use: each class's rotation and the per-sample-index class order.  ``pool_size`` = 0:
    every task is drawn fresh.
    """

    def __init__(self, images, num_classes, k_support, k_query, rotate=False, invert=False,
                 seed=0, class_names=None, meta_batch_size=None, pool_size=0):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 5:
            raise DataError(f"images must be a uint8 array [classes, images_per_class, H, W, "
                            f"C], got {images.dtype} {images.shape}")
        num_available, per_class, h, w, _ = images.shape
        num_classes, k_support, k_query = int(num_classes), int(k_support), int(k_query)
        if num_classes < 1 or k_support < 1 or k_query < 0:
            raise DataError(f"need num_classes >= 1, k_support >= 1, k_query >= 0 (got "
                            f"{num_classes}, {k_support}, {k_query})")
        if num_classes > num_available:
            raise DataError(f"num_classes={num_classes} but this split has only "
                            f"{num_available} classes")
        if k_support + k_query > per_class:
            raise DataError(f"k_support + k_query = {k_support + k_query} images per class "
                            f"but the classes have only {per_class}")
        if rotate and h != w:
            raise DataError(f"rotation needs square images, got {h}x{w}")
        if class_names is not None and len(class_names) != num_available:
            raise DataError("class_names must have one name per class")
        self.images = images
        self.num_classes = num_classes
        self.k_support = k_support
        self.k_query = k_query
        self.rotate = bool(rotate)
        self.invert = bool(invert)
        self.class_names = list(class_names) if class_names is not None else None
        self.meta_batch_size = meta_batch_size
        self.image_shape = images.shape[2:]
        self.dim_input = int(np.prod(self.image_shape))
        self.dim_output = num_classes
        self._eye = np.eye(num_classes, dtype=np.float32)
        self._rng = np.random.Generator(np.random.PCG64(seed))
        if pool_size < 0:
            raise DataError(f"pool_size must be >= 0, got {pool_size}")
        self.pool_size = int(pool_size)
        self.pool_seed = int(seed)
        self._position = 0  # pool mode: index of the next task (cycles)

    @property
    def num_available_classes(self):
        return self.images.shape[0]

    @property
    def images_per_class(self):
        return self.images.shape[1]

    def _choose(self, keys, n):
        """Per row, the indices of the n smallest keys, in increasing key order: a uniform
        random ordered sample without replacement."""
        if n < keys.shape[-1]:
            idx = np.argpartition(keys, n - 1, axis=-1)[..., :n]
        else:
            idx = np.broadcast_to(np.arange(keys.shape[-1]), keys.shape)
        order = np.argsort(np.take_along_axis(keys, idx, axis=-1), axis=-1)
        return np.take_along_axis(idx, order, axis=-1)

    def sample_with_info(self, meta_batch_size=None):
        """Like ``sample`` and also a dict of what was drawn: ``classes`` [T, N] (split class
        index of label i), ``image_index`` [T, N*(K+Q)] (image index within its class, per
        example, in output order), ``rotation`` [T, N] (multiples of 90 degrees, per
        label)."""
        if meta_batch_size is None:
            meta_batch_size = self.meta_batch_size
        if meta_batch_size is None:
            raise DataError("sample() needs meta_batch_size (none was given to the sampler)")
        t = int(meta_batch_size)
        if t < 1:
            raise DataError(f"meta_batch_size must be >= 1, got {meta_batch_size}")
        n, s = self.num_classes, self.k_support + self.k_query
        c, p = self.images.shape[:2]
        rng = self._rng
        if self.pool_size:
            classes, image_idx, tasks = self._pool_tasks(t)
        else:
            classes = self._choose(rng.random((t, c)), n)  # [T, N]; position = label
            image_idx = self._choose(rng.random((t, n, p)), s)  # [T, N, S]
        rotation = (rng.integers(0, 4, size=(t, n)) if self.rotate
                    else np.zeros((t, n), np.int64))
        perm = np.argsort(rng.random((t, s, n)), axis=-1)  # [T, S, N]: label per slot
        ti = np.arange(t)[:, None, None]
        ki = np.arange(s)[None, :, None]
        img_of_slot = image_idx[ti, perm, ki]  # [T, S, N]
        batch = self.images[classes[ti, perm], img_of_slot]  # [T, S, N, H, W, C]
        if self.rotate:
            rot_of_slot = rotation[ti, perm]
            for r in (1, 2, 3):
                m = rot_of_slot == r
                if m.any():
                    batch[m] = np.rot90(batch[m], r, axes=(1, 2))
        # float32(x) / 255 (then 1 - x), the original's float32 arithmetic, in place.
        x = batch.reshape(t, s * n, self.dim_input).astype(np.float32)
        x /= np.float32(255.0)
        if self.invert:
            np.subtract(np.float32(1.0), x, out=x)
        y = self._eye[perm.reshape(t, s * n)]
        nk = n * self.k_support
        out = (x[:, :nk], y[:, :nk], x[:, nk:], y[:, nk:])
        info = {"classes": classes, "image_index": img_of_slot.reshape(t, s * n),
                "rotation": rotation}
        if self.pool_size:
            info["pool_index"] = tasks
        return out, info

    def pool_task(self, i):
        """(classes [N], image indices [N, K+Q]) of task ``i`` of the pool: what the
        original fixed when it built its task list (classes in label order, images)."""
        n, s = self.num_classes, self.k_support + self.k_query
        c, p = self.images.shape[:2]
        g = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.pool_seed, 5, i])))
        return self._choose(g.random(c)[None], n)[0], self._choose(g.random((n, p)), s)

    def _pool_tasks(self, t):
        tasks = (self._position + np.arange(t)) % self.pool_size
        self._position = int((self._position + t) % self.pool_size)
        drawn = [self.pool_task(int(i)) for i in tasks]
        return np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn]), tasks

    def sample(self, meta_batch_size=None):
        """(inputa [T, N*K, D], labela [T, N*K, N], inputb [T, N*Q, D], labelb [T, N*Q, N]),
        float32, D = H*W*C, labels one-hot.  T = ``meta_batch_size``, or the sampler's
        ``meta_batch_size`` when not given."""
        return self.sample_with_info(meta_batch_size)[0]

    def get_state(self):
        """The random state as a JSON string, for ``set_state`` (checkpoint/resume)."""
        if self.pool_size:
            return json.dumps({"format": _POOL_STATE_FORMAT, "pool_size": self.pool_size,
                               "pool_seed": self.pool_seed, "position": self._position,
                               "bit_generator": self._rng.bit_generator.state})
        return json.dumps({"format": _STATE_FORMAT,
                           "bit_generator": self._rng.bit_generator.state})

    def set_state(self, state):
        """Restore a state from ``get_state``; the following episodes repeat exactly."""
        try:
            d = json.loads(state)
            expected = _POOL_STATE_FORMAT if self.pool_size else _STATE_FORMAT
            if _LEGACY_FORMATS.get(d.get("format"), d.get("format")) != expected:
                raise ValueError(f"format {d.get('format')!r}, this sampler's is {expected!r}")
            if self.pool_size and (d["pool_size"], d["pool_seed"]) != (self.pool_size, self.pool_seed):
                raise ValueError(f"a pool of {d['pool_size']} tasks (seed {d['pool_seed']}), this "
                                 f"sampler's is {self.pool_size} (seed {self.pool_seed})")
            bg = np.random.PCG64()
            bg.state = d["bit_generator"]
            position = int(d.get("position", 0))
        except Exception as exc:
            raise DataError(f"not this EpisodeSampler's state ({exc})") from None
        self._rng = np.random.Generator(bg)
        self._position = position


def check_data_dir(datasource, data_dir="./data"):
    """Raise DataError now, cheaply (folders only), where ``make_sampler`` would fail
    for want of the prepared dataset: before a run spends time on anything else."""
    if datasource == "omniglot":
        list_omniglot_characters(os.path.join(data_dir, OMNIGLOT_DIRNAME))
    elif datasource == "miniimagenet":
        mini = os.path.join(data_dir, MINIIMAGENET_DIRNAME)
        root = os.path.join(mini, "train")
        if not os.path.isdir(root) or not _subdirs(root):
            raise DataError(f"miniImageNet folder {root} has no <wnid> class folders; "
                            f"{_MINI_FIX.format(path=mini)}")


def make_sampler(datasource, data_dir="./data", split="train", num_classes=5, k_support=1,
                 k_query=1, seed=0, *, meta_batch_size=None, cache=True, cache_dir=None,
                 pool_size=0):
    """An EpisodeSampler for ``datasource`` ('omniglot' or 'miniimagenet') and ``split``
    ('train', 'val' or 'test'), reading ``data_dir/omniglot_resized`` or
    ``data_dir/miniImagenet``.  Omniglot gets random rotations and inverted pixels.
    ``meta_batch_size`` is the default number of tasks of ``sample()``."""
    _check_split(split)
    if datasource == "omniglot":
        images, names = load_omniglot_split(os.path.join(data_dir, OMNIGLOT_DIRNAME), split,
                                            cache=cache, cache_dir=cache_dir)
        rotate = invert = True
    elif datasource == "miniimagenet":
        images, names = load_miniimagenet_split(os.path.join(data_dir, MINIIMAGENET_DIRNAME),
                                                split, cache=cache, cache_dir=cache_dir)
        rotate = invert = False
    else:
        raise DataError(f"datasource {datasource!r} is not one of {', '.join(DATASOURCES)}")
    if num_classes > len(names):
        raise DataError(f"num_classes={num_classes} but the {datasource} {split} split in "
                        f"{data_dir} has only {len(names)} classes; lower num_classes")
    return EpisodeSampler(images, num_classes, k_support, k_query, rotate=rotate,
                          invert=invert, seed=seed, class_names=names,
                          meta_batch_size=meta_batch_size, pool_size=pool_size)
