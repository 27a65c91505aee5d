"""data/prepare_omniglot.py on the real Omniglot archives."""
import io
import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import OMNIGLOT_ZIPS, REPO_ROOT, load_data_script

SCRIPT = REPO_ROOT / "data" / "prepare_omniglot.py"


@pytest.fixture(scope="module")
def prep():
    return load_data_script("prepare_omniglot")


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def png_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and p.parent.parent.parent == root)


def subset_zip(src, dest, alphabets):
    """A zip holding only some alphabets of an official archive (same member paths)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            parts = info.filename.split("/")
            if len(parts) > 1 and parts[1] in alphabets:
                zout.writestr(info, zin.read(info))
    return dest


def test_full_set_layout(omniglot_prepared):
    root, s = omniglot_prepared.omniglot_dir, omniglot_prepared.summary
    assert (s["alphabets"], s["characters"], s["images"]) == (50, 1623, 32460)
    assert (s["written"], s["skipped"], s["unreadable"], s["ignored"]) == (32460, 0, 0, 0)
    alphabets = list(root.iterdir())  # exactly the original's layout: alphabets only
    assert len(alphabets) == 50 and all(d.is_dir() for d in alphabets)
    characters = [c for a in alphabets for c in a.iterdir() if c.is_dir()]
    assert len(characters) == 1623
    expected = {}
    for z in OMNIGLOT_ZIPS:  # independent count from the archives
        with zipfile.ZipFile(z) as zf:
            for n in zf.namelist():
                if n.endswith(".png"):
                    _, a, c, f = n.split("/")
                    expected[f"{a}/{c}/{f}"] = True
    for c in characters:
        files = [f for f in c.iterdir()]
        assert len(files) == 20, c
    got = {str(p.relative_to(root)) for p in png_files(root)}
    assert got == set(expected)
    assert "[prepare_omniglot] 2000/32460 images" in omniglot_prepared.log


def test_images_are_28x28_single_channel(omniglot_prepared):
    modes = set()
    for p in png_files(omniglot_prepared.omniglot_dir):
        with Image.open(p) as im:  # header only
            assert im.size == (28, 28), p
            assert im.format == "PNG"
            modes.add(im.mode)
    assert modes == {"1"}  # binary, as the original's files


def test_pixels_are_the_originals_pil_call(omniglot_prepared):
    """LANCZOS on mode '1' is NEAREST in Pillow: the outputs are binary, equal to a
    NEAREST resize of the source, and to the original's exact call."""
    rng = random.Random(0)
    root = omniglot_prepared.omniglot_dir
    for z in OMNIGLOT_ZIPS:
        with zipfile.ZipFile(z) as zf:
            names = [n for n in zf.namelist() if n.endswith(".png")]
            for n in rng.sample(names, 100):
                src = Image.open(io.BytesIO(zf.read(n)))
                assert src.mode == "1" and src.size == (105, 105)
                _, a, c, f = n.split("/")
                out = np.array(Image.open(root / a / c / f).convert("L"))
                nearest = np.array(src.convert("L").resize((28, 28), Image.NEAREST))
                original = np.array(src.resize((28, 28), resample=Image.LANCZOS).convert("L"))
                np.testing.assert_array_equal(out, nearest)
                np.testing.assert_array_equal(out, original)
                assert set(np.unique(out)) <= {0, 255}


def test_rerun_is_a_noop(omniglot_prepared, prep):
    root = omniglot_prepared.omniglot_dir
    before = {p: p.stat().st_mtime_ns for p in png_files(root)}
    s = prep.prepare([str(p) for p in OMNIGLOT_ZIPS], str(root), log=io.StringIO())
    assert (s["written"], s["skipped"], s["images"]) == (0, 32460, 32460)
    after = {p: p.stat().st_mtime_ns for p in png_files(root)}
    assert after == before


def test_resume_after_interruption(tmp_path, prep):
    """Outputs deleted and a stale temp file left behind: a rerun completes the set,
    removes the temp file and does not count it.  Also mixes a zip and a folder."""
    z = subset_zip(OMNIGLOT_ZIPS[0], tmp_path / "bg.zip", {"Greek", "Korean"})
    folder = tmp_path / "images_evaluation"
    with zipfile.ZipFile(OMNIGLOT_ZIPS[1]) as zf:
        for n in zf.namelist():
            if n.startswith("images_evaluation/Angelic/") and n.endswith(".png"):
                zf.extract(n, tmp_path)
    out = tmp_path / "out"
    s1 = prep.prepare([str(z), str(folder)], str(out), log=io.StringIO())
    assert (s1["alphabets"], s1["written"]) == (3, s1["images"])
    files = png_files(out)
    assert len(files) == s1["images"] == sum(
        len(list(c.iterdir())) for a in out.iterdir() for c in a.iterdir())
    victims = files[::97]
    reference = {p: p.read_bytes() for p in victims}
    for p in victims:
        p.unlink()
    stale = victims[0].parent / f".{victims[0].name}.tmp-99999999"
    stale.write_bytes(b"half an image")
    s2 = prep.prepare([str(z), str(folder)], str(out), log=io.StringIO())
    assert s2["written"] == len(victims)
    assert s2["skipped"] == len(files) - len(victims)
    assert s2["stale_temps_removed"] == 1 and not stale.exists()
    assert png_files(out) == files
    for p, data in reference.items():
        assert p.read_bytes() == data
    assert not [p for p in out.rglob(".*")]


