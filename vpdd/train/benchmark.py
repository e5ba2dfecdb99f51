"""Training-step time of the diffusion stages (and the policy's sampling latency), written to a results file.

    vpdd bench train [--presets tiny paper] [--stages pretrain finetune] [--device cpu|cuda|auto]
                     [--batch-size N] [--seconds 20] [--threads N] [--sample-stride S]
                     [--out benchmarks/results/train_step_<device>.json]

For each preset (``conf/preset/<name>.yaml`` composed with conf/) and stage, the network is built at the
preset's sizes with random weights and a random codebook (speed does not depend on the values), and one
optimizer step is timed exactly as the training loop runs it: ``grad_accum`` micro-batches of
``batch_size`` sequences (the stage config's, unless ``--batch-size``), each drawing timesteps and noise
with the scheduler, the forward pass (the frozen video network under ``no_grad`` when fine-tuning), the
scheduler's loss, backward, then Adam and the EMA update. The token layout comes from the preset's
tokenizer (K_v codes, the latent grid of one window). ``--sample-stride`` also times one action-chunk
prediction of the fine-tuned model for one observation (``T / stride`` network calls: the policy's
latency per replanning). Results: median and best step time, sequences per second, parameter counts,
with the machine, versions and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

LANG_DIMS = {"minilm": 384}


def _compose(preset: str):
    from vpdd.config import compose, config_from_dict

    conf = Path(__file__).resolve().parents[2] / "conf"
    return config_from_dict(compose([f"preset={preset}"], conf_dir=conf), source=f"preset={preset}")


def _lang_dim(cfg) -> int:
    if cfg.model.language.encoder in LANG_DIMS:
        return LANG_DIMS[cfg.model.language.encoder]
    from vpdd.models.language import clip_dim

    return clip_dim(cfg.model.language.clip_model)


def build(cfg, stage: str, device: torch.device):
    from vpdd.diffusion import MaskReplaceScheduler, TokenLayout
    from vpdd.models import ModelSpec, VPDDModel

    tok = cfg.tokenizer
    dt, dh, dw = tok.downsample
    n_video = (tok.encode_window // dt) * (tok.resolution // dh) * (tok.resolution // dw)
    act = cfg.model.actions
    layout = TokenLayout(tok.n_codes, act.n_bins, n_video, act.chunk * act.dim)
    spec = ModelSpec.from_config(cfg.model, layout, tok.embedding_dim, _lang_dim(cfg), stage == "finetune")
    torch.manual_seed(0)
    model = VPDDModel(spec)
    model.video.set_codebook(torch.randn(tok.n_codes, tok.embedding_dim))
    model.freeze([p for p in ("video", "action") if p not in getattr(cfg, stage).train])
    sched = MaskReplaceScheduler.from_config(cfg.diffusion, layout, device=device, kernel_impl=cfg.kernel.impl)
    return model.to(device), sched, layout, spec


def measure_step(cfg, stage: str, device: torch.device, batch_size: int | None, seconds: float,
                 warmup: int = 2) -> dict[str, Any]:
    from vpdd.models import diffusion_loss
    from vpdd.train.ema import EMA

    scfg = getattr(cfg, stage)
    bs = batch_size or scfg.batch_size
    model, sched, layout, spec = build(cfg, stage, device)
    model.train()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=scfg.lr)
    ema = EMA(model, scfg.ema_decay, 1, 0)
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.cat([torch.randint(0, layout.n_video_codes, (bs, layout.n_video_tokens), generator=g, device=device),
                    torch.randint(layout.action_offset, layout.mask_id, (bs, layout.n_action_tokens), generator=g,
                                  device=device)], 1)
    hist = torch.randint(0, layout.n_video_codes, (bs, layout.n_video_tokens), generator=g, device=device)
    lang = torch.randn(bs, spec.lang_dim, generator=g, device=device)

    def step(i: int) -> None:
        for _ in range(scfg.grad_accum):
            loss, _ = diffusion_loss(model, sched, x0, hist, lang, g)
            (loss / scfg.grad_accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(model, i + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for i in range(warmup):
        step(i)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        step(len(times))
        times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    seqs = bs * scfg.grad_accum
    return {
        "batch_size": bs,
        "grad_accum": scfg.grad_accum,
        "sequences_per_step": seqs,
        "steps_timed": len(times),
        "median_step_s": round(median, 5),
        "best_step_s": round(times[0], 5),
        "sequences_per_s": round(seqs / median, 2),
        "configured_steps": scfg.steps,
        "estimated_stage_minutes": round(scfg.steps * median / 60, 2),
        "parameters": {p: sum(x.numel() for x in getattr(model, p).parameters())
                       for p in ("video", "action") if getattr(model, p) is not None},
        "trainable_parameters": sum(p.numel() for p in model.trainable_parameters()),
        "layout": dataclasses.asdict(layout),
    }


@torch.no_grad()
def measure_sampling(cfg, device: torch.device, stride: int, repeats: int = 2) -> dict[str, Any]:
    from vpdd.models import sample_tokens

    model, sched, layout, spec = build(cfg, "finetune", device)
    model.eval()
    g = torch.Generator(device=device).manual_seed(0)
    hist = torch.randint(0, layout.n_video_codes, (1, layout.n_video_tokens), generator=g, device=device)
    lang = torch.randn(1, spec.lang_dim, generator=g, device=device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample_tokens(model, sched, hist, lang, g, stride=stride)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    calls = len(sched.timesteps(stride))
    return {"stride": stride, "network_calls": calls, "chunk_s": round(min(times), 4),
            "per_call_s": round(min(times) / calls, 5)}


def main(argv: list[str] | None = None) -> int:
    from vpdd.utils.io import atomic_write_json
    from vpdd.utils.machine import machine_record

    p = argparse.ArgumentParser(prog="vpdd bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny"])
    p.add_argument("--stages", nargs="+", default=["pretrain", "finetune"], choices=["pretrain", "finetune"])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, help="sequences per micro-batch (default: the stage config's)")
    p.add_argument("--seconds", type=float, default=20.0, help="timing budget per measurement")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--sample-stride", type=int, default=10, help="also time one chunk prediction (0: skip)")
    p.add_argument("--out", help="results file (default: benchmarks/results/train_step_<device>.json)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                       else ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for preset in args.presets:
        cfg = _compose(preset)
        for stage in args.stages:
            r = {"preset": preset, "stage": stage, **measure_step(cfg, stage, dev, args.batch_size, args.seconds)}
            log.info("%s %s: %.4f s/step (%s sequences), %.1f sequences/s", preset, stage, r["median_step_s"],
                     r["sequences_per_step"], r["sequences_per_s"])
            results.append(r)
        if args.sample_stride:
            s = {"preset": preset, "stage": "sample", **measure_sampling(cfg, dev, args.sample_stride)}
            log.info("%s sampling: %.3f s per chunk (%d calls)", preset, s["chunk_s"], s["network_calls"])
            results.append(s)
    machine = machine_record()
    record = {
        "benchmark": "vpdd bench train",
        "argv": list(argv) if argv is not None else [],
        "date": machine.pop("date"),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "machine": machine,
        "results": results,
        "note": "median time of one optimizer step (grad_accum micro-batches, forward, scheduler loss, "
                "backward, Adam, EMA) with random data at the preset's sizes",
    }
    out = Path(args.out or f"benchmarks/results/train_step_{dev.type}.json")
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
