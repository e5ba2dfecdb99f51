"""``vpdd bench diffusion``: time and peak memory of the ``fast`` path against the ``reference`` oracle.

Operations, each at the tiny preset's shape and the paper's (B = 20 pre-training, B = 50 fine-tuning):

* ``loss``: ``scheduler.loss`` forward + backward w.r.t. the logits (the network is not part of it);
* ``reverse_step_t50`` / ``reverse_step_t0``: one sampling step with top-0.88 truncation from a state
  x_t ~ q(x_t | x0) at t = 50 (mid-chain) and at t = 0 (the last step, where nearly every token draws
  from the truncated prediction: the sampler's worst case);
* ``q_sample``: forward noising.

Inputs are seeded: x0 uniform over each modality's codes, logits 3·N(0, 1) (float32), t uniform for the
loss. Time is wall-clock (``perf_counter``; CUDA synchronised) over ``--repeats`` calls after one warm-up,
reported as median / p20 / p80, with the process CPU time beside it.

Peak memory is what the call adds on top of its inputs. On CUDA: ``max_memory_allocated`` minus the
allocation before the call. On CPU every case runs in a fresh subprocess with glibc's mmap threshold at
64 KiB (so freed tensors go back to the OS at once); after one warm-up call the peak-RSS counter is reset
(``/proc/self/clear_refs``) and the second call's ``VmHWM`` minus the RSS before it is reported. It counts
every allocation the call makes (torch tensors, autograd buffers, allocator slack), at page granularity.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vpdd.diffusion.layout import TokenLayout
from vpdd.diffusion.scheduler import MaskReplaceScheduler
from vpdd.utils.io import atomic_write_text
from vpdd.utils.machine import machine_record

log = logging.getLogger(__name__)

SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"batch": 8, "n_video_codes": 256, "n_action_bins": 48, "n_video_tokens": 256, "n_action_tokens": 16},
    "paper": {"batch": 20, "n_video_codes": 2048, "n_action_bins": 48, "n_video_tokens": 576, "n_action_tokens": 16},
    "paper-finetune": {
        "batch": 50,
        "n_video_codes": 2048,
        "n_action_bins": 48,
        "n_video_tokens": 576,
        "n_action_tokens": 16,
    },
}
OPS = ("loss", "reverse_step_t50", "reverse_step_t0", "q_sample")
IMPLS = ("reference", "fast")
LOGIT_SCALE = 3.0
TRUNCATION_R = 0.88


def seeded_problem(layout: TokenLayout, batch: int, gen: torch.Generator, device: str):
    """(x0 global indices, video logits, action logits) of both benchmarks: x0 uniform over each modality's
    codes, logits LOGIT_SCALE · N(0, 1) float32, drawn from ``gen`` in that order."""
    kv, ka = layout.n_video_codes, layout.n_action_bins
    x0 = torch.cat(
        [
            torch.randint(0, kv, (batch, layout.n_video_tokens), generator=gen, device=device),
            torch.randint(kv, kv + ka, (batch, layout.n_action_tokens), generator=gen, device=device),
        ],
        dim=1,
    )
    video = LOGIT_SCALE * torch.randn(batch, layout.n_video_tokens, kv, generator=gen, device=device)
    action = LOGIT_SCALE * torch.randn(batch, layout.n_action_tokens, ka, generator=gen, device=device)
    return x0, video, action


def _prepare(shape: str, op: str, impl: str, device: str, seed: int) -> Callable[[], Any]:
    """Seeded inputs for one case; returns the call to measure."""
    sizes = dict(SHAPES[shape])
    batch = sizes.pop("batch")
    layout = TokenLayout(**sizes)
    sched = MaskReplaceScheduler(layout, impl=impl, truncation_r=TRUNCATION_R, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    x0, video, action = seeded_problem(layout, batch, gen, device)
    noiser = MaskReplaceScheduler(layout, device=device)  # identical x_t for both implementations
    if op == "loss":
        t = torch.randint(0, sched.num_timesteps, (batch,), generator=gen, device=device)
        x_t = noiser.add_noise(x0, t, gen)
        pt = torch.full((batch,), 1.0 / sched.num_timesteps, device=device)
        video.requires_grad_(True)
        action.requires_grad_(True)

        def run() -> None:
            loss, _ = sched.loss(video, action, x0, x_t, t, pt, update_history=False)
            loss.backward()
            video.grad = action.grad = None

        return run
    if op == "q_sample":
        t = torch.full((batch,), 50, device=device)
        return lambda: sched.add_noise(x0, t, gen)
    t_value = int(op.rsplit("_t", 1)[1])
    t = torch.full((batch,), t_value, device=device)
    x_t = noiser.add_noise(x0, t, gen)
    return lambda: sched.step(video, action, x_t, t, generator=gen)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_calls(run: Callable[[], Any], device: str, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU milliseconds of ``repeats`` calls after one warm-up (CUDA synchronised)."""
    run()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run()
        _sync(device)
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return wall, cpu


