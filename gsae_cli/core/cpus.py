"""How many CPU threads this process may use, so that processes sharing a machine divide it.

torch starts as many intra-op threads as the machine has cores in every process; two such
processes on 2 cores ran ~10x slower each instead of 2x (threads spin waiting for each other).
`threads=N` sets the count; by default it is this process's share of the cores it may run on:
cores // local processes, where the local process count comes from torchrun (LOCAL_WORLD_SIZE)
or from a launcher that runs several gsae processes at once (GSAE_LOCAL_PROCS, which
sweeps/frontier.sh sets with JOBS=N).
"""

from __future__ import annotations

import os

import torch

_DEFAULT = torch.get_num_threads()  # torch's own choice (physical cores), read before any change


def available_cores() -> int:
    try:
        affinity = len(os.sched_getaffinity(0))  # respects taskset / cgroup cpusets
    except AttributeError:  # macOS
        affinity = os.cpu_count() or 1
    if "LOCAL_WORLD_SIZE" in os.environ:
        # torchrun sets OMP_NUM_THREADS=1 in every worker, so torch's own count says 1: not the
        # user's choice, and not the machine; divide what the process may run on instead
        return max(1, affinity)
    return max(1, min(_DEFAULT, affinity))


def local_processes() -> int:
    for name in ("GSAE_LOCAL_PROCS", "LOCAL_WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def thread_share(threads: int | None) -> int:
    return threads if threads else max(1, available_cores() // local_processes())


def use_thread_share(threads: int | None) -> int:
    """Set torch's intra-op threads (and zarr's codec threads) to this process's share."""
    n = thread_share(threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    import zarr

    zarr.config.set({"threading.max_workers": n})
    return n
