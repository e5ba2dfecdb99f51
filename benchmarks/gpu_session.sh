#!/usr/bin/env bash
# One GPU lease's checks of the Triton kernels, as a single command (device time is scarce):
#   1. the kernel tests compiled on the GPU (tests/kernels, the `gpu`-marked large shapes included);
#   2. `vpdd bench kernels` without torch.compile over a K x B x dtype grid;
#   3. the same with torch.compile on a smaller grid (each shape recompiles).
# Runs from the repository root with the machine's own python3 (torch + triton there); the repo is put on
# PYTHONPATH instead of installed. Results go to $OUT (default benchmarks/results/gpu_session).
# The one test that trains through the full stack (Meta-World, CLIP) is deselected: those packages are not
# on the GPU image.
set -u
OUT=${OUT:-benchmarks/results/gpu_session}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:$PWD/kernels" PYTHONUNBUFFERED=1
unset VPDD_KERNEL_IMPL
PY=${PY:-python3}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.total,temperature.gpu --format=csv \
  | tee "$OUT/nvidia_smi.csv"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== kernel tests (compiled) =="
timeout "${TEST_TIMEOUT:-240}" $PY -m pytest tests/kernels -q -p no:cacheprovider -n "${XDIST:-6}" \
  --deselect "tests/kernels/test_dispatch.py::test_the_kernel_impl_config_reaches_training_loading_and_the_records" \
  --junitxml="$OUT/kernel_tests.xml" 2>&1 | tee "$OUT/kernel_tests.log" | tail -n 40
echo "tests rc ${PIPESTATUS[0]}"

echo "== benchmark: triton / torch fallback / eager reference =="
timeout "${BENCH_TIMEOUT:-170}" $PY -m vpdd.diffusion.kernel_benchmark --device cuda --providers triton torch eager \
  --K 1024 2048 8192 16384 --N 1152 --B 8 32 --dtypes fp32 bf16 --rep-ms 100 \
  --out "$OUT/kernels_gpu.json" > "$OUT/bench.log" 2>&1
echo "bench rc $?"; tail -n 5 "$OUT/bench.log"

echo "== benchmark: with torch.compile =="
timeout "${COMPILE_TIMEOUT:-150}" $PY -m vpdd.diffusion.kernel_benchmark --device cuda \
  --providers triton eager compile --K 2048 16384 --N 1152 --B 8 --dtypes fp32 --rep-ms 100 \
  --out "$OUT/kernels_gpu_compile.json" > "$OUT/bench_compile.log" 2>&1
echo "compile bench rc $?"; tail -n 5 "$OUT/bench_compile.log"

$PY - "$OUT" <<'EOF'
import json, sys, pathlib
for name in ("kernels_gpu.json", "kernels_gpu_compile.json"):
    p = pathlib.Path(sys.argv[1]) / name
    if not p.exists():
        print(name, "missing"); continue
    rec = json.loads(p.read_text())
    print(name, "copy GB/s", rec.get("copy_bandwidth_GBps"), "correctness", rec.get("correctness"))
    for r in rec["results"]:
        if r.get("status") != "ok" or r["provider"] != "triton":
            continue
        sp = {k: round(v, 1) for k, v in r.items() if k.startswith("speedup")}
        print(f'{r["op"]:9s} {r["mode"]:4s} K={r["K"]:5d} B={r["B"]:2d} {r["dtype"]} {r["ms_p50"]:.3f} ms '
              f'roof {r["frac_roofline"]:.2f} {sp}')
EOF
