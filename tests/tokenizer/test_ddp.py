"""DDP on CPU with gloo and 2 processes (torchrun): EMA statistics all-reduced, ranks stay in sync."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import torch

from vpdd.runtime.checkpoint import load_checkpoint
from vpdd.tokenizer.codebook import EMACodebook

from .conftest import subprocess_env
from .test_train import TEST_TOK, _write_params

WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from vpdd.tokenizer.codebook import EMACodebook
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    cb = EMACodebook(n_codes=16, dim=4, decay=0.9)
    with torch.no_grad():
        cb.embeddings.copy_(torch.randn(16, 4)); cb.ema_sum.copy_(cb.embeddings)
        cb.ema_count.copy_(torch.tensor([5.0] * 12 + [0.0] * 4)); cb.initialized.fill_(True)
    z = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(100 + rank))
    cb.train()
    cb(z, generator=torch.Generator().manual_seed(rank))  # different generators: restarts must still agree
    torch.save({"z": z, **{k: v for k, v in cb.state_dict().items()}}, f"{sys.argv[1]}/rank{rank}.pt")
    dist.destroy_process_group()
""")


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]


def test_codebook_statistics_are_all_reduced(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.run(
        _torchrun(str(script), str(tmp_path)), capture_output=True, text=True, timeout=180, env=subprocess_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    # both ranks hold the same codebook, restarted dead codes included (broadcast from rank 0)
    for key in ("embeddings", "ema_count", "ema_sum"):
        assert torch.equal(r0[key], r1[key]), key
    # and it equals one process seeing both ranks' batches
    torch.manual_seed(0)
    ref = EMACodebook(n_codes=16, dim=4, decay=0.9)
    with torch.no_grad():
        ref.embeddings.copy_(torch.randn(16, 4))
        ref.ema_sum.copy_(ref.embeddings)
        ref.ema_count.copy_(torch.tensor([5.0] * 12 + [0.0] * 4))
        ref.initialized.fill_(True)
    ref.train()
    ref(torch.cat([r0["z"], r1["z"]]), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ref.ema_count, r0["ema_count"], atol=1e-6)
    assert torch.allclose(ref.ema_sum, r0["ema_sum"], atol=1e-5)
    alive = ref.ema_count >= 1
    assert torch.allclose(ref.embeddings[alive], r0["embeddings"][alive], atol=1e-5)
    for row in r0["embeddings"][~alive]:  # restarted from rank 0's encoder outputs
        assert (r0["z"].movedim(1, -1).reshape(-1, 4) - row).abs().sum(1).min() < 1e-6


def test_torchrun_trains_with_two_gloo_processes(tmp_path, robot_root, corpus_root):
    params = _write_params(tmp_path / "params.yaml", steps=6, checkpoint_every=3, **TEST_TOK)
    cmd = _torchrun(
        "-m",
        "vpdd.cli.tokenizer",
        "train",
        "--params",
        str(params),
        "--robot",
        str(robot_root),
        "--corpus",
        str(corpus_root),
        "--out",
        str(tmp_path / "ckpt"),
        "--live",
        str(tmp_path / "live"),
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ckpt", training_state=True)
    assert ck.step == 6 and ck.meta["world_size"] == 2
    assert "joined process group: rank 0 of 2 (gloo" in proc.stderr
    metrics = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert metrics["step"] == 6 and "psnr" in metrics["eval"]
    # 2 processes x batch 4 per step: throughput is reported for the global batch
    assert float((tmp_path / "live/plots/metrics/train/clips_per_s.tsv").read_text().split()[-1]) > 0
