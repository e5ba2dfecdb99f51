"""``vpdd bench kernels``: the fused Triton kernels against the reference PyTorch maths (and the fallback).

Operations (scheduler level, both modalities: video logits (B, N, K) swept, action logits (B, 16, 48)):

* ``posterior``    ``posterior_log_probs`` (writes (B, N, K+1));
* ``reverse_step`` one sampling step with top-0.88 truncation (indices out);
* ``q_sample``     forward noising (indices in and out);
* ``loss``         the VB loss: ``fwd``, ``bwd`` (backward of a retained graph) and ``full`` (fwd + bwd).

Providers: ``triton`` (kernel_impl=triton), ``torch`` (kernel_impl=torch: the PyTorch references of vpdd_kernels),
``eager`` (impl=reference, the released code's maths) and ``compile`` (the reference function under
``torch.compile(dynamic=False)``, compile and warm-up excluded). GPU timings are
``triton.testing.do_bench(quantiles=[0.5, 0.2, 0.8])`` (L2 flushed before each run); CPU timings are
perf_counter over ``--repeats`` calls. Reported per case: median/p20/p80 ms, ``bytes_min`` (each input
read once, each output written once, kernels.md §4), achieved GB/s, ``frac_roofline`` = GB/s / the
device-to-device copy bandwidth measured in the same run (``y.copy_(x)`` of 2 GiB, read + write),
peak memory added by one call (CUDA ``max_memory_allocated``; not measured on CPU), speedups, and
out-of-memory as a result (``status: "oom"``). Correctness against the fallback is checked first on a
small shape inside the same run.

    vpdd bench kernels                          # GPU: the full sweep -> benchmarks/results/kernels_gpu.json
    vpdd bench kernels --device cpu --quick     # CPU: the fallback against the reference, small shapes
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vpdd.diffusion.benchmark import cuda_peak_mb, seeded_problem, timed_calls
from vpdd.diffusion.layout import TokenLayout
from vpdd.diffusion.scheduler import MaskReplaceScheduler
from vpdd.utils.io import atomic_write_text

log = logging.getLogger(__name__)

OPS = ("posterior", "reverse_step", "q_sample", "loss")
K_SWEEP = (1024, 2048, 8192, 16384)
N_SWEEP = (592, 1152, 2304)
B_SWEEP = (8, 32)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
N_ACTION, K_ACTION = 16, 48
TRUNCATION_R = 0.88
DEFAULT_OUT = Path("benchmarks/results")


def _inputs(b: int, n: int, k: int, dtype: torch.dtype, device: str, seed: int = 0) -> dict[str, Any]:
    layout = TokenLayout(k, K_ACTION, n, N_ACTION)
    g = torch.Generator(device=device).manual_seed(seed)
    x0, zv, za = seeded_problem(layout, b, g, device)
    zv, za = zv.to(dtype), za.to(dtype)
    t = torch.randint(0, 100, (b,), generator=g, device=device)
    noiser = MaskReplaceScheduler(layout, device=device, kernel_impl="torch")
    xt = noiser.add_noise(x0, t, g)
    pt = torch.full((b,), 0.01, device=device)
    return {"layout": layout, "x0": x0, "zv": zv, "za": za, "t": t, "xt": xt, "pt": pt}


def _bytes_min(op: str, mode: str, b: int, n: int, k: int, elt: int) -> int:
    """Minimal HBM traffic of both modalities (kernels.md §4)."""
    total = 0
    for rows, kk in ((b * n, k), (b * N_ACTION, K_ACTION)):
        logits = rows * kk * elt
        if op == "posterior":
            total += logits + rows * (kk + 1) * 4 + rows * 8
        elif op == "reverse_step":
            total += logits + rows * 16
        elif op == "q_sample":
            total += rows * 16
        else:
            total += {"fwd": logits, "bwd": 2 * logits, "full": 2 * logits}[mode]
    return total


def _callables(op: str, provider: str, inp: dict[str, Any], device: str) -> dict[str, Callable[[], Any]]:
    """mode -> zero-argument call (loss: fwd, bwd, full; the others: fwd)."""
    lay = inp["layout"]
    if provider in ("triton", "torch"):
        sched = MaskReplaceScheduler(lay, device=device, kernel_impl=provider, truncation_r=TRUNCATION_R)
        post, step, noise = sched.posterior_log_probs, sched.step, sched.add_noise

        def loss_fn(zv, za):
            return sched.loss(zv, za, inp["x0"], inp["xt"], inp["t"], inp["pt"], update_history=False)[0]
    else:
        ref = MaskReplaceScheduler(lay, device=device, impl="reference").reference
        r = TRUNCATION_R

        def post(zv, za, xt, t):
            return ref.posterior_log_probs(zv, za, xt, t, t - 1)

        def step(zv, za, xt, t):
            return ref.reverse_step(zv, za, xt, t, t - 1, r)

        def noise(x0, t):
            return ref.q_sample(x0, t)

        def loss_fn(zv, za):
            terms = ref.loss_terms(zv, za, inp["x0"], inp["xt"], inp["t"])
            return sum(v.sum() for v in terms.values())

        if provider == "compile":
            post, step, noise, loss_fn = (torch.compile(f, dynamic=False) for f in (post, step, noise, loss_fn))
    zv, za, xt, t, x0 = inp["zv"], inp["za"], inp["xt"], inp["t"], inp["x0"]
    forward_only = {"posterior": lambda: post(zv, za, xt, t), "reverse_step": lambda: step(zv, za, xt, t),
                    "q_sample": lambda: noise(x0, t)}
    if op in forward_only:
        return {"fwd": forward_only[op]}
    lv, la = zv.detach().clone().requires_grad_(), za.detach().clone().requires_grad_()
    state: dict[str, torch.Tensor] = {}

    def fwd():
        state["loss"] = loss_fn(lv, la)
        return state["loss"]

    def bwd():
        lv.grad = la.grad = None
        state["loss"].backward(retain_graph=True)

    def full():
        lv.grad = la.grad = None
        loss_fn(lv, la).backward()

    return {"fwd": fwd, "bwd": bwd, "full": full}


def _time(fn: Callable[[], Any], device: str, repeats: int, warmup_ms: int, rep_ms: int) -> list[float]:
    if device == "cuda":
        from triton.testing import do_bench

        return list(do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8]))
    times = timed_calls(fn, device, repeats)[0]
    q = statistics.quantiles(times, n=10) if len(times) > 1 else times * 9
    return [statistics.median(times), q[1], q[7]]


def _peak_mb(fn: Callable[[], Any], device: str) -> float | None:
    return cuda_peak_mb(fn) if device == "cuda" else None


def copy_bandwidth_gbps(device: str) -> float | None:
    """Device-to-device copy bandwidth (read + write) of a 2 GiB buffer, median of do_bench."""
    if device != "cuda":
        return None
    from triton.testing import do_bench

    x = torch.empty(2**29, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
    return 2 * 2**31 / (ms * 1e-3) / 1e9


def check_correctness(device: str, providers: list[str]) -> dict[str, Any]:
    """Triton (or the fallback) against the reference on a small shape, inside the benchmark run."""
    inp = _inputs(2, 64, 1024, torch.float32, device, seed=1)
    out: dict[str, Any] = {}
    ref = _callables("posterior", "eager", inp, device)["fwd"]().float()
    lay = inp["layout"]
    cls = list(range(lay.n_video_codes)) + [lay.mask_id]
    ref_v = ref[:, cls, : lay.n_video_tokens].permute(0, 2, 1)
    for prov in (p for p in providers if p in ("triton", "torch")):
        got = _callables("posterior", prov, inp, device)["fwd"]()[0]
        out[f"posterior_max_abs_err_{prov}_vs_reference"] = float((got - ref_v).abs().max())
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    providers = args.providers or (["triton", "torch", "eager", "compile"] if device == "cuda" else ["torch", "eager"])
    record: dict[str, Any] = {"device": device, "providers": providers, "truncation_r": TRUNCATION_R}
    try:
        from vpdd.utils.machine import machine_record

        record["machine"] = machine_record()
    except Exception as err:  # noqa: BLE001 - a missing field must not lose the measurements
        record["machine"] = {"error": repr(err)}
    if device == "cuda":
        import triton

        record["gpu_name"] = torch.cuda.get_device_name(0)
        record["versions"] = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
    record["copy_bandwidth_GBps"] = bw = copy_bandwidth_gbps(device)
    record["correctness"] = check_correctness(device, providers)
    results = []
    for k, n, b, dname in itertools.product(args.K, args.N, args.B, args.dtypes):
        dtype = DTYPES[dname]
        try:
            inp = _inputs(b, n, k, dtype, device)
        except torch.OutOfMemoryError:
            results.append({"B": b, "N": n, "K": k, "dtype": dname, "status": "oom", "stage": "inputs"})
            continue
        for op in args.ops:
            for prov in providers:
                base = {"op": op, "provider": prov, "B": b, "N": n, "K": k, "dtype": dname, "layout": "BNK"}
                try:
                    calls = _callables(op, prov, inp, device)
                    for mode, fn in calls.items():
                        if mode == "bwd":
                            calls["fwd"]()
                        peak = _peak_mb(fn, device)
                        med, p20, p80 = _time(fn, device, args.repeats, args.warmup_ms, args.rep_ms)
                        nbytes = _bytes_min(op, mode, b, n, k, torch.finfo(dtype).bits // 8)
                        gbps = nbytes / (med * 1e-3) / 1e9
                        row = {**base, "mode": mode, "status": "ok", "ms_p50": med, "ms_p20": p20, "ms_p80": p80}
                        row.update({"bytes_min": nbytes, "GBps": gbps, "peak_MB": peak})
                        row["frac_roofline"] = gbps / bw if bw else None
                        results.append(row)
                        log.info("%s", row)
                except torch.OutOfMemoryError:
                    results.append({**base, "status": "oom"})
                    log.info("%s %s B=%d N=%d K=%d %s: out of memory", op, prov, b, n, k, dname)
                finally:
                    if device == "cuda":
                        torch.cuda.empty_cache()
        del inp
    _add_speedups(results)
    record["results"] = results
    return record


def _add_speedups(results: list[dict[str, Any]]) -> None:
    key = lambda r: (r["op"], r.get("mode"), r["B"], r["N"], r["K"], r["dtype"])  # noqa: E731
    best = {(key(r), r["provider"]): r["ms_p50"] for r in results if r.get("status") == "ok"}
    fast_prov = "triton" if any(p == "triton" for _, p in best) else "torch"
    for r in results:
        if r.get("status") != "ok" or r["provider"] != fast_prov:
            continue
        for other in ("eager", "compile", "torch"):
            t_other = best.get((key(r), other))
            if t_other is not None and other != fast_prov:
                r[f"speedup_vs_{other}"] = t_other / r["ms_p50"]


def plot(record: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot written")
        return False
    rows = [r for r in record["results"] if r.get("status") == "ok" and "speedup_vs_eager" in r]
    fig, ax = plt.subplots(figsize=(8, 5))
    for (op, mode, b, n, dt), grp in itertools.groupby(
        sorted(rows, key=lambda r: (r["op"], r["mode"], r["B"], r["N"], r["dtype"], r["K"])),
        key=lambda r: (r["op"], r["mode"], r["B"], r["N"], r["dtype"]),
    ):
        grp = list(grp)
        ax.plot(
            [r["K"] for r in grp], [r["speedup_vs_eager"] for r in grp], marker="o", label=f"{op}/{mode} B{b} N{n} {dt}"
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("K (video codes)")
    ax.set_ylabel(f"speedup of {rows[0]['provider'] if rows else 'kernel'} vs eager reference (median)")
    ax.set_title(f"vpdd kernels on {record.get('gpu_name', record['device'])}")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vpdd bench kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    p.add_argument("--providers", nargs="+", choices=("triton", "torch", "eager", "compile"))
    p.add_argument("--K", nargs="+", type=int, default=None)
    p.add_argument("--N", nargs="+", type=int, default=None)
    p.add_argument("--B", nargs="+", type=int, default=None)
    p.add_argument("--dtypes", nargs="+", choices=tuple(DTYPES), default=None)
    p.add_argument("--quick", action="store_true", help="CPU-sized shapes (K 1024 2048, N 592, B 2, fp32)")
    p.add_argument("--repeats", type=int, default=5, help="CPU: timed calls per case")
    p.add_argument("--warmup-ms", type=int, default=25)
    p.add_argument("--rep-ms", type=int, default=200)
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default benchmarks/results/kernels_<device>.json)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    small = args.quick or args.device == "cpu"
    args.K = args.K or ([1024, 2048] if small else list(K_SWEEP))
    args.N = args.N or ([592] if small else list(N_SWEEP))
    args.B = args.B or ([2] if small else list(B_SWEEP))
    args.dtypes = args.dtypes or (["fp32"] if small else list(DTYPES))
    out = args.out or DEFAULT_OUT / f"kernels_{'gpu' if args.device == 'cuda' else 'cpu'}.json"
    record = run(args)
    record["command"] = "vpdd bench kernels " + " ".join(argv or [])
    atomic_write_text(out, json.dumps(record, indent=1))
    log.info("wrote %s", out)
    if plot(record, out.with_suffix(".png")):
        log.info("wrote %s", out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
