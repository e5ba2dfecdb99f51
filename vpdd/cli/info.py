"""``vpdd info``: versions, devices, the active kernel implementation, simulators and renderers."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="versions, devices, kernels, simulators")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-render-check", action="store_true", help="skip rendering a test frame")
    p.set_defaults(func=_info)


def _render_check() -> dict[str, object]:
    backend = os.environ.get("MUJOCO_GL", "egl")
    try:
        from vpdd.envs.metaworld import MetaWorldEnv

        with MetaWorldEnv("reach-v3", resolution=32, render_backend=backend) as env:
            env.reset(0)
            frame = env.render()
        return {"ok": True, "backend": os.environ.get("MUJOCO_GL"), "frame": list(frame.shape)}
    except Exception as err:  # any failure here is information for the user, not a crash
        return {"ok": False, "backend": backend, "error": f"{type(err).__name__}: {err}"[:300]}


def _rlbench_status() -> str:
    from vpdd.rlbench.env import rlbench_status

    status = rlbench_status()
    return "yes" if status["available"] else "no (" + "; ".join(status["problems"]) + "; see docs/rlbench.md)"


def collect_info(render_check: bool = True) -> dict[str, object]:
    import torch
    from vpdd_kernels.dispatch import ENV_VAR, requested_impl, resolve_impl, triton_status

    from vpdd.utils.machine import cpu_model, package_versions

    versions = package_versions(("vpdd", "torch", "triton", "torchvision", "numpy", "prefect", "dvc", "dvclive",
                                 "hydra-core", "transformers", "open_clip_torch", "metaworld", "mujoco",
                                 "gymnasium", "av"))
    cuda = torch.cuda.is_available()
    ok, why = triton_status()
    device = "cuda" if cuda else "cpu"
    info: dict[str, object] = {
        "versions": versions,
        "devices": {
            "cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        },
        "kernels": {
            "requested": requested_impl(), "env_var": ENV_VAR, "active_on_" + device: resolve_impl(device_type=device),
            "triton_usable": ok, "triton_detail": why,
        },
        "simulators": {
            "metaworld": importlib.util.find_spec("metaworld") is not None,
            "rlbench": importlib.util.find_spec("rlbench") is not None,
            "coppeliasim_root": os.environ.get("COPPELIASIM_ROOT"),
            "rlbench_runnable": _rlbench_status(),
        },
    }
    if render_check:
        info["simulators"]["metaworld_render"] = _render_check()
    return info


def _info(args: argparse.Namespace) -> int:
    info = collect_info(render_check=not args.no_render_check)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for section, values in info.items():
        print(f"{section}:")
        for key, value in values.items():
            print(f"  {key}: {value}")
    return 0
