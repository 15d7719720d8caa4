"""Stress check (not collected by pytest): sweeps with a concurrent `ssmscope ingest` loop end like a clean sweep.

    .venv/bin/python tests/stress_concurrent_ingest.py --spec smoke --trials 5 --ingests 30 --workers 2

Runs the spec once cleanly, then `--trials` times with a loop of up to `--ingests` `ssmscope ingest`
processes beside the sweep (each a separate process, as a user's shell loop would start them), and
prints, per trial, the sweep's exit code, what the ingests returned, and whether the store's row counts
equal the clean sweep's. Exit code 0 only when every trial matched.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import duckdb

CLI = [sys.executable, "-m", "ssmscope.runs.cli.main"]


def counts(db: Path) -> tuple[int, int, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM probes), "
                           "(SELECT count(*) FROM losses)").fetchone()
    finally:
        con.close()


def sweep(spec: str, db: Path, workers: int) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "sweep", spec, "--db", str(db), "--device", "cpu", "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def trial(spec: str, db: Path, workers: int, ingests: int) -> tuple[int, Counter, str]:
    """(sweep exit code, ingest outcomes, sweep output)."""
    proc = sweep(spec, db, workers)
    outcomes: Counter = Counter()
    while proc.poll() is None and sum(outcomes.values()) < ingests:
        done = subprocess.run([*CLI, "ingest", "--db", str(db), "--wait", "5"], capture_output=True, text=True)
        text = done.stdout + done.stderr
        if "Traceback" in text:
            outcomes["traceback"] += 1
            print(text, file=sys.stderr)
        elif done.returncode == 0:
            outcomes["quarantined" if "quarantined" in text else "ok"] += 1
        elif "does not exist" in text:
            outcomes["before the store existed"] += 1
        elif "being written" in text or "open for reading" in text:
            outcomes["locked (one line)"] += 1
        else:
            outcomes[f"exit {done.returncode}: {text.strip()[:80]}"] += 1
        time.sleep(0.2)
    out, _ = proc.communicate()
    return proc.returncode, outcomes, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="smoke")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--ingests", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ssmscope-stress-"))
    try:
        t0 = time.time()
        clean = sweep(args.spec, root / "clean" / "store.duckdb", args.workers)
        out, _ = clean.communicate()
        if clean.returncode != 0:
            print(out)
            return 1
        expected = counts(root / "clean" / "store.duckdb")
        print(f"clean sweep of {args.spec}: runs, probe rows, loss rows = {expected} ({time.time() - t0:.0f} s)")
        matched = 0
        for i in range(1, args.trials + 1):
            t0 = time.time()
            db = root / f"trial{i}" / "store.duckdb"
            code, outcomes, out = trial(args.spec, db, args.workers, args.ingests)
            got = counts(db) if db.exists() else None
            quarantine = db.parent / f"{db.name}.shards" / ".quarantine"
            ok = code == 0 and got == expected and not quarantine.exists() and "traceback" not in outcomes
            matched += ok
            print(f"trial {i}: sweep exit {code}; {sum(outcomes.values())} concurrent ingests {dict(outcomes)}; "
                  f"counts {got} {'==' if got == expected else '!='} clean; {'OK' if ok else 'FAILED'} "
                  f"({time.time() - t0:.0f} s)")
            if not ok:
                print(out)
        print(f"{matched} of {args.trials} trials ended with the clean sweep's row counts")
        return 0 if matched == args.trials else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
