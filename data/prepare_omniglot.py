#!/usr/bin/env python
"""Resize the official Omniglot archives to the 28x28 images MAML trains on.

Usage (from the repository root)::

    python data/prepare_omniglot.py \
        --source images_background.zip images_evaluation.zip \
        --output data/omniglot_resized

``--source`` takes the two official archives (https://github.com/brendenlake/omniglot,
folder ``python/``) or the folders they unpack to, in any mix.  Both sets are merged
into ``OUTPUT/<alphabet>/<character>/<image>.png`` (50 alphabets, 1623 characters,
20 images each when both sets are given).  ``--output`` defaults to the
``omniglot_resized`` folder next to this script (``data/omniglot_resized``), which is
where ``maml_tf`` looks by default.

Each image is made with exactly the call of the original ``resize_images.py``::

    Image.open(src).resize((28, 28), resample=Image.LANCZOS)

and saved as PNG.  The official PNGs are 1-bit (PIL mode '1'), and for mode '1'
images Pillow ignores the requested filter and resizes with NEAREST, so the images
the original MAML results were obtained with are binary (0/255).  This script keeps
that behaviour on purpose and does NOT convert to 'L' first (which would give
anti-aliased grey levels, i.e. different data).

The script is idempotent and safe to interrupt: every image is written to a hidden
temporary file in its destination folder and renamed into place with os.replace, so an
existing output file is always complete and a rerun skips it (``--force`` rewrites).
Temporary files left by a killed run are removed on the next run.  The output holds
exactly the original's layout (only ``<alphabet>/<character>/*.png``): the original's
loader reads every entry of it as an alphabet, so maml-tf keeps its split lists and
decoded-image cache beside it (``omniglot_splits/``, ``.cache/``).

Exit status: 0 on success (possibly with warnings), 2 on bad input, 130 if interrupted.
"""
import argparse
import io
import os
import sys
import time
import zipfile

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, SCRIPT_DIR)
from _preparing import InputError, remove_stale_temps, save_atomic, warn  # noqa: E402
DEFAULT_OUTPUT = os.path.join(SCRIPT_DIR, "omniglot_resized")

IMAGE_SIZE = (28, 28)
EXPECTED_ALPHABETS = 50
EXPECTED_CHARACTERS = 1623
EXPECTED_IMAGES_PER_CHARACTER = 20
PROGRESS_EVERY = 2000
IMAGE_EXTENSIONS = (".png",)
# Temporary files: ".<final name>.tmp-<pid>" in the destination folder.
SOURCE_HINT = ("pass the official images_background.zip and images_evaluation.zip "
               "(https://github.com/brendenlake/omniglot, folder python/) or the folders "
               "they unpack to")


def _is_hidden_or_meta(parts):
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


class _Scan:
    """What was found in the sources: images keyed by (alphabet, character, filename)."""

    def __init__(self):
        self.images = {}  # (alphabet, character, filename) -> (source, reader)
        self.alphabet_source = {}  # alphabet -> source it came from
        self.ignored = []  # non-image files or files outside the layout


def _add_image(scan, source, alphabet, character, filename, reader):
    first = scan.alphabet_source.setdefault(alphabet, source)
    if first != source:
        raise InputError(
            f"alphabet '{alphabet}' is in both {first} and {source}; pass each official "
            f"Omniglot set once")
    key = (alphabet, character, filename)
    if key in scan.images:
        raise InputError(
            f"{source} holds {alphabet}/{character}/{filename} twice (in two folders); "
            f"pass images_background and images_evaluation separately")
    scan.images[key] = (source, reader)


def _classify(scan, source, parts, reader):
    """Register one file given its path components relative to the source root."""
    if _is_hidden_or_meta(parts):
        return
    name = parts[-1]
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        scan.ignored.append(os.path.join(source, *parts))
        return
    if len(parts) < 3:
        # An image that is not inside <alphabet>/<character>/.
        scan.ignored.append(os.path.join(source, *parts))
        return
    alphabet, character = parts[-3], parts[-2]
    _add_image(scan, source, alphabet, character, name, reader)


