"""Time the README's two commands in a fresh clone; write docs/figures/setup_times.json.

Clones this repository's committed HEAD into a temporary folder (no .venv, no build) and
runs, in order:

1. ``bash scripts/demo.sh --out OUT``   the first call: set-up (venv, pip, the build), demo
2. ``bash scripts/demo.sh --help``      the second call: the set-up must skip pip and the
                                        build (then the demo's help, no demo run)
3. ``bash scripts/test.sh``             the test suite (its set-up skips everything too)

Each call's output is read line by line as it comes; the set-up ends at setup_env.sh's
last line ("torch_ntk X on torch Y"), so each call splits into set-up seconds and work
seconds. Recorded with the machine (CPU model, cores, x86-64 level flags), the load
average before and after each call, and whether pip and the build ran or were skipped.
``scripts/render_docs.py`` renders the JSON into README.md (table ``setup_times``).

    python scripts/time_commands.py                   # about 10-20 minutes on 2 cores
    python scripts/time_commands.py --skip-tests      # set-up and demo only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = "docs/figures/setup_times.json"
SETUP_DONE = re.compile(r"^torch_ntk \S+ on torch ")


def machine() -> dict:
    """CPU model, cores, the AVX flags that pick a clone, compiler and Python."""
    cpu, flags = platform.processor(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.processor()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        cxx = subprocess.run(["c++", "--version"], capture_output=True, text=True).stdout
        cxx = cxx.splitlines()[0] if cxx else "unknown"
    except OSError:
        cxx = "none"
    return {"cpu": cpu, "cores": os.cpu_count(),
            "avx_flags": sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f")),
            "compiler": cxx, "python": platform.python_version(), "os": platform.platform()}


def loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return []


def timed_call(command: list[str], cwd: str, log) -> dict:
    """Run ``command``; seconds until setup_env.sh's last line and after it."""
    load_before = loadavg()
    start = time.monotonic()
    setup_s, lines = None, []
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:
        log.write(line)
        log.flush()
        lines.append(line.rstrip("\n"))
        if setup_s is None and SETUP_DONE.match(line):
            setup_s = time.monotonic() - start
    rc = proc.wait()
    total = time.monotonic() - start
    text = "\n".join(lines)
    return {
        "command": " ".join(command), "rc": rc, "total_s": round(total, 1),
        "setup_s": None if setup_s is None else round(setup_s, 1),
        "work_s": None if setup_s is None else round(total - setup_s, 1),
        "pip": "skipped" if "pip skipped" in text else
               ("installed" if "installing packages" in text else "unknown"),
        "build": "skipped" if "build skipped" in text else
                 ("built" if "building the C++ extension" in text else "unknown"),
        "build_s": _seconds(r"setup_env: built in (\d+) s", text),
        "load_before": load_before, "load_after": loadavg(),
        "last_line": lines[-1] if lines else "",
    }


def _seconds(pattern: str, text: str):
    match = re.search(pattern, text)
    return int(match.group(1)) if match else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-tests", action="store_true", help="time set-up and demo only")
    parser.add_argument("--output", default=os.path.join(ROOT, OUTPUT))
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone")
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    work = tempfile.mkdtemp(prefix="torch_ntk_time_")
    clone = os.path.join(work, "repo")
    subprocess.run(["git", "clone", "-q", ROOT, clone], check=True)
    calls = [["bash", "scripts/demo.sh", "--out", os.path.join(work, "demo")],
             ["bash", "scripts/demo.sh", "--help"]]
    if not args.skip_tests:
        calls.append(["bash", "scripts/test.sh"])
    results = []
    log_path = os.path.join(work, "time_commands.log")
    print(f"time_commands: fresh clone of {commit} in {clone}; log {log_path}", flush=True)
    try:
        with open(log_path, "w") as log:
            for command in calls:
                print(f"time_commands: {' '.join(command)} ...", flush=True)
                result = timed_call(command, clone, log)
                results.append(result)
                _write(args.output, commit, results)  # each call as it finishes
                print(f"time_commands:   {result['total_s']} s (set-up {result['setup_s']} s, "
                      f"pip {result['pip']}, build {result['build']}), rc {result['rc']}, "
                      f"load {result['load_before']} -> {result['load_after']}", flush=True)
                if result["rc"] != 0:
                    print(f"time_commands: failed; see {log_path}", file=sys.stderr)
                    args.keep = True
                    break
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    _write(args.output, commit, results)
    print(f"time_commands: wrote {args.output}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


def _write(path: str, commit: str, results: list) -> None:
    payload = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "commit": commit, "machine": machine(), "calls": results}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
        f.write("\n")


def _minutes(seconds) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def render_setup_times(payload: dict) -> str:
    """The README table: each call's set-up and work time, what was skipped, the load."""
    m = payload["machine"]
    rows = ["| # | command (one fresh clone, in this order) | set-up | pip | C++ build | "
            "then | load before → after |",
            "|---:|---|---:|---|---|---|---|"]
    for k, call in enumerate(payload["calls"], 1):
        command = re.sub(r" --out \S+", "", call["command"])
        then = ("the test suite" if "test.sh" in command else
                "the help text" if "--help" in command else "the demo")
        build = call["build"] + (f" in {_minutes(call['build_s'])}" if call.get("build_s") else "")
        load = (f"{call['load_before'][0]:.1f} → {call['load_after'][0]:.1f}"
                if call["load_before"] and call["load_after"] else "—")
        work = _minutes(call["work_s"]) if call["rc"] == 0 else "stopped (see below)"
        rows.append(f"| {k} | `{command}` | {_minutes(call['setup_s'])} | {call['pip']} | "
                    f"{build} | {then}: {work} | {load} |")
    loaded = any(c["load_before"] and max(c["load_before"][0], c["load_after"][0]) > 2
                 for c in payload["calls"])
    rows.append("")
    rows.append(f"Measured {payload['date']} (commit {payload['commit']}) on {m['cpu']}, "
                f"{m['cores']} cores ({', '.join(m['avx_flags'])}), {m['compiler']}, Python "
                f"{m['python']}" + (", **under load** (1-minute load average above 2: other "
                                    "jobs shared the cores)" if loaded else "") +
                "; load is the 1-minute average. `python scripts/time_commands.py` reruns it.")
    for k, call in enumerate(payload["calls"], 1):
        if call.get("note"):
            rows.append(f"Call {k}: {call['note']}.")
    if payload.get("rebuild"):
        r = payload["rebuild"]
        rows.append(f"Rebuild after {r['change']} (pip skipped): {_minutes(r['wall_s'])}, load "
                    f"{r['load_before']:.1f} → {r['load_after']:.1f}.")
    if payload.get("note"):
        rows.append(f"Note: {payload['note']}.")
    return "\n\n".join([rows[0] + "\n" + "\n".join(rows[1:rows.index("")]),
                        *rows[rows.index("") + 1:]])

if __name__ == "__main__":
    sys.exit(main())
