"""maml_tf.data.image_data: loading prepared splits and sampling episodes."""
import json
import os
import random
import shutil
import time

import numpy as np
import pytest
from PIL import Image

from maml_tf.data import image_data
from maml_tf.data.image_data import DataError, DataWarning, EpisodeSampler, make_sampler

SPLIT_SIZES = {"train": 1100, "val": 100, "test": 423}


@pytest.fixture(scope="module")
def omniglot_all(omniglot_prepared):
    """All characters, decoded (this also fills the cache the samplers below read)."""
    return image_data.load_omniglot(str(omniglot_prepared.omniglot_dir))


@pytest.fixture(scope="module")
def omniglot_samplers(omniglot_data_dir, omniglot_all):
    return {s: make_sampler("omniglot", str(omniglot_data_dir), s, num_classes=5, k_support=1,
                            k_query=3, seed=7) for s in SPLIT_SIZES}


def rel_characters(root):
    """Independent listing: every <alphabet>/<character> folder holding PNGs."""
    return sorted(f"{p.parent.name}/{p.name}" for p in root.glob("*/*")
                  if p.is_dir() and any(p.glob("*.png")))


# ------------------------------------------------------------------------ Omniglot load

def test_omniglot_decode_matches_the_files(omniglot_prepared, omniglot_all):
    images, names = omniglot_all
    root = omniglot_prepared.omniglot_dir
    assert images.shape == (1623, 20, 28, 28, 1) and images.dtype == np.uint8
    assert names == rel_characters(root)
    assert set(np.unique(images)) == {0, 255}
    for i in random.Random(3).sample(range(len(names)), 40):
        files = sorted((root / names[i]).glob("*.png"))
        for j, f in enumerate(files):
            expected = np.array(Image.open(f).convert("L"))  # PIL: an independent decoder
            np.testing.assert_array_equal(images[i, j, :, :, 0], expected)


