"""Helpers shared by the data preparation scripts: errors, warnings, interrupt-safe writes."""
import os
import re
import sys

# Temporary files are named .<final name>.tmp-<pid> in the output folder.
TMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)$")


class InputError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


def warn(msg):
    print("warning: " + msg, file=sys.stderr)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_stale_temps(folder):
    """Remove temporary files left in ``folder`` by runs that are no longer alive."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        m = TMP_PATTERN.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue  # possibly a concurrent run writing right now
        try:
            os.remove(os.path.join(folder, name))
            removed += 1
        except OSError:
            pass
    return removed


def save_atomic(im, path, fmt):
    """Save PIL image ``im`` to ``path``: written to a temporary name, then renamed, so a
    half-written file never carries the final name."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}")
    try:
        im.save(tmp, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
