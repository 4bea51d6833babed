"""Decide whether scripts/setup_env.sh may skip a step: a stamp of the step's inputs.

setup_env.sh has two slow steps: the pip installs (about 20 s even when everything is
already there) and the build of the C++ extension (minutes). Each writes a stamp into
.venv/ after it succeeded: a JSON map from each input (a file's path, a named value) to
its SHA-256. The next call skips the step when every input hashes the same and every
required output exists, and otherwise says which input changed.

    python scripts/setup_stamp.py check .venv/build.stamp --files csrc setup.py \\
        --values torch_spec=torch==2.13.0 --require 'torch_ntk/_C*.so'
    python scripts/setup_stamp.py write .venv/build.stamp --files ... --values ...

``check`` exits 0 when the step can be skipped, 1 (with the reason on stdout) when it
must run. Folders given to --files count with every file under them (sorted; caches
and compiled objects excluded). Only the standard library: it runs with .venv's
Python before anything is installed.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import sys

_SKIP_SUFFIXES = (".pyc", ".o", ".so")
_SKIP_DIRS = {"__pycache__", ".git"}


def _files(paths: list[str]) -> list[str]:
    out: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
                out += [os.path.join(root, n) for n in sorted(names)
                        if not n.endswith(_SKIP_SUFFIXES)]
        else:
            out.append(path)
    return out


def digest(files: list[str], values: list[str]) -> dict[str, str]:
    """The stamp: every input file's and value's SHA-256 (a missing file counts as such)."""
    stamp: dict[str, str] = {}
    for path in _files(files):
        try:
            with open(path, "rb") as f:
                stamp[f"file:{path}"] = hashlib.sha256(f.read()).hexdigest()
        except FileNotFoundError:
            stamp[f"file:{path}"] = "missing"
    for item in values:
        name, _, value = item.partition("=")
        stamp[f"value:{name}"] = hashlib.sha256(value.encode()).hexdigest()
    return stamp


def stale_reason(stamp_path: str, stamp: dict[str, str], require: list[str]) -> str | None:
    """None when the stamp at ``stamp_path`` equals ``stamp`` and every ``require`` glob
    matches a file; otherwise why the step must run."""
    try:
        with open(stamp_path) as f:
            old = json.load(f)
    except FileNotFoundError:
        return "first run"
    except (OSError, ValueError):
        return f"{stamp_path} is unreadable"
    for pattern in require:
        if not glob.glob(pattern):
            return f"{pattern} is missing"
    changed = sorted(k.split(":", 1)[1] for k in set(old) | set(stamp)
                     if old.get(k) != stamp.get(k))
    if not changed:
        return None
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    return f"changed: {shown}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("check", "write"))
    parser.add_argument("stamp", help="the stamp file, e.g. .venv/build.stamp")
    parser.add_argument("--files", nargs="*", default=[], help="input files or folders")
    parser.add_argument("--values", nargs="*", default=[], help="named inputs NAME=VALUE")
    parser.add_argument("--require", nargs="*", default=[],
                        help="globs of outputs that must exist for a skip")
    args = parser.parse_args(argv)
    stamp = digest(args.files, args.values)
    if args.action == "write":
        tmp = args.stamp + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stamp, f, indent=0, sort_keys=True)
        os.replace(tmp, args.stamp)
        return 0
    reason = stale_reason(args.stamp, stamp, args.require)
    if reason is None:
        return 0
    print(reason)
    return 1


if __name__ == "__main__":
    sys.exit(main())
