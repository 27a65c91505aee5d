"""data/prepare_miniimagenet.py on a cut-down miniImageNet in the real layout."""
import csv
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from conftest import MINI_FIXTURE_CLASSES, MINI_FIXTURE_ROWS, REPO_ROOT, load_data_script
from test_safe_pickle import PAYLOADS, wait_absent

SCRIPT = REPO_ROOT / "data" / "prepare_miniimagenet.py"
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def prep():
    return load_data_script("prepare_miniimagenet")


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def assert_clean_error(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    # One error line, last (progress lines may come before it).
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and r.stderr.strip().splitlines()[-1] == errors[0], r.stderr
    for f in fragments:
        assert str(f) in errors[0], (f, errors[0])


def output_files(root):
    """The image files under root (not the loader's hidden .cache, nor temp files)."""
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def expected_jpeg(src):
    """The original proc_images.py recipe, with non-JPEG modes converted to RGB first."""
    im = Image.open(src)
    if im.mode not in ("RGB", "L", "CMYK"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.resize((84, 84), resample=Image.LANCZOS).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def sources(miniimagenet_sources, tmp_path):
    """A private copy of the source layout that a test may damage."""
    root = tmp_path / "src"
    shutil.copytree(miniimagenet_sources.csv_dir, root / "csv")
    shutil.copytree(miniimagenet_sources.images_dir, root / "images")
    return types.SimpleNamespace(csv_dir=root / "csv", images_dir=root / "images",
                                 rows=miniimagenet_sources.rows,
                                 kinds=miniimagenet_sources.kinds)


def test_folder_form_layout_and_pixels(miniimagenet_sources, miniimagenet_data_dir):
    src = miniimagenet_sources
    out = miniimagenet_data_dir / "miniImagenet"
    kinds = set(src.kinds.values())
    assert {"real", "RGB", "L", "CMYK", "RGBA-png", "P-png"} <= kinds
    for split in SPLITS:
        rows = src.rows[split]
        wnids = sorted({w for _, w in rows})
        assert len(wnids) == MINI_FIXTURE_CLASSES
        assert sorted(p.name for p in (out / split).iterdir()) == wnids
        for name, wnid in rows:
            path = out / split / wnid / name
            assert path.is_file(), path
            with Image.open(path) as im:
                assert im.format == "JPEG" and im.size == (84, 84)
                kind = src.kinds[name]
                if kind in ("L", "CMYK"):
                    assert im.mode == kind
                elif kind != "real":
                    assert im.mode == "RGB"
            assert path.read_bytes() == expected_jpeg(src.images_dir / name), name
    n = sum(len(r) for r in src.rows.values())
    assert len(output_files(out)) == n == 3 * MINI_FIXTURE_CLASSES * MINI_FIXTURE_ROWS


def test_sources_untouched_and_rerun_is_noop(sources, tmp_path, prep):
    before = digest(sources.images_dir)
    out = tmp_path / "out"
    s1 = prep.prepare_from_csv(str(sources.csv_dir), str(sources.images_dir), str(out),
                               log=io.StringIO())
    n = 3 * MINI_FIXTURE_CLASSES * MINI_FIXTURE_ROWS
    assert (s1["written"], s1["skipped"]) == (n, 0)
    assert s1["classes"] == {s: MINI_FIXTURE_CLASSES for s in SPLITS}
    assert s1["images"] == {s: MINI_FIXTURE_CLASSES * MINI_FIXTURE_ROWS for s in SPLITS}
    assert digest(sources.images_dir) == before
    mtimes = {p: p.stat().st_mtime_ns for p in output_files(out)}
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out)
    assert r.returncode == 0, r.stderr
    assert f"(0 written, {n} already done" in r.stdout
    assert "train 5 classes / 30 images" in r.stdout
    assert "[prepare_miniimagenet]" in r.stderr and "standard miniImageNet split" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in output_files(out)} == mtimes


def test_resume_after_interruption(sources, tmp_path, prep):
    out = tmp_path / "out"
    prep.prepare_from_csv(str(sources.csv_dir), str(sources.images_dir), str(out),
                          log=io.StringIO())
    files = output_files(out)
    victims = files[::7]
    ref = {p: p.read_bytes() for p in victims}
    for p in victims:
        p.unlink()
    stale = victims[0].parent / f".{victims[0].name}.tmp-99999999"
    stale.write_bytes(b"\xff\xd8 truncated")
    s = prep.prepare_from_csv(str(sources.csv_dir), str(sources.images_dir), str(out),
                              log=io.StringIO())
    assert (s["written"], s["skipped"]) == (len(victims), len(files) - len(victims))
    assert s["stale_temps_removed"] == 1 and not stale.exists()
    assert output_files(out) == files
    assert all(p.read_bytes() == b for p, b in ref.items())


