"""Encoding throughput of the video tokenizer (clips per second), written to a results file.

    vpdd bench tokenizer [--tokenizer models/tokenizer] [--presets tiny paper] [--device cpu|cuda|auto]
                         [--batch-size 16] [--seconds 10] [--out benchmarks/results/tokenizer_encode_cpu.json]

One "clip" is one ``encode_window``-frame window (the unit of the token cache), fed as uint8 frames; the
timed part is the uint8 -> float conversion, the encoder and the nearest-code search (``VQVAE.encode``).
With ``--tokenizer`` the trained checkpoint is measured; each ``--presets`` entry builds that preset's
architecture with random weights (throughput does not depend on the weight values). Results go to
``benchmarks/results/tokenizer_encode_<device>.json`` with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from vpdd.tokenizer.model import VQVAE, to_model_input
from vpdd.utils.io import atomic_write_json

log = logging.getLogger(__name__)


def _preset_config(name: str):
    import yaml

    from vpdd.config.tokenizer import TokenizerConfig

    path = Path(__file__).resolve().parents[2] / "conf" / "tokenizer" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenizer preset {name!r}")
    return TokenizerConfig(**yaml.safe_load(path.read_text()))


def measure(model: VQVAE, window: int, batch_size: int, device: torch.device, seconds: float,
            warmup: int = 2) -> dict[str, Any]:
    """Encode random uint8 windows for about ``seconds``; returns clips/s and per-batch latency."""
    res = model.arch.resolution
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (batch_size, window, res, res, 3), dtype=torch.uint8, generator=gen)
    model = model.to(device).eval()

    def run() -> None:
        codes = model.encode(to_model_input(frames.to(device)))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return codes

    for _ in range(warmup):
        run()
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    return {"batch_size": batch_size, "window": window, "batches": len(times), "clips_per_s": batch_size / median,
            "median_batch_s": median, "best_batch_s": times[0],
            "latent_shape": list(model.arch.latent_shape(window))}


def main(argv: list[str] | None = None) -> int:
    from vpdd.tokenizer.pretrained import build_model, load_tokenizer
    from vpdd.utils.machine import machine_record

    p = argparse.ArgumentParser(prog="vpdd bench tokenizer", description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", help="trained tokenizer checkpoint to measure")
    p.add_argument("--presets", nargs="*", default=["tiny", "paper"], help="architectures to measure")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per model")
    p.add_argument("--out", help="results file (default benchmarks/results/tokenizer_encode_<device>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    load_before = os.getloadavg()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(auto if args.device == "auto" else args.device)
    models = []  # (label, model, config, extra fields)
    if args.tokenizer:
        model, cfg, ckpt = load_tokenizer(args.tokenizer)
        models.append((f"checkpoint {args.tokenizer}", model, cfg,
                       {"checkpoint_hash": ckpt.meta.get("checkpoint_hash")}))
    for name in args.presets:
        cfg = _preset_config(name)
        torch.manual_seed(0)
        models.append((f"preset {name} (random weights)", build_model(cfg), cfg, {}))
    results = []
    for label, model, cfg, extra in models:
        r = measure(model, cfg.encode_window, args.batch_size, dev, args.seconds)
        results.append({"model": label, **extra, "resolution": cfg.resolution,
                        "params": sum(t.numel() for t in model.parameters()), **r})
        log.info("%s: %.1f clips/s (batch %d, %dx%d, window %d)", label, r["clips_per_s"], r["batch_size"],
                 cfg.resolution, cfg.resolution, r["window"])
    out = Path(args.out or f"benchmarks/results/tokenizer_encode_{dev.type}.json")
    record = {
        "benchmark": "tokenizer_encode",
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        # other processes on the machine change CPU numbers a lot: the 1-minute load before and after
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "command": "vpdd bench tokenizer " + " ".join(argv if argv is not None else []),
        "machine": machine_record(),
        "results": results,
    }
    if dev.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(dev)
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
