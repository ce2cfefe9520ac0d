"""Benchmark: `kimi-deploy download` (listing, disk check, lock, sha256 verification in the stream) vs plain
`hf download` of the same files from the same local mirror, alone and followed by a separate `sha256sum`
pass. Not a timed test: it prints numbers.

    .venv/bin/python bench/bench_download.py --files 4 --mib 128 --runs 3

Each run downloads into fresh folders; the clients alternate (their order turns every run) so page-cache
and CPU effects hit all of them. Printed, each a median over runs of the baseline's time over ours (> 1:
ours is faster), all measured in the same run:

- ``median_ratio``: against plain `hf download` alone, no verification (goal >= 0.95);
- ``median_ratio_vs_download_and_hash``: against plain `hf download` followed by `sha256sum` over the
  downloaded files, what a node pays for the same guarantee without in-stream hashing (goal >= 1.3).

The `sha256sum` pass reads files the download just wrote, from the page cache: on a real node 595 GB do
not fit in it and the pass reads the disk, so this baseline is the kind one. All clients talk plain HTTP
to `kimi-deploy mirror serve` (no Xet), with the same 8 workers.
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


def _sha256sum_pass(folder: Path, env: dict[str, str]) -> float:
    """Seconds `sha256sum` takes over every downloaded file (what a separate verification pass costs)."""
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts)
    return _timed(["sha256sum", *files], env)


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
        times: dict[str, list[float]] = {"ours": [], "plain": [], "plain_hash": []}
        with MirrorProcess(work / "root", env=env) as m:
            plan = write_plan(work / "plan.json", REPO, [f"{QUANT}/*"], work / "ours")
            ours_cmd = [KD, "download", "--plan", str(plan), "--endpoint", m.url, "--json"]
            plain_env = {**env, "HF_ENDPOINT": m.url}
            for run in range(args.runs):
                order = ["ours", "plain"] if run % 2 == 0 else ["plain", "ours"]
                for name in order:
                    dest = work / name
                    shutil.rmtree(dest, ignore_errors=True)
                    if name == "ours":
                        times["ours"].append(_timed(ours_cmd, env))
                        continue
                    plain_cmd = [HF, "download", REPO, "--include", f"{QUANT}/*", "--local-dir", str(dest)]
                    t = _timed([*plain_cmd, "--max-workers", "8"], plain_env)
                    times["plain"].append(t)
                    times["plain_hash"].append(t + _sha256sum_pass(dest, env))
                o, p, ph = (times[k][-1] for k in ("ours", "plain", "plain_hash"))
                print(
                    f"run {run + 1}: ours {o:.2f}s ({total / o / 1e6:.0f} MB/s), plain hf {p:.2f}s "
                    f"({total / p / 1e6:.0f} MB/s), plain hf + sha256sum {ph:.2f}s "
                    f"({total / ph / 1e6:.0f} MB/s)",
                    flush=True,
                )

        def median_ratio(base: str) -> float:
            return round(statistics.median(b / o for o, b in zip(times["ours"], times[base], strict=True)), 3)

        result = {
            "bytes": total,
            "files": args.files,
            "runs": args.runs,
            "cpus": os.cpu_count(),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "ours_s": [round(t, 3) for t in times["ours"]],
            "plain_s": [round(t, 3) for t in times["plain"]],
            "plain_and_hash_s": [round(t, 3) for t in times["plain_hash"]],
            "median_ratio": median_ratio("plain"),
            "median_ratio_vs_download_and_hash": median_ratio("plain_hash"),
        }
        print(json.dumps(result))
        vs_hash = result["median_ratio_vs_download_and_hash"]
        print(
            f"ours (download + verify) vs plain hf download alone:           "
            f"median_ratio {result['median_ratio']:.3f} (goal >= 0.95)\n"
            f"ours (download + verify) vs plain hf download + sha256sum pass: "
            f"median_ratio_vs_download_and_hash {vs_hash:.3f} (goal >= 1.3)"
        )
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