def make_pickles(folder, sources, rng):
    """mini-imagenet-cache-*.pkl for the fixture's classes, with random pixels and
    unsorted indices."""
    folder.mkdir()
    truth = {}
    for split in SPLITS:
        wnids = sorted({w for _, w in sources.rows[split]})
        n = len(wnids) * 4
        data = rng.integers(0, 256, size=(n, 84, 84, 3), dtype=np.uint8)
        order = rng.permutation(n)
        class_dict = {w: [int(i) for i in order[4 * j:4 * j + 4]] for j, w in enumerate(wnids)}
        with open(folder / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f)
        truth[split] = (data, class_dict)
    return truth


def test_pickle_form_is_lossless(sources, tmp_path):
    truth = make_pickles(tmp_path / "pkl", sources, np.random.default_rng(5))
    out = tmp_path / "out"
    r = run_cli("--pickle_dir", tmp_path / "pkl", "--output", out)
    assert r.returncode == 0, r.stderr
    assert "60 written" in r.stdout
    for split, (data, class_dict) in truth.items():
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(class_dict)
        for wnid, idx in class_dict.items():
            names = sorted(p.name for p in (out / split / wnid).iterdir())
            assert names == sorted(f"{wnid}_{i:05d}.png" for i in idx)
            for i in idx:
                with Image.open(out / split / wnid / f"{wnid}_{i:05d}.png") as im:
                    assert im.format == "PNG" and im.mode == "RGB"
                    np.testing.assert_array_equal(np.array(im), data[i])
    r = run_cli("--pickle_dir", tmp_path / "pkl", "--output", out)
    assert r.returncode == 0 and "(0 written, 60 already done" in r.stdout


def test_missing_csv(sources, tmp_path):
    (sources.csv_dir / "val.csv").unlink()
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", tmp_path / "out")
    assert_clean_error(r, sources.csv_dir / "val.csv", "not found")


def test_bad_csv_header(sources, tmp_path):
    (sources.csv_dir / "test.csv").write_text("name;class\nx;y\n")
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", tmp_path / "out")
    assert_clean_error(r, "test.csv", "expected 'filename,label'")


def test_missing_images(sources, tmp_path):
    gone = [sources.rows["val"][3][0], sources.rows["test"][0][0]]
    for name in gone:
        (sources.images_dir / name).unlink()
    out = tmp_path / "out"
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out)
    assert_clean_error(r, "2 image(s) named in the CSV files are not in", sources.images_dir,
                       *gone, "--allow_missing")
    assert not out.exists()  # checked before anything is written
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out, "--allow_missing")
    assert r.returncode == 0, r.stderr
    assert "left out 2 image(s)" in r.stderr and gone[0] in r.stderr
    assert "2 missing" in r.stdout
    assert len(output_files(out)) == 3 * MINI_FIXTURE_CLASSES * MINI_FIXTURE_ROWS - 2


def test_non_image_file(sources, tmp_path):
    name = sources.rows["train"][2][0]
    (sources.images_dir / name).write_text("this is not a JPEG")
    out = tmp_path / "out"
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out)
    assert_clean_error(r, "1 file(s) are not readable images", name)
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out, "--allow_missing")
    assert r.returncode == 0 and "left out 1 unreadable file(s)" in r.stderr
    assert "1 unreadable" in r.stdout


def test_images_dir_missing_and_args(sources, tmp_path):
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", tmp_path / "nope",
                "--output", tmp_path / "out")
    assert_clean_error(r, tmp_path / "nope", "is not a folder")
    r = run_cli("--csv_dir", sources.csv_dir, "--output", tmp_path / "out")
    assert_clean_error(r, "--images_dir")


@pytest.mark.parametrize("case", ["keys", "shape", "dtype", "index", "not_pickle", "missing"])
def test_bad_pickles(sources, tmp_path, case):
    folder = tmp_path / "pkl"
    make_pickles(folder, sources, np.random.default_rng(0))
    target = folder / "mini-imagenet-cache-val.pkl"
    good = pickle.loads(target.read_bytes())
    if case == "keys":
        bad, expect = {"images": good["image_data"], "labels": good["class_dict"]}, \
            "expected a dict with keys 'image_data' and 'class_dict'"
    elif case == "shape":
        bad, expect = dict(good, image_data=good["image_data"][:, :80]), "shape (N, 84, 84, 3)"
    elif case == "dtype":
        bad, expect = dict(good, image_data=good["image_data"].astype(np.float32)), "uint8"
    elif case == "index":
        cd = dict(good["class_dict"])
        cd[next(iter(cd))] = [0, 10 ** 6]
        bad, expect = dict(good, class_dict=cd), "row indices"
    if case == "not_pickle":
        target.write_text("not a pickle")
        expect = "cannot unpickle"
    elif case == "missing":
        target.unlink()
        expect = "not found"
    else:
        target.write_bytes(pickle.dumps(bad))
    r = run_cli("--pickle_dir", folder, "--output", tmp_path / "out")
    assert_clean_error(r, target, expect)


