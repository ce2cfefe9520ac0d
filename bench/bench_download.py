"""Benchmark: `kimi-deploy download` (listing, disk check, lock, sha256 verification) vs plain `hf download`
of the same files from the same local mirror. Not a timed test: it prints numbers.

    .venv/bin/python bench/bench_download.py --files 4 --mib 128 --runs 3

Each run downloads into a fresh folder; the two clients alternate so page-cache and CPU effects hit both.
The ratio is our throughput over the plain client's (goal: >= 0.95). Both clients talk plain HTTP to
`kimi-deploy mirror serve` (no Xet), with the same 8 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.fake_repos import KD, MirrorProcess, kd_env, stage, write_plan  # noqa: E402

HF = str(ROOT / ".venv" / "bin" / "hf")
REPO = "bench/Kimi-K2.5-GGUF"
QUANT = "UD-TQ1_0"


def _make_repo(src: Path, files: int, mib: int) -> None:
    rng = random.Random(0)
    for k in range(1, files + 1):
        p = src / QUANT / f"Kimi-K2.5-{QUANT}-{k:05d}-of-{files:05d}.gguf"
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as fh:
            for _ in range(mib):
                fh.write(rng.randbytes(1024 * 1024))
    (src / "README.md").write_text("bench\n")


def _timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--mib", type=int, default=128, help="size of each file in MiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        src = work / "src"
        _make_repo(src, args.files, args.mib)
        stage(src, REPO, work / "root")
        total = sum(p.stat().st_size for p in (src / QUANT).iterdir())
        (work / "hf-home").mkdir(exist_ok=True)
        env = kd_env(hf_home=work / "hf-home", HF_HUB_DISABLE_TELEMETRY="1")
        ours_t, plain_t = [], []
        with MirrorProcess(work / "root", env=env) as m:
            plan = write_plan(work / "plan.json", REPO, [f"{QUANT}/*"], work / "ours")
            for run in range(args.runs):
                for name in ("ours", "plain"):
                    dest = work / name
                    shutil.rmtree(dest, ignore_errors=True)
                    if name == "ours":
                        ours_t.append(
                            _timed([KD, "download", "--plan", str(plan), "--endpoint", m.url, "--json"], env)
                        )
                    else:
                        plain_t.append(
                            _timed(
                                [
                                    HF,
                                    "download",
                                    REPO,
                                    "--include",
                                    f"{QUANT}/*",
                                    "--local-dir",
                                    str(dest),
                                    "--max-workers",
                                    "8",
                                ],
                                {**env, "HF_ENDPOINT": m.url},
                            )
                        )
                print(
                    f"run {run + 1}: ours {ours_t[-1]:.2f}s ({total / ours_t[-1] / 1e6:.0f} MB/s), "
                    f"plain hf {plain_t[-1]:.2f}s ({total / plain_t[-1] / 1e6:.0f} MB/s)",
                    flush=True,
                )
        ratios = [p / o for o, p in zip(ours_t, plain_t, strict=True)]
        result = {
            "bytes": total,
            "files": args.files,
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "ours_s": [round(t, 3) for t in ours_t],
            "plain_s": [round(t, 3) for t in plain_t],
            "median_ratio": round(statistics.median(ratios), 3),
        }
        print(json.dumps(result))
        print(
            f"median throughput ratio (ours / plain hf download): {result['median_ratio']:.3f} (goal >= 0.95)"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
