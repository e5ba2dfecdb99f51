"""vpdd: video-pretrained discrete diffusion policies (VPDD, arXiv 2402.14407).

The library: configs, data, the video tokenizer, the discrete diffusion process, networks, the policy,
environments and evaluation. Orchestration lives outside it (DVC stages call the ``vpdd`` CLI; Prefect
flows in ``flows/`` call DVC); nothing here imports Prefect.
"""

from vpdd._compat import patch_torchvision_for_cpu_torch

__version__ = "0.1.0"

patch_torchvision_for_cpu_torch()
