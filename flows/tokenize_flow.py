"""Flow ``vpdd-tokenize``.

The video tokenizer and the token cache: DVC stages train_tokenizer (VQ-VAE, models/tokenizer) and
tokenize (build/tokens).

Parameters: see :func:`dvc_tasks.stage_flow_body` (``overrides`` make the run a named DVC experiment).
"""

from __future__ import annotations

from dvc_tasks import stage_flow_body
from prefect import flow

STAGES = ["train_tokenizer", "tokenize"]


@flow(name="vpdd-tokenize", log_prints=True)
def tokenize_flow(
    overrides: list[str] | None = None,
    exp_name: str | None = None,
    force: bool = False,
    fetch: bool = True,
    push: bool = False,
) -> dict:
    """The video tokenizer and the token cache: DVC stages train_tokenizer (VQ-VAE, models/tokenizer) and
    tokenize (build/tokens).
    """
    return stage_flow_body(STAGES, overrides, exp_name, force, fetch, push)


if __name__ == "__main__":
    tokenize_flow()
