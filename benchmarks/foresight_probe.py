"""How linearly decodable is the expert's next action from a policy's frozen foresight features?

    python benchmarks/foresight_probe.py models/policy OTHER_POLICY_DIR ... \\
        [--tokens build/tokens --robot data/metaworld --samples 1600]

For each policy: the video network's foresight features ``h`` at the sampling chain's start (t = T-1, every
future token [MASK], so ``h`` depends only on the history window and the instruction) for ``--samples``
fine-tuning sequences; ridge regression (dual form, standardised features) from the flattened ``h`` to the
expert's first action (x, y, z), fitted on 4 of every 5 demonstrations and scored (R^2) on the fifth. A
diagnostic for the pre-training ablation (docs/evaluation.md): it tells whether pre-training changed how much
of the current state the frozen features carry. Prints one line per policy and ridge strength.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def probe(policy_dir: str, tokens: str, robot: str, samples: int, lambdas: list[float]) -> dict[float, np.ndarray]:
    from vpdd.policy import VPDDPolicy
    from vpdd.tokenizer.cache import TokenCache
    from vpdd.train.datasets import FinetuneData

    pol = VPDDPolicy.from_pretrained(policy_dir)
    tasks = pol.config["data"]["demonstrations"]["tasks"]
    data = FinetuneData(TokenCache(tokens), robot, tasks, int(pol.config["train"]["demos_per_task"]),
                        int(pol.config["train"]["future_offset"]), pol.discretizer.n_bins, pol.chunk,
                        discretizer=pol.discretizer)
    data.bind({t: i for i, t in enumerate(pol.table.texts)})
    rows = np.random.default_rng(0).choice(len(data.pairs), min(samples, len(data.pairs)), replace=False)
    batch = data._take(rows)
    held_out = torch.from_numpy(data.pairs.item_of[rows] % 5 == 0)
    lay, model, t_last = pol.layout, pol.model, pol.scheduler.num_timesteps - 1
    feats = []
    with torch.no_grad():
        for s in range(0, len(rows), 200):
            hist = batch.history[s:s + 200]
            x = lay.all_masked(len(hist))[:, :lay.n_video_tokens]
            _, h = model.video(x, torch.full((len(hist),), t_last), hist, pol.table.vectors[batch.lang_ids[s:s + 200]])
            feats.append(h.flatten(1))
    x = torch.cat(feats).double()
    fit = ~held_out
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
    y = torch.from_numpy(pol.discretizer.decode_chunk(batch.actions.numpy())[:, 0, :3]).double()
    gram = x[fit] @ x[fit].T
    out = {}
    for lam in lambdas:
        alpha = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), y[fit] - y[fit].mean(0))
        pred = x[held_out] @ (x[fit].T @ alpha) + y[fit].mean(0)
        resid = ((pred - y[held_out]) ** 2).sum(0)
        total = ((y[held_out] - y[held_out].mean(0)) ** 2).sum(0)
        out[lam] = (1 - resid / total).numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("policies", nargs="+")
    p.add_argument("--tokens", default="build/tokens")
    p.add_argument("--robot", default="data/metaworld")
    p.add_argument("--samples", type=int, default=1600)
    p.add_argument("--lambdas", type=float, nargs="+", default=[1e2, 1e3, 1e4])
    args = p.parse_args(argv)
    for policy in args.policies:
        for lam, r2 in probe(policy, args.tokens, args.robot, args.samples, args.lambdas).items():
            print(f"{policy}: ridge {lam:g}: held-out R^2 x {r2[0]:.3f}  y {r2[1]:.3f}  z {r2[2]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