def _scan_zip(scan, path):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"cannot read {path} as a zip archive ({exc}); {SOURCE_HINT}")
    count = len(scan.images)
    for info in zf.infolist():
        if info.is_dir():
            continue
        parts = [p for p in info.filename.split("/") if p]
        _classify(scan, path, parts, (zf, info.filename))
    if len(scan.images) == count:
        raise InputError(f"{path} holds no <alphabet>/<character>/*.png images; {SOURCE_HINT}")


def _scan_folder(scan, path, output):
    out_abs = os.path.abspath(output)
    src_abs = os.path.abspath(path)
    if out_abs == src_abs or out_abs.startswith(src_abs + os.sep):
        raise InputError(f"--output {output} is inside the source folder {path}; write the "
                         f"resized images to another folder (e.g. data/omniglot_resized)")
    count = len(scan.images)
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
        rel = os.path.relpath(root, path)
        rel_parts = [] if rel == "." else rel.split(os.sep)
        for name in sorted(files):
            full = os.path.join(root, name)
            _classify(scan, path, rel_parts + [name], full)
    if len(scan.images) == count:
        raise InputError(f"{path} holds no <alphabet>/<character>/*.png images; {SOURCE_HINT}")


def scan_sources(sources, output):
    scan = _Scan()
    seen = set()
    for src in sources:
        real = os.path.realpath(src)
        if real in seen:
            raise InputError(f"--source {src} is given twice; pass each official Omniglot "
                             f"set once")
        seen.add(real)
        if not os.path.exists(src):
            raise InputError(f"--source {src} does not exist; {SOURCE_HINT}")
        if os.path.isdir(src):
            _scan_folder(scan, src, output)
        elif zipfile.is_zipfile(src):
            _scan_zip(scan, src)
        else:
            raise InputError(f"--source {src} is neither a zip archive nor a folder; "
                             f"{SOURCE_HINT}")
    return scan


def _read(reader):
    if isinstance(reader, tuple):
        zf, member = reader
        return zf.read(member)
    with open(reader, "rb") as f:
        return f.read()


def resize_image(data):
    """The original's exact call. Mode '1' sources are resized with NEAREST by Pillow."""
    from PIL import Image
    im = Image.open(io.BytesIO(data))
    return im.resize(IMAGE_SIZE, resample=Image.LANCZOS)


# Written inside the output folder by maml-tf 0.1 (split lists, decoded-image cache); the
# original's loader reads every folder there as an alphabet, so they now live beside it.
LEGACY_ENTRIES = {"splits": ("train.txt", "val.txt", "test.txt"), ".cache": ("omniglot_28x28x1.npz",)}


