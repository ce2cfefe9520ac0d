"""A Gloo all-reduce between the nodes through torch, reported as bus bandwidth (as nccl-tests does).

    $ python allreduce.py RANK WORLD tcp://HEAD:PORT IFACE SIZE_MIB ITERS
    {"rank": 0, "busbw_gbps": 9.1, "seconds": 0.07, "bytes": 67108864}

Standard library and torch only (no toolkit import): it travels to the other nodes like ``facts`` does and
runs with a python that has torch (the engine's venv). Bus bandwidth = bytes x 2 (n - 1) / n / time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import timedelta


def main(argv: list[str]) -> int:
    rank, world, init, iface, size_mib, iters = argv[0], argv[1], argv[2], argv[3], argv[4], argv[5]
    if iface:
        os.environ["GLOO_SOCKET_IFNAME"] = iface  # the interface the plan names, as the engines use it
    import torch
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=init, rank=int(rank), world_size=int(world), timeout=timedelta(seconds=60)
    )
    n = int(world)
    tensor = torch.ones(int(size_mib) * 1024 * 1024 // 4, dtype=torch.float32)
    dist.all_reduce(tensor)  # warm-up: connections and buffers
    dist.barrier()
    started = time.perf_counter()
    for _ in range(int(iters)):
        dist.all_reduce(tensor)
    seconds = (time.perf_counter() - started) / int(iters)
    size = tensor.numel() * 4
    busbw = size * 2 * (n - 1) / n / seconds * 8 / 1e9
    print(json.dumps({"rank": int(rank), "busbw_gbps": round(busbw, 2), "seconds": seconds, "bytes": size}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