def test_csv_names_case_and_duplicates(sources, tmp_path):
    # Images stored with an upper-case extension are still found.
    name = sources.rows["train"][1][0]
    shutil.move(sources.images_dir / name, sources.images_dir / name.replace(".jpg", ".JPG"))
    out = tmp_path / "out"
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out)
    assert r.returncode == 0, r.stderr
    # A class listed in two splits is refused.
    with open(sources.csv_dir / "val.csv", "a", newline="") as f:
        csv.writer(f, lineterminator="\n").writerow(sources.rows["train"][0])
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out)
    assert_clean_error(r, "listed twice")
    (sources.csv_dir / "val.csv").write_text(
        "filename,label\n" + "".join(f"{n},{w}\n" for n, w in sources.rows["val"])
        + f"n0000000000000001.jpg,{sources.rows['train'][0][1]}\n")
    r = run_cli("--csv_dir", sources.csv_dir, "--images_dir", sources.images_dir,
                "--output", out)
    assert_clean_error(r, f"class {sources.rows['train'][0][1]} is in both train.csv and val.csv")


# ------------------------------------------------- pickles from third-party mirrors

def assert_pngs_match(out, truth):
    for split, (data, class_dict) in truth.items():
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(class_dict)
        for wnid, idx in class_dict.items():
            names = sorted(p.name for p in (out / split / wnid).iterdir())
            assert names == sorted(f"{wnid}_{i:05d}.png" for i in idx)
            for i in idx:
                with Image.open(out / split / wnid / f"{wnid}_{i:05d}.png") as im:
                    assert im.format == "PNG" and im.mode == "RGB"
                    np.testing.assert_array_equal(np.array(im), data[i])


@pytest.mark.parametrize("protocol", sorted({2, pickle.DEFAULT_PROTOCOL,
                                             pickle.HIGHEST_PROTOCOL}))
def test_pickle_form_protocols_through_safe_loader(sources, tmp_path, protocol):
    """Caches as the mirrors lay them out (a dict of a uint8 array and lists), written
    with protocol 2 and the default one, convert as before."""
    folder = tmp_path / "pkl"
    truth = make_pickles(folder, sources, np.random.default_rng(11))
    for split, (data, class_dict) in truth.items():
        (folder / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(
            {"image_data": data, "class_dict": class_dict}, protocol=protocol))
    out = tmp_path / "out"
    r = run_cli("--pickle_dir", folder, "--output", out)
    assert r.returncode == 0, r.stderr
    assert "60 written" in r.stdout
    assert_pngs_match(out, truth)


def importable_env():
    """The environment with tests/ importable, so that plain pickle can load the test
    suite's own class: the refusal, not an ImportError, must be what stops it."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO_ROOT / "tests")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def run_cli_importable(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=importable_env())


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_crafted_pickle_is_refused(sources, tmp_path, payload):
    folder = tmp_path / "pkl"
    truth = make_pickles(folder, sources, np.random.default_rng(0))
    make, name = PAYLOADS[payload]
    marker = tmp_path / "planted"
    data, class_dict = truth["test"]
    # The last split: train and val are valid, and must not have been written.
    target = folder / "mini-imagenet-cache-test.pkl"
    target.write_bytes(pickle.dumps(
        {"image_data": data, "class_dict": class_dict, "note": make(marker)}))
    # Control: plain pickle.load of this file does run the payload.
    c = subprocess.run([sys.executable, "-c", "import pickle, subprocess, sys; "
                        "x = pickle.load(open(sys.argv[1], 'rb'))['note']; "
                        "isinstance(x, subprocess.Popen) and x.wait()", str(target)],
                       capture_output=True, text=True, timeout=300, env=importable_env())
    assert c.returncode == 0 and marker.exists(), c.stderr
    marker.unlink()
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("already here")
    r = run_cli_importable("--pickle_dir", folder, "--output", out)
    assert_clean_error(r, target, f"refused: it asks for global {name},")
    assert wait_absent(marker)
    assert sorted(out.rglob("*")) == [out / "keep.txt"]


def test_truncated_pickle(sources, tmp_path):
    folder = tmp_path / "pkl"
    make_pickles(folder, sources, np.random.default_rng(0))
    target = folder / "mini-imagenet-cache-val.pkl"
    blob = target.read_bytes()
    target.write_bytes(blob[:len(blob) // 2])
    out = tmp_path / "out"
    r = run_cli("--pickle_dir", folder, "--output", out)
    assert_clean_error(r, target, "truncated or corrupt pickle", "download the file again")
    assert not out.exists()