def test_omniglot_split(omniglot_prepared, omniglot_samplers):
    root = omniglot_prepared.omniglot_dir
    splits = {s: omniglot_samplers[s].class_names for s in SPLIT_SIZES}
    assert {s: len(v) for s, v in splits.items()} == SPLIT_SIZES
    assert {s: omniglot_samplers[s].images.shape[0] for s in SPLIT_SIZES} == SPLIT_SIZES
    tr, va, te = (set(splits[s]) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    everything = rel_characters(root)
    assert tr | va | te == set(everything)
    # The original's recipe on a sorted listing: random.seed(1); shuffle; [:1100],
    # [1100:1200], [1200:].
    random.seed(1)
    order = list(everything)
    random.shuffle(order)
    assert splits["train"] == order[:1100]
    assert splits["val"] == order[1100:1200]
    assert splits["test"] == order[1200:]
    for s in SPLIT_SIZES:  # recorded next to the data
        assert (root.parent / "omniglot_splits" / f"{s}.txt").read_text().split("\n")[:-1] == splits[s]
    # Nothing of ours inside the dataset folder: the original's loader reads every entry
    # of it as an alphabet.
    assert sorted(p.name for p in root.iterdir()) == sorted({c.split("/")[0] for c in everything})
    # The sampler's images are the split's characters.
    images, names = image_data.load_omniglot(str(root))
    idx = [names.index(c) for c in splits["val"]]
    np.testing.assert_array_equal(omniglot_samplers["val"].images, images[idx])


def _identify(split_images):
    """bytes of an (un-inverted) image -> [(class, image, rotation)], rotations by TF."""
    import tensorflow as tf

    c, p = split_images.shape[:2]
    flat = split_images.reshape((c * p,) + split_images.shape[2:])
    table = {}
    for r in range(4):
        rotated = tf.image.rot90(flat, k=r).numpy()
        for i in range(c * p):
            table.setdefault(rotated[i].tobytes(), []).append((i // p, i % p, r))
    return table


def test_omniglot_episodes(omniglot_samplers):
    n, k, q, t = 5, 1, 3, 64
    sampler = omniglot_samplers["train"]
    (xa, ya, xb, yb), info = sampler.sample_with_info(t)
    assert xa.shape == (t, n * k, 784) and xb.shape == (t, n * q, 784)
    assert ya.shape == (t, n * k, n) and yb.shape == (t, n * q, n)
    for a in (xa, ya, xb, yb):
        assert a.dtype == np.float32
    # Pixels: 1 - x/255 of binary images, exactly (float32 arithmetic as the original).
    x = np.concatenate([xa, xb], axis=1)
    assert x.min() >= 0.0 and x.max() <= 1.0
    u8 = np.round((1.0 - x) * 255.0).astype(np.uint8)
    assert set(np.unique(u8)) == {0, 255}
    np.testing.assert_array_equal(x, np.float32(1.0) - u8.astype(np.float32) / np.float32(255))
    assert x.mean() < 0.3  # strokes (now 1) are the minority: background was inverted to 0
    # Labels: one-hot; k-major order: each block of N examples is a permutation of labels.
    y = np.concatenate([ya, yb], axis=1)
    assert set(np.unique(y)) == {0.0, 1.0} and (y.sum(-1) == 1).all()
    lab = y.argmax(-1)
    for task in lab:
        for block in task.reshape(k + q, n):
            assert sorted(block) == list(range(n))
    # ... a fresh permutation for each sample index k (not one order reused).
    blocks = lab.reshape(t, k + q, n)
    assert (blocks[:, 0] != blocks[:, 1]).any(axis=1).mean() > 0.9
    assert (blocks[:, :, 0] != 0).any()
    assert (np.bincount(ya.argmax(-1).ravel(), minlength=n) == t * k).all()
    assert (np.bincount(yb.argmax(-1).ravel(), minlength=n) == t * q).all()
    # Back to the source characters, independently of what the sampler reports.
    table = _identify(sampler.images)
    rotations_seen = set()
    for ti in range(t):
        images = u8[ti].reshape(-1, 28, 28, 1)
        per_label = {}
        for e in range(n * (k + q)):
            cands = table[images[e].tobytes()]
            label = lab[ti, e]
            mine = (info["classes"][ti, label], info["image_index"][ti, e],
                    info["rotation"][ti, label])
            assert mine in cands  # the sampler's account is right
            per_label.setdefault(label, []).append({(c, r) for c, _, r in cands})
        chosen = []
        for label, sets in per_label.items():
            common = set.intersection(*sets)  # one character, one rotation per label
            assert common, (ti, label)
            chosen.append(info["classes"][ti, label])
            rotations_seen.add(info["rotation"][ti, label])
        assert len(set(chosen)) == n  # N distinct characters
        for label in range(n):  # K+Q distinct images of each character
            idx = info["image_index"][ti][lab[ti] == label]
            assert len(set(idx)) == k + q
    assert rotations_seen == {0, 1, 2, 3}


def test_omniglot_sampling_is_uniform_enough(omniglot_all):
    images = omniglot_all[0][:100]
    s = EpisodeSampler(images, 5, 1, 1, rotate=True, invert=True, seed=0)
    counts = np.zeros(100)
    rot = np.zeros(4)
    first = np.zeros(100)
    for _ in range(20):
        _, info = s.sample_with_info(100)
        np.add.at(counts, info["classes"].ravel(), 1)
        np.add.at(first, info["classes"][:, 0], 1)
        np.add.at(rot, info["rotation"].ravel(), 1)
    assert counts.sum() == 10000 and 60 < counts.min() and counts.max() < 145  # mean 100
    assert (np.abs(rot / rot.sum() - 0.25) < 0.02).all()
    assert first.max() < 45  # label 0 is not tied to low class indices (mean 20)


def test_same_seed_same_tasks_and_state_resume(omniglot_samplers):
    images = omniglot_samplers["test"].images
    make = lambda seed: EpisodeSampler(images, 5, 1, 1, rotate=True, invert=True, seed=seed)
    a, b, c = make(3), make(3), make(4)
    for _ in range(3):
        ba, bb, bc = a.sample(8), b.sample(8), c.sample(8)
        for u, v in zip(ba, bb):
            np.testing.assert_array_equal(u, v)
        assert not np.array_equal(ba[0], bc[0])
    state = a.get_state()
    json.loads(state)  # a JSON string
    expected = [a.sample(8) for _ in range(3)]
    d = make(99)
    d.set_state(state)
    for e in expected:
        for u, v in zip(d.sample(8), e):
            np.testing.assert_array_equal(u, v)
    with pytest.raises(DataError):
        d.set_state('{"format": "something else"}')
    with pytest.raises(DataError):
        d.set_state("not json")


def test_task_pool_is_the_originals_cycled_list():
    """--task_pool: a fixed list of tasks cycled in order (the original's 200000-task
    filename list behind a non-shuffling input queue).  Fixed per pool task: the classes
    with their labels and the K+Q images of each class; redrawn at every use: the
    rotations and the per-sample-index class order (the original's in-graph random ops)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 6, 4, 4, 1), dtype=np.uint8)
    s = EpisodeSampler(images, 3, 1, 1, rotate=True, invert=True, seed=7, pool_size=5,
                       meta_batch_size=2)
    draws = [s.sample_with_info() for _ in range(6)]  # 12 tasks: the pool of 5, cycled
    order = np.concatenate([info["pool_index"] for _, info in draws])
    assert order.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    flat = []
    for (xa, ya, xb, yb), info in draws:
        labels = np.concatenate([ya, yb], 1).argmax(-1)
        for t in range(2):
            pairs = sorted(zip(labels[t].tolist(), info["image_index"][t].tolist()))
            flat.append((info["classes"][t], pairs, info["rotation"][t]))
    for a in range(12):
        for b in range(a + 1, 12):
            if order[a] == order[b]:  # same classes and labels, same images of each class
                np.testing.assert_array_equal(flat[a][0], flat[b][0])
                assert flat[a][1] == flat[b][1]
    assert len({tuple(f[0]) for f in flat[:5]}) == 5  # five different tasks
    # The per-task draws of pool task 0 are its own generator's, whatever came before.
    classes, idx = s.pool_task(0)
    np.testing.assert_array_equal(flat[0][0], classes)
    # Rotations are redrawn per use (over 3 uses of 5 tasks, 3 classes, not all equal).
    rots = np.array([flat[a][2] for a in range(12) if order[a] == 0])
    assert len(rots) == 3 and not (rots == rots[0]).all()
    # Resume: the state carries the pool position and the redraw generator.
    state = s.get_state()
    nxt = s.sample()
    s2 = EpisodeSampler(images, 3, 1, 1, rotate=True, invert=True, seed=7, pool_size=5,
                        meta_batch_size=2)
    s2.set_state(state)
    for a, b in zip(nxt, s2.sample()):
        np.testing.assert_array_equal(a, b)
    # A state of another pool, or of a fresh-task sampler, is refused with a clear error.
    other = EpisodeSampler(images, 3, 1, 1, seed=7, pool_size=6, meta_batch_size=2)
    with pytest.raises(DataError, match="pool of 5 tasks"):
        other.set_state(state)
    fresh = EpisodeSampler(images, 3, 1, 1, seed=7, meta_batch_size=2)
    with pytest.raises(DataError, match="this sampler's is"):
        fresh.set_state(state)
    # A state written before the package layout (module maml_tf.image_data) resumes alike.
    old = json.loads(state)
    assert old["format"] == "maml_tf.data.image_data.EpisodeSampler/pool/1"
    old["format"] = "maml_tf.image_data.EpisodeSampler/pool/1"
    s3 = EpisodeSampler(images, 3, 1, 1, rotate=True, invert=True, seed=7, pool_size=5,
                        meta_batch_size=2)
    s3.set_state(json.dumps(old))
    for a, b in zip(nxt, s3.sample()):
        np.testing.assert_array_equal(a, b)


def test_rot90_is_tf_image_rot90():
    import tensorflow as tf

    x = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)
    for r in range(4):
        np.testing.assert_array_equal(np.rot90(x, r, axes=(1, 2)),
                                      tf.image.rot90(x, k=r).numpy())


def test_default_meta_batch_size_and_errors(omniglot_data_dir, omniglot_samplers):
    s = make_sampler("omniglot", str(omniglot_data_dir), "val", 20, 5, 5, seed=1,
                     meta_batch_size=3)
    xa, ya, xb, yb = s.sample()
    assert xa.shape == (3, 100, 784) and yb.shape == (3, 100, 20)
    with pytest.raises(DataError, match="only 100 classes"):
        make_sampler("omniglot", str(omniglot_data_dir), "val", 101, 1, 1)
    with pytest.raises(DataError, match="have only 20"):
        EpisodeSampler(s.images, 5, 10, 11, rotate=True, invert=True)
    with pytest.raises(DataError, match="datasource"):
        make_sampler("omniglott", str(omniglot_data_dir))
    with pytest.raises(DataError, match="split"):
        make_sampler("omniglot", str(omniglot_data_dir), "validation")
    with pytest.raises(DataError, match="meta_batch_size"):
        omniglot_samplers["val"].sample()


def test_sampling_speed(omniglot_samplers):
    images = omniglot_samplers["train"].images
    s = EpisodeSampler(images, 5, 5, 5, rotate=True, invert=True, seed=0)
    s.sample(32)
    t = time.perf_counter()
    for _ in range(20):
        s.sample(32)
    per_batch = (time.perf_counter() - t) / 20
    assert per_batch < 0.025  # ~2 ms on one core; generous for a busy CI machine
    mini = np.zeros((64, 600, 84, 84, 3), np.uint8)
    m = EpisodeSampler(mini, 5, 1, 15, seed=0)
    m.sample(4)
    t = time.perf_counter()
    for _ in range(5):
        m.sample(4)
    assert (time.perf_counter() - t) / 5 < 0.1  # ~6 ms on one core


# ----------------------------------------------------------------- cache and layout

@pytest.fixture
def small_omniglot(omniglot_prepared, tmp_path):
    """A private 3-alphabet Omniglot folder."""
    root = tmp_path / "omniglot_resized"
    for a in ("Greek", "Korean", "Angelic"):
        shutil.copytree(omniglot_prepared.omniglot_dir / a, root / a)
    return root


def test_cache_is_used_and_rebuilt_when_stale(small_omniglot, monkeypatch):
    calls = []
    real = image_data._decode_files
    monkeypatch.setattr(image_data, "_decode_files",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.warns(DataWarning, match="1623"):
        images, names = image_data.load_omniglot(str(small_omniglot))
    assert len(calls) == 1 and images.shape[1:] == (20, 28, 28, 1)
    cache = small_omniglot.parent / ".cache" / "omniglot_28x28x1.npz"
    assert cache.is_file()
    with pytest.warns(DataWarning):
        again, names2 = image_data.load_omniglot(str(small_omniglot))
    assert len(calls) == 1 and names2 == names
    np.testing.assert_array_equal(again, images)
    # A character removed: the cache is stale and rebuilt.
    shutil.rmtree(small_omniglot / names[0])
    with pytest.warns(DataWarning):
        third, names3 = image_data.load_omniglot(str(small_omniglot))
    assert len(calls) == 2 and names3 == names[1:]
    np.testing.assert_array_equal(third, images[1:])
    # An image replaced: rebuilt, and the new pixels are loaded.
    f = sorted((small_omniglot / names[1]).glob("*.png"))[0]
    Image.new("1", (28, 28), 1).save(f)
    with pytest.warns(DataWarning):
        fourth, _ = image_data.load_omniglot(str(small_omniglot))
    assert len(calls) == 3 and (fourth[0, 0] == 255).all()
    assert not list((small_omniglot.parent / ".cache").glob(".*"))  # no temp files left
    assert sorted(p.name for p in small_omniglot.iterdir()) == ["Angelic", "Greek", "Korean"]


@pytest.mark.filterwarnings("ignore:.*the full Omniglot set has 1623")
def test_cache_falls_back_when_not_writable(small_omniglot, tmp_path, monkeypatch):
    (small_omniglot.parent / ".cache").write_text("a file where the cache folder would go")
    monkeypatch.setenv("MAML_TF_CACHE_DIR", str(tmp_path / "fallback"))
    with pytest.warns(DataWarning):
        image_data.load_omniglot(str(small_omniglot))
    assert list((tmp_path / "fallback").glob("*/omniglot_28x28x1.npz"))
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("MAML_TF_CACHE_DIR", str(blocker / "sub"))
    with pytest.warns(DataWarning, match="could not write the decoded-image cache"):
        images, _ = image_data.load_omniglot(str(small_omniglot))
    assert images.shape[1:] == (20, 28, 28, 1)
    assert not list(blocker.parent.glob("blocker*/**"))  # nothing written there
    # Split lists that cannot be written are skipped with a warning.
    (small_omniglot.parent / "omniglot_splits").write_text("not a folder")
    with pytest.warns(DataWarning, match="could not write the split lists"):
        image_data.load_omniglot_split(str(small_omniglot), "train", cache=False)


def test_omniglot_layout_errors(tmp_path, small_omniglot):
    for check in (make_sampler, image_data.check_data_dir):  # check_data_dir: main.py's early check
        with pytest.raises(DataError, match="does not exist.*prepare_omniglot.py"):
            check("omniglot", str(tmp_path / "nowhere"))
    empty = tmp_path / "empty" / "omniglot_resized"
    empty.mkdir(parents=True)
    for check in (make_sampler, image_data.check_data_dir):
        with pytest.raises(DataError, match="no <alphabet>/<character> folders"):
            check("omniglot", str(tmp_path / "empty"))
    image_data.check_data_dir("omniglot", str(small_omniglot.parent))  # a prepared folder passes
    for where in ("nowhere", "empty"):
        with pytest.raises(DataError, match="miniImagenet/train has no <wnid> class folders.*prepare_miniimagenet"):
            image_data.check_data_dir("miniimagenet", str(tmp_path / where))
    # Unresized images (e.g. the raw archive extracted in place).
    raw = tmp_path / "raw" / "omniglot_resized" / "Greek" / "character01"
    raw.mkdir(parents=True)
    for i in range(20):
        Image.new("1", (105, 105), 1).save(raw / f"{i:02d}.png")
    with pytest.raises(DataError, match="is 105x105 pixels, expected 28x28.*prepare_omniglot"):
        image_data.load_omniglot(str(raw.parent.parent), cache=False)
    # A character with missing images.
    victim = sorted(small_omniglot.glob("Greek/*"))[0]
    for f in sorted(victim.glob("*.png"))[:3]:
        f.unlink()
    with pytest.raises(DataError, match="different numbers of images"):
        image_data.load_omniglot(str(small_omniglot), cache=False)
    # Not an image at all.
    bad = tmp_path / "bad" / "A" / "c"
    bad.mkdir(parents=True)
    (bad / "x.png").write_text("not a png")
    with pytest.raises(DataError, match="cannot decode .*x.png"):
        image_data.load_omniglot(str(tmp_path / "bad"), cache=False)


# ------------------------------------------------------------------------ miniImageNet

def test_miniimagenet_episodes(miniimagenet_data_dir):
    import tensorflow as tf

    root = miniimagenet_data_dir / "miniImagenet"
    with pytest.warns(DataWarning, match="standard miniImageNet train split has 64"):
        s = make_sampler("miniimagenet", str(miniimagenet_data_dir), "train", num_classes=5,
                         k_support=1, k_query=2, seed=0)
    assert s.images.shape == (5, 6, 84, 84, 3)
    assert s.class_names == sorted(p.name for p in (root / "train").iterdir())
    assert (miniimagenet_data_dir / ".cache" / "miniimagenet_train_84x84x3.npz").is_file()
    (xa, ya, xb, yb), info = s.sample_with_info(4)
    assert xa.shape == (4, 5, 21168) and xb.shape == (4, 10, 21168)
    assert ya.shape == (4, 5, 5) and yb.shape == (4, 10, 5)
    x = np.concatenate([xa, xb], 1)
    lab = np.concatenate([ya, yb], 1).argmax(-1)
    for t in range(4):
        for e in range(15):
            wnid = s.class_names[info["classes"][t, lab[t, e]]]
            f = sorted((root / "train" / wnid).iterdir())[info["image_index"][t, e]]
            expected = tf.io.decode_jpeg(f.read_bytes(), channels=3).numpy()
            expected = expected.astype(np.float32).reshape(-1) / np.float32(255)
            np.testing.assert_array_equal(x[t, e], expected)  # no rotation, no inversion
    assert (info["rotation"] == 0).all()
    for split in ("val", "test"):
        with pytest.warns(DataWarning):
            assert make_sampler("miniimagenet", str(miniimagenet_data_dir), split).images.shape \
                == (5, 6, 84, 84, 3)
    with pytest.raises(DataError, match="only 5 classes"):
        with pytest.warns(DataWarning):
            make_sampler("miniimagenet", str(miniimagenet_data_dir), "val", num_classes=6)


def test_miniimagenet_png_and_errors(tmp_path):
    root = tmp_path / "miniImagenet"
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (3, 4, 84, 84, 3), dtype=np.uint8)
    for c in range(3):
        d = root / "test" / f"n0000000{c}"
        d.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(truth[c, i]).save(d / f"n0000000{c}_{i:05d}.png")
    with pytest.warns(DataWarning):
        images, names = image_data.load_miniimagenet_split(str(root), "test")
    np.testing.assert_array_equal(images, truth)  # PNG is lossless
    assert names == ["n00000000", "n00000001", "n00000002"]
    with pytest.raises(DataError, match="miniImagenet/train does not exist.*prepare_miniimagenet"):
        image_data.load_miniimagenet_split(str(root), "train")
    wrong = root / "test" / "n00000001" / "n00000001_00002.png"
    Image.fromarray(truth[0, 0]).resize((90, 84)).save(wrong)
    with pytest.raises(DataError, match="n00000001_00002.png is 90x84 pixels, expected 84x84"):
        image_data.load_miniimagenet_split(str(root), "test", cache=False)
    os.remove(root / "test" / "n00000001" / "n00000001_00000.png")
    with pytest.raises(DataError, match="different numbers of images"):
        image_data.load_miniimagenet_split(str(root), "test", cache=False)
