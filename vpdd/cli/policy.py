"""``vpdd policy``: look at a trained policy (or pre-trained video model) checkpoint.

    vpdd policy info models/policy                 # kind, step, sizes, layout, text encoder, metrics, lineage
    vpdd policy predict --policy models/policy --episode data/metaworld/drawer-close-v3/episode_0000.npz \\
        --step 10 [--seed 0] [--stride 10] [--out prediction.png]

``predict`` feeds the episode's frames up to ``--step`` through ``select_action`` (so the policy builds its
own 4-frame history), prints the predicted action chunk next to the recorded actions, and with ``--out``
writes a PNG: the history window, the true clip 20 steps ahead, and the predicted (decoded) clip. Both take
the behaviour-cloning baseline's ``vpdd-bc`` checkpoints too (models/bc: no video, so no ``--out``).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="inspect a policy checkpoint, predict actions/video from an episode")
    sp = p.add_subparsers(dest="policy_cmd", required=True)
    i = sp.add_parser("info", help="describe a vpdd-policy / vpdd-pretrain / vpdd-bc checkpoint")
    i.add_argument("path", help="checkpoint directory (models/policy, models/pretrain or models/bc)")
    i.set_defaults(func=_info)
    r = sp.add_parser("predict", help="predict an action chunk and the future clip at one step of an episode")
    r.add_argument("--policy", required=True, help="checkpoint directory")
    r.add_argument("--episode", required=True, help="an episode .npz (vpdd.data.episodes format)")
    r.add_argument("--step", type=int, default=0, help="the time step to predict at (default 0)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--stride", type=int, help="reverse-diffusion stride (default: the checkpoint's)")
    r.add_argument("--instruction", help="override the episode's instruction")
    r.add_argument("--out", help="write history | true future | predicted future as a PNG")
    r.add_argument("--device", default="cpu")
    r.set_defaults(func=_predict)


def _info(args: argparse.Namespace) -> int:
    from vpdd.bc import KIND_BC
    from vpdd.models.checkpoint import read_vpdd_config
    from vpdd.runtime.checkpoint import load_checkpoint, read_config

    if read_config(args.path).get("kind") == KIND_BC:
        print(json.dumps(_bc_info(args.path), indent=2, default=str))
        return 0
    config = read_vpdd_config(args.path)
    ck = load_checkpoint(args.path)
    lay = config["model"]["layout"]
    lang = config["language"]
    out = {
        "kind": config["kind"],
        "step": ck.step,
        "checkpoint_hash": ck.meta.get("checkpoint_hash"),
        "layout": lay,
        "parameters": ck.meta.get("parameters"),
        "video_net": config["model"]["video"],
        "action_net": config["model"]["action"],
        "text_encoder": {k: lang.get(k) for k in ("encoder", "model", "dim")} | {"texts": len(lang["texts"])},
        "tokenizer_hash": config["tokenizer"]["checkpoint_hash"],
        "pretrained": config.get("pretrained"),
        "actions": None if not config.get("actions") else {
            "n_bins": config["actions"]["n_bins"], "chunk": config["actions"]["chunk"],
            "kinds": config["actions"]["kinds"], "gripper_classes": config["actions"]["values"][-1]
            if config["actions"]["kinds"][-1] == "classes" else None},
        "provenance": config.get("provenance"),
        "metrics": ck.meta.get("metrics"),
    }
    print(json.dumps(out, indent=2, default=str))
    return 0


def _bc_info(path: str) -> dict:
    """What ``info`` prints for a behaviour-cloning checkpoint (no diffusion, layout or text encoder)."""
    from vpdd.runtime.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    config = ck.config
    acts = config["actions"]
    return {
        "kind": config["kind"], "step": ck.step, "checkpoint_hash": ck.meta.get("checkpoint_hash"),
        "parameters": ck.meta.get("parameters"), "net": config["net"], "tasks": config["tasks"],
        "instructions": config["instructions"], "env": config["env"],
        "actions": {"n_bins": acts["n_bins"], "chunk": acts["chunk"], "kinds": acts["kinds"]},
        "demonstrations": config["data"]["demonstrations"], "train": config["train"],
        "metrics": ck.meta.get("metrics"),
    }


def _load_for_predict(args: argparse.Namespace):
    from vpdd.bc import KIND_BC, BCPolicy
    from vpdd.policy import VPDDPolicy
    from vpdd.runtime.checkpoint import read_config

    if read_config(args.policy).get("kind") == KIND_BC:
        if args.stride is not None or args.out:
            raise ValueError(f"{args.policy} is a behaviour-cloning policy: it has no reverse diffusion (--stride) "
                             "and predicts no video (--out)")
        return BCPolicy.from_pretrained(args.policy, device=args.device)
    return VPDDPolicy.from_pretrained(args.policy, device=args.device, sampling_stride=args.stride)


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from vpdd.bc import BCPolicy
    from vpdd.data.episodes import load_episode

    policy = _load_for_predict(args)
    ep = load_episode(args.episode)
    if not 0 <= args.step < len(ep):
        raise ValueError(f"--step {args.step}: the episode has {len(ep)} steps")
    text = args.instruction or ep.instruction
    policy.reset(seed=args.seed)
    np.set_printoptions(precision=3, suppress=True)
    for s in range(args.step):  # the frames before the step: the policy's own history window
        policy.observe(ep.frames[s])
    if isinstance(policy, BCPolicy):
        print(f"predicted chunk at step {args.step}:\n{policy.predict_action_chunk(ep.frames[args.step], text)}")
        print(f"recorded actions:\n{ep.actions[args.step:args.step + policy.chunk]}")
        return 0
    out = policy.predict({"image": ep.frames[args.step]}, text)
    if out.actions is not None:
        print(f"predicted chunk at step {args.step}:\n{out.actions[0]}")
        print(f"recorded actions:\n{ep.actions[args.step:args.step + policy.chunk]}")
    if args.out:
        _write_png(policy, ep, args.step, out, args.out)
        print(f"wrote {args.out}")
    return 0


def _write_png(policy, ep, step, out, path) -> None:
    import io

    import numpy as np
    import torch
    from PIL import Image

    from vpdd.tokenizer.data import window_indices
    from vpdd.tokenizer.model import to_uint8
    from vpdd.utils.io import atomic_write_bytes

    w = policy.window
    target = min(step + 20, len(ep) - 1)
    with torch.no_grad():
        pred = to_uint8(policy.tokenizer.decode(out.video_tokens[:1])).cpu().numpy()[0]
    rows = [ep.frames[window_indices(step, w)], ep.frames[window_indices(target, w)], pred]
    image = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    img = Image.fromarray(image)
    buf = io.BytesIO()
    img.resize((img.width * 2, img.height * 2), Image.NEAREST).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