def cuda_peak_mb(run: Callable[[], Any]) -> float:
    """MiB that one call adds to CUDA's ``max_memory_allocated`` on top of what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def _time_case(run: Callable[[], Any], device: str, repeats: int) -> dict[str, float]:
    wall, cpu = timed_calls(run, device, repeats)
    q = statistics.quantiles(wall, n=5, method="inclusive") if len(wall) > 1 else [wall[0]] * 4
    return {
        "median_ms": statistics.median(wall),
        "p20_ms": q[0],
        "p80_ms": q[3],
        "cpu_median_ms": statistics.median(cpu),
        "times_ms": wall,
    }


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _measure_memory_here(case: dict[str, Any]) -> dict[str, Any]:
    """Worker side of the CPU memory measurement (runs in a fresh subprocess)."""
    run = _prepare(case["shape"], case["op"], case["impl"], "cpu", case["seed"])
    run()  # warm-up: one-time allocations (thread pools, autograd) do not count
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    run()
    return {"peak_mb": (_status_kb("VmHWM") - before) / 1024, "memory_method": "VmHWM delta, fresh process"}


def _measure_memory(case: dict[str, Any], threads: int) -> dict[str, Any]:
    if case["device"] == "cuda":
        run = _prepare(case["shape"], case["op"], case["impl"], "cuda", case["seed"])
        run()
        return {"peak_mb": cuda_peak_mb(run), "memory_method": "cuda max_memory_allocated delta"}
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
        "OMP_NUM_THREADS": str(threads),
    }
    cmd = [
        sys.executable,
        "-m",
        "vpdd.diffusion.benchmark",
        "--memory-worker",
        json.dumps(case),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log.warning("memory worker failed for %s: %s", case, proc.stderr.strip()[-2000:])
        return {"peak_mb": None, "memory_method": f"failed: {proc.stderr.strip()[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vpdd bench diffusion", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/diffusion_cpu.json", help="result JSON path")
    parser.add_argument("--shapes", default="tiny,paper,paper-finetune", help=f"comma list of {list(SHAPES)}")
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma list of {list(OPS)}")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma list of reference,fast")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (after one warm-up)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _split(value: str, allowed: tuple[str, ...] | dict, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"vpdd bench diffusion: unknown {what} {bad or value!r}; expected {list(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "--":  # `vpdd bench diffusion -- --shapes tiny` forwards the separator
        argv = argv[1:]
    args = _parse(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_worker is not None:
        print(json.dumps(_measure_memory_here(json.loads(args.memory_worker))))
        return 0
    shapes, ops = _split(args.shapes, SHAPES, "shape"), _split(args.ops, OPS, "op")
    impls = _split(args.impls, IMPLS, "impl")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    threads = torch.get_num_threads()
    machine = machine_record()
    result: dict[str, Any] = {
        "benchmark": "vpdd bench diffusion",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "date": machine.pop("date"),
        "git_commit": machine["git"]["commit"],
        "machine": machine,
        "device": device,
        "torch": torch.__version__,
        "threads": threads,
        "settings": {
            "repeats": args.repeats,
            "warmup": 1,
            "seed": args.seed,
            "logit_scale": LOGIT_SCALE,
            "truncation_r": TRUNCATION_R,
            "memory": "CUDA max_memory_allocated delta"
            if device == "cuda"
            else "VmHWM minus VmRSS around the 2nd call, fresh subprocess, MALLOC_MMAP_THRESHOLD_=65536",
        },
        "load_average_start": list(os.getloadavg()),
        "cases": [],
    }
    for shape in shapes:
        for op in ops:
            rows = {}
            for impl in impls:
                case = {"shape": shape, "op": op, "impl": impl, "device": device, "seed": args.seed}
                log.info("%s %s %s", shape, op, impl)
                row: dict[str, Any] = {"impl": impl, "op": op, "shape": {"name": shape, **SHAPES[shape]}}
                row.update(_time_case(_prepare(shape, op, impl, device, args.seed), device, args.repeats))
                if not args.no_memory:
                    row.update(_measure_memory(case, threads))
                log.info("  median %.1f ms, peak %s MB", row["median_ms"], row.get("peak_mb"))
                rows[impl] = row
                result["cases"].append(row)
            if "fast" in rows and "reference" in rows:
                fast_row, ref_row = rows["fast"], rows["reference"]
                fast_row["speedup"] = ref_row["median_ms"] / fast_row["median_ms"]
                fast_row["cpu_speedup"] = ref_row["cpu_median_ms"] / max(fast_row["cpu_median_ms"], 1e-6)
                if fast_row.get("peak_mb") and ref_row.get("peak_mb"):
                    fast_row["memory_ratio"] = ref_row["peak_mb"] / fast_row["peak_mb"]
                result.setdefault("summary", []).append(
                    {
                        "shape": shape,
                        "op": op,
                        "speedup": round(fast_row["speedup"], 1),
                        "memory_ratio": round(fast_row["memory_ratio"], 1) if "memory_ratio" in fast_row else None,
                        "target_10x_met": fast_row["speedup"] >= 10 and fast_row.get("memory_ratio", 0) >= 10,
                    }
                )
    result["load_average_end"] = list(os.getloadavg())
    out = Path(args.out)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
