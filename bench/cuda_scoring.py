"""Exact top-k scoring on a torch device (``STREAMREC_TORCH_DEVICE``), as the worker's batch
ranking does it: 1,000 users against catalogues of 1M and 10M items of 64 dimensions, each
user excluding 20 seen items, top-100.

For each catalogue it prints (milliseconds, median of ``--repeats`` after one warm-up):

- ``path_ms``: ``top_k_rows_by_product`` on the device, the worker's call: the item table
  goes up to the device, each chunk of users is one product and one top-k there, and the
  survivors are ordered on the CPU;
- ``upload_ms``: the item table's copy to the device alone (part of ``path_ms``);
- ``resident_fp32_ms`` / ``resident_bf16_ms``: product and top-k alone with the table
  already on the device, in float32 and in bfloat16 (information: the worker scores in
  float32);
- ``same_lists``: the share of users (the first 50) whose device list equals the CPU
  path's list, and ``recall_at_k`` against it.

    python -m bench.cuda_scoring                      # cuda, 1M and 10M items
    python -m bench.cuda_scoring --device cpu --items 1000000 --repeats 1   # the CPU path

Needs only numpy and torch (with CUDA for ``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from online_models._arrays import IdIndex
from online_models.embeddings_ranking import _DEVICE_CHUNK_CELLS, top_k_rows_by_product


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Median wall milliseconds of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(n_items: int, n_users: int, dim: int, k: int, device: torch.device, repeats: int,
            check_users: int, seed: int = 0, device_path: bool | None = None) -> dict:
    """One catalogue's figures (see the module's docstring); ``device_path``: take the
    device path even on the CPU (a check of this script without a GPU)."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randn(n_items, dim, generator=gen) * 0.1
    bias = torch.randn(n_items, generator=gen) * 0.01
    reps = (torch.randn(n_users, dim, generator=gen) * 0.1).numpy()
    index = IdIndex()
    for row in range(n_items):
        index.add(f"i{row}")
    users = [f"u{j}" for j in range(n_users)]
    position = {u: j for j, u in enumerate(users)}
    rng = np.random.default_rng(seed)
    exclude = {u: {f"i{r}" for r in rng.integers(0, n_items, 20).tolist()} for u in users}

    def represent(chunk):
        return reps[[position[u] for u in chunk]]

    on_device = device if (device.type != "cpu" if device_path is None else device_path) else None
    result = {"items": n_items, "users": n_users, "dim": dim, "k": k, "device": str(device)}
    rows = None

    def path():
        nonlocal rows
        rows, _ = top_k_rows_by_product(items, bias, represent, index, users, k, exclude, on_device)

    result["path_ms"] = _timed(path, device, repeats)
    if on_device is not None:
        result["upload_ms"] = _timed(lambda: items.to(device), device, repeats)
        items_on, bias_on = items.to(device), bias.to(device)
        reps_on = torch.from_numpy(reps).to(device)
        step = max(1, _DEVICE_CHUNK_CELLS // n_items)  # the worker's chunks

        def resident(table, user_vectors, add):
            for start in range(0, n_users, step):
                torch.topk(torch.addmm(add, user_vectors[start : start + step], table.T), k, dim=1)

        result["resident_fp32_ms"] = _timed(lambda: resident(items_on, reps_on, bias_on), device, repeats)
        half = items_on.bfloat16(), reps_on.bfloat16(), bias_on.bfloat16()
        result["resident_bf16_ms"] = _timed(lambda: resident(*half), device, repeats)
        del items_on, bias_on, reps_on, half
        checked = users[:check_users]
        cpu_rows, _ = top_k_rows_by_product(items, bias, represent, index, checked, k, exclude)
        same = [np.array_equal(a, b) for a, b in zip(rows[: len(checked)], cpu_rows)]
        hits = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(rows[: len(checked)], cpu_rows)]
        result["same_lists"] = float(np.mean(same))
        result["recall_at_k"] = float(np.mean(hits))
        result["gpu"] = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check-users", type=int, default=50)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []
    for n_items in args.items:
        r = measure(n_items, args.users, args.dim, args.k, device, args.repeats, args.check_users)
        print(json.dumps(r), flush=True)
        results.append(r)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
