"""Readiness-detection overhead of `kimi-deploy up` on the demo model (`make bench-up`). Not a timed test.

The overhead is the time from the engine's first 200 on /health to the `up` command returning. An independent
poller in this process asks /health every few milliseconds while `up` runs as a subprocess, and records
when it first sees 200; the difference with the moment `up` exits is what the user waits for nothing. Both
instants are CLOCK_MONOTONIC in this process. Goal: median <= 0.3 s (`up` polls with backoff capped at
250 ms).

    .venv/bin/python bench/bench_up.py --runs 7            # prepares .demo/bench/ first
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from deploy.demo.run import prepare_deployment
from deploy.planning.contract import load_plan
from deploy.serving import launch, readiness

GOAL_S = 0.3
POLL_S = 0.005


class Poller(threading.Thread):
    """GETs /health every POLL_S until the first 200; ``first_ok`` is that instant (time.monotonic)."""

    def __init__(self, host: str, port: int, path: str) -> None:
        super().__init__(daemon=True, name="health-poller")
        self.host, self.port, self.path = host, port, path
        self.first_ok: float | None = None
        self.first_ok_unix = 0.0
        self.probes = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
            try:
                conn.request("GET", self.path, headers={"Connection": "close"})
                status = conn.getresponse().status
            except OSError:
                status = 0
            finally:
                conn.close()
            self.probes += 1
            if status == 200:
                self.first_ok = time.monotonic()
                self.first_ok_unix = time.time()
                return
            time.sleep(POLL_S)


def one_run(workdir: Path, host: str, port: int, path: str, env: dict[str, str]) -> dict[str, float]:
    poller = Poller(host, port, path)
    poller.start()
    t0 = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "deploy",
            "up",
            "--plan",
            str(workdir / "plan.json"),
            "--rendered",
            str(workdir / "rendered"),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    returned = time.monotonic()
    poller.join(timeout=5)
    poller.halt.set()
    if done.returncode != 0 or poller.first_ok is None:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"`kimi-deploy up` failed (exit {done.returncode}); see above")
    pidfile = json.loads((workdir / "state" / "run" / f"{target_node(workdir)}.json").read_text())
    # wall-clock stamps split the overhead: how late `up` saw the 200, and how long it took to return after
    detect = float(pidfile.get("ready_at_unix", poller.first_ok_unix)) - poller.first_ok_unix
    return {
        "ready_s": poller.first_ok - t0,
        "overhead_s": returned - poller.first_ok,
        "detect_s": detect,
        "probes": poller.probes,
    }


def target_node(workdir: Path) -> str:
    return launch.target_for(load_plan(workdir / "plan.json"), workdir / "rendered").node


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=Path(".demo") / "bench")
    ap.add_argument("--json", type=Path, help="also write the runs and the median here")
    args = ap.parse_args(argv)

    print(f"== preparing the demo deployment in {args.workdir} (stages up to render)")
    with socket.socket() as s:
        # a free port of our own, so a server on the plan's port (another demo) does not get in the way
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    workdir = prepare_deployment(args.workdir, port=free)
    plan = load_plan(workdir / "plan.json")
    target = launch.target_for(plan, workdir / "rendered")
    url = http.client.urlsplit(target.url)
    host, port, path = url.hostname or "127.0.0.1", int(url.port or 80), url.path
    env = {**os.environ, "KIMI_DEPLOY_STATE_DIR": str(workdir / "state")}
    launch.down(state_dir=workdir / "state", grace_s=10)

    print(
        f"\n== {args.runs} runs of `kimi-deploy up` ({target.engine} at {target.base_url}); poller every "
        f"{POLL_S * 1000:g} ms"
    )
    runs = []
    try:
        for i in range(args.runs):
            r = one_run(workdir, host, port, path, env)
            runs.append(r)
            print(
                f"  run {i + 1}: engine ready after {r['ready_s']:.2f} s, `up` returned "
                f"{r['overhead_s'] * 1000:.0f} ms later (saw the 200 after {r['detect_s'] * 1000:.0f} ms; "
                f"poller: {r['probes']:.0f} probes)"
            )
            launch.down(state_dir=workdir / "state", grace_s=10)
            if readiness.probe(target.url, target.engine).state != readiness.REFUSED:
                raise SystemExit("the engine still answers after `down`")
    finally:
        launch.down(state_dir=workdir / "state", grace_s=10)

    overheads = [r["overhead_s"] for r in runs]
    median = statistics.median(overheads)
    verdict = "met" if median <= GOAL_S else "NOT met"
    print(
        f"\nreadiness-detection overhead: median {median * 1000:.0f} ms, min {min(overheads) * 1000:.0f} ms, "
        f"max {max(overheads) * 1000:.0f} ms over {len(runs)} runs; goal <= {GOAL_S * 1000:.0f} ms: {verdict}"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"runs": runs, "median_overhead_s": median, "goal_s": GOAL_S}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