def remove_legacy_files(output):
    """Remove what maml-tf 0.1 wrote inside ``output`` (only if it holds nothing else);
    returns the names removed."""
    import shutil
    removed = []
    for name, files in LEGACY_ENTRIES.items():
        path = os.path.join(output, name)
        if not os.path.isdir(path):
            continue
        inside = [f for f in os.listdir(path) if not (f.startswith(".") and ".tmp-" in f)]
        if set(inside) <= set(files):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def prepare(sources, output, force=False, log=sys.stderr):
    """Resize all images of ``sources`` into ``output``. Returns a summary dict."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise InputError("Pillow is not installed; install it with: pip install pillow")

    scan = scan_sources(sources, output)
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create --output {output} ({exc.strerror}); choose a "
                         f"writable folder")

    legacy = remove_legacy_files(output)
    keys = sorted(scan.images)
    total = len(keys)
    written = skipped = unreadable = stale = 0
    unreadable_examples = []
    failed = set()
    seen_dirs = set()
    start = time.time()
    for i, key in enumerate(keys, 1):
        alphabet, character, filename = key
        source, reader = scan.images[key]
        out_dir = os.path.join(output, alphabet, character)
        if out_dir not in seen_dirs:
            seen_dirs.add(out_dir)
            try:
                os.makedirs(out_dir, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create {out_dir} ({exc.strerror}); choose a "
                                 f"writable --output")
            stale += remove_stale_temps(out_dir)
        out_path = os.path.join(out_dir, os.path.splitext(filename)[0] + ".png")
        if not force and os.path.exists(out_path):
            skipped += 1
        else:
            try:
                im = resize_image(_read(reader))
            except Exception as exc:  # not an image / corrupt file: counted warning
                unreadable += 1
                failed.add(key)
                if len(unreadable_examples) < 3:
                    unreadable_examples.append(
                        f"{source}: {alphabet}/{character}/{filename} ({type(exc).__name__})")
            else:
                try:
                    save_atomic(im, out_path, "PNG")
                except OSError as exc:
                    raise InputError(f"cannot write {out_path} ({exc.strerror}); choose a "
                                     f"writable --output with free space")
                written += 1
        if i % PROGRESS_EVERY == 0 or i == total:
            print(f"[prepare_omniglot] {i}/{total} images ({written} written, {skipped} "
                  f"already done) {time.time() - start:.1f}s", file=log, flush=True)

    # What the output holds for the images of these sources.
    done = [k for k in keys if k not in failed]
    per_character = {}
    for alphabet, character, _ in done:
        per_character[(alphabet, character)] = per_character.get((alphabet, character), 0) + 1
    alphabets = {a for a, _ in per_character}
    summary = dict(alphabets=len(alphabets), characters=len(per_character), images=len(done),
                   written=written, skipped=skipped, unreadable=unreadable,
                   ignored=len(scan.ignored), stale_temps_removed=stale, output=output,
                   legacy_removed=legacy)

    if scan.ignored:
        warn(f"ignored {len(scan.ignored)} file(s) that are not <alphabet>/<character>/*.png "
              f"images, e.g. {scan.ignored[0]}")
    if unreadable:
        warn(f"{unreadable} file(s) could not be read as images and are missing from the "
              f"output, e.g. {'; '.join(unreadable_examples)}; re-download the archive")
    if (len(alphabets), len(per_character)) != (EXPECTED_ALPHABETS, EXPECTED_CHARACTERS):
        warn(f"the output has {len(alphabets)} alphabets and {len(per_character)} characters "
              f"from these sources; the full Omniglot set has {EXPECTED_ALPHABETS} and "
              f"{EXPECTED_CHARACTERS} (images_background + images_evaluation). Pass both "
              f"archives unless you meant to use one set")
    foreign = sorted(e for e in os.listdir(output) if (e,) not in {(a,) for a in alphabets})
    if foreign:
        warn(f"{output} also holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}: "
             f"the original code reads every entry of it as an alphabet and fails on these; "
             f"move them out")
    odd = sorted(c for c, n in per_character.items() if n != EXPECTED_IMAGES_PER_CHARACTER)
    if odd:
        a, c = odd[0]
        warn(f"{len(odd)} character(s) do not have {EXPECTED_IMAGES_PER_CHARACTER} images, "
              f"e.g. {a}/{c} has {per_character[odd[0]]}")
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Resize the official Omniglot archives to 28x28 PNGs for MAML.")
    parser.add_argument("--source", nargs="+", required=True, metavar="PATH",
                        help="images_background.zip / images_evaluation.zip or their "
                             "extracted folders (both sets are merged)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT,
                        help="output folder (default: omniglot_resized next to this script, "
                             "i.e. data/omniglot_resized)")
    parser.add_argument("--force", action="store_true",
                        help="rewrite images that already exist in the output")
    args = parser.parse_args(argv)
    try:
        s = prepare(args.source, args.output, force=args.force)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"Omniglot ready in {s['output']}: {s['alphabets']} alphabets, {s['characters']} "
          f"characters, {s['images']} images ({s['written']} written, {s['skipped']} already "
          f"done, {s['unreadable']} unreadable, {s['ignored']} non-image files ignored, "
          f"{s['stale_temps_removed']} stale temporary files removed)")
    if s["legacy_removed"]:
        print(f"Removed {', '.join(s['legacy_removed'])} from {s['output']} (written there by an older "
              f"maml-tf; the original code reads every folder there as an alphabet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
