"""The benchmarks' result files: every run of a benchmark appends one record to
``results/benchmarks/<name>.json`` (``$RSGH_RESULTS/benchmarks`` when set), with what it measured and
where: the date (UTC), the commit, the CPU model, the cores, torch's version and the arguments. The
book's *Performance* and *Reproducibility* pages read these files.

A file: ``{"benchmark": NAME, "script": "benchmarks/NAME.py", "records": [RECORD, ...]}``, oldest
first; a record: ``{"date", "commit", "cpu", "cores", "torch", "python", "args", "values", "label",
"note", "source"}``. ``source`` is ``measured`` for a record the script wrote, or says where a
transcribed number came from (numbers measured before the scripts wrote files, copied from the README
of that commit with their CPU and date where the README gave them).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    env = os.environ.get("RSGH_RESULTS")
    return (Path(env).expanduser() if env else ROOT / "results") / "benchmarks"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rsgh", "benchmarks"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def record(name: str, values: dict, args=None, label: str = "", note: str = "") -> Path:
    """Append one record of the benchmark ``name`` to its result file; returns the file."""
    import torch

    path = results_dir() / f"{name}.json"
    doc = json.loads(path.read_text()) if path.exists() else {"benchmark": name, "script": f"benchmarks/{name}.py",
                                                              "records": []}
    doc["records"].append({
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(), "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "python": sys.version.split()[0], "args": vars(args) if args is not None else {},
        "values": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()},
        "label": label, "note": note, "source": "measured",
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    print(f"recorded in {path}")
    return path
