"""``pretrain_flow``: SSL encoder training as a Prefect flow (resumes from the run's last checkpoint)."""

from __future__ import annotations

from prefect import flow

from lakelabel.flows.progress import StageProgress
from lakelabel.flows.runners import stage_task
from lakelabel.pipeline.config import PretrainConfig
from lakelabel.pipeline.pretrain import pretrain


@stage_task("pretrain-encoder", retries=1)
def pretrain_task(root: str, config: PretrainConfig) -> dict:
    """Train or resume; a retry resumes from ``last.pt`` rather than starting over."""
    return pretrain(root, config, progress=StageProgress("pretrain", "step"))


@flow(name="pretrain", persist_result=False)
def pretrain_flow(root: str, config: PretrainConfig | None = None) -> dict:
    """Train the encoder described by ``config`` on ``root``'s shards."""
    return pretrain_task(root, config or PretrainConfig())