def test_killed_run_resumes(tmp_path):
    """SIGKILL a real run midway; no output file is left half-written and a rerun
    completes the set."""
    alphabets = {"Angelic", "Atlantean", "Avesta", "Ge_ez", "Keble", "Oriya"}
    z = subset_zip(OMNIGLOT_ZIPS[1], tmp_path / "ev.zip", alphabets)
    with zipfile.ZipFile(z) as zf:
        total = sum(n.endswith(".png") for n in zf.namelist())
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--source", str(z), "--output",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and sum(1 for _ in out.rglob("*.png")) > 300:
            break
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(png_files(out))
    for p in png_files(out):  # whatever is there is complete
        with Image.open(p) as im:
            im.load()
            assert im.size == (28, 28)
    r = run_cli("--source", z, "--output", out)
    assert r.returncode == 0, r.stderr
    assert f"{total} images" in r.stdout
    assert len(png_files(out)) == total
    assert not [p for p in out.rglob(".*")]
    if proc.returncode == -signal.SIGKILL:  # killed midway (not guaranteed on a slow start)
        assert partial < total
        assert f"{total - partial} written, {partial} already done" in r.stdout


@pytest.mark.parametrize("case", ["missing", "not_zip", "no_alphabets", "empty_zip",
                                  "twice", "overlap", "output_inside_source"])
def test_bad_inputs_fail_cleanly(tmp_path, case):
    out = tmp_path / "out"
    if case == "missing":
        args, expect = [tmp_path / "images_background.zip"], "does not exist"
    elif case == "not_zip":
        bad = tmp_path / "images_background.zip"
        bad.write_text("<html>404</html>")
        args, expect = [bad], "neither a zip archive nor a folder"
    elif case == "no_alphabets":
        d = tmp_path / "images_background"
        d.mkdir()
        (d / "0101_01.png").write_bytes(b"x")
        args, expect = [d], "holds no <alphabet>/<character>/*.png images"
    elif case == "empty_zip":
        bad = tmp_path / "e.zip"
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("readme.txt", "hello")
        args, expect = [bad], "holds no <alphabet>/<character>/*.png images"
    elif case == "twice":
        z = subset_zip(OMNIGLOT_ZIPS[0], tmp_path / "bg.zip", {"Greek"})
        args, expect = [z, z], "is given twice"
    elif case == "overlap":
        z = subset_zip(OMNIGLOT_ZIPS[0], tmp_path / "bg.zip", {"Greek"})
        z2 = subset_zip(OMNIGLOT_ZIPS[0], tmp_path / "bg2.zip", {"Greek", "Latin"})
        args, expect = [z, z2], "alphabet 'Greek' is in both"
    else:
        d = tmp_path / "src" / "Greek" / "character01"
        d.mkdir(parents=True)
        Image.new("1", (105, 105)).save(d / "a.png")
        args, expect = [tmp_path / "src"], "inside the source folder"
        out = tmp_path / "src" / "out"
    r = run_cli("--source", *args, "--output", out)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], r.stderr
    assert str(args[0]) in lines[0]


def test_non_images_and_one_set_are_counted_warnings(tmp_path):
    z = subset_zip(OMNIGLOT_ZIPS[0], tmp_path / "bg.zip", {"Greek"})
    with zipfile.ZipFile(z, "a") as zf:
        zf.writestr("images_background/Greek/character01/notes.txt", "not an image")
        zf.writestr("images_background/Greek/character02/broken.png", "not a png")
        zf.writestr("images_background/.DS_Store", "mac")
    out = tmp_path / "out"
    r = run_cli("--source", z, "--output", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "ignored 1 file(s)" in r.stderr and "notes.txt" in r.stderr
    assert "1 file(s) could not be read as images" in r.stderr and "broken.png" in r.stderr
    assert "1 alphabets and 24 characters" in r.stderr and "1623" in r.stderr
    assert "1 character(s) do not have 20 images" not in r.stderr  # character02 still has 20
    assert "Greek" in os.listdir(out)
    assert len(png_files(out)) == 24 * 20
    assert "1 alphabets, 24 characters, 480 images (480 written" in r.stdout


def test_older_layout_is_cleaned(tmp_path, prep, capsys):
    """maml-tf 0.1 wrote split lists and its cache inside omniglot_resized/, where the
    original's loader reads every folder as an alphabet; a rerun removes them (and only
    them: a folder holding anything else stays, with a warning)."""
    z = subset_zip(OMNIGLOT_ZIPS[0], tmp_path / "bg.zip", {"Greek"})
    out = tmp_path / "omniglot_resized"
    prep.prepare([str(z)], str(out), log=io.StringIO())
    (out / "splits").mkdir()
    for s in ("train", "val", "test"):
        (out / "splits" / f"{s}.txt").write_text("Greek/character01\n")
    (out / ".cache").mkdir()
    (out / ".cache" / "omniglot_28x28x1.npz").write_bytes(b"old cache")
    summary = prep.prepare([str(z)], str(out), log=io.StringIO())
    assert sorted(summary["legacy_removed"]) == [".cache", "splits"]
    assert [p.name for p in out.iterdir()] == ["Greek"]
    (out / "notes").mkdir()
    (out / "notes" / "mine.txt").write_text("keep me")
    capsys.readouterr()
    summary = prep.prepare([str(z)], str(out), log=io.StringIO())
    assert summary["legacy_removed"] == [] and (out / "notes" / "mine.txt").is_file()
    assert "holds notes: the original code reads every entry of it as an alphabet" in capsys.readouterr().err
