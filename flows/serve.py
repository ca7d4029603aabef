"""``lakelabel serve``: the one-process alternative to ``prefect.yaml`` + a worker (``flow.serve``).

Serves the nightly curate and the weekly re-pretrain deployments from this process; stopping it
pauses them (Prefect marks served deployments as not ready).
"""

from __future__ import annotations

from prefect import serve

from lakelabel.flows.curate import curate_flow
from lakelabel.flows.pretrain import pretrain_flow
from lakelabel.pipeline.config import LakelabelConfig

#: the suffix of served deployments' names: ``prefect deploy`` owns ``nightly-curate`` (its work pool
#: runs it from prefect.yaml's working folder); a served one of the same name would replace it
SERVED = "-serve"


def deployments(config: LakelabelConfig, nightly_cron: str, weekly_cron: str | None):
    """The deployments ``serve`` runs: curate (nightly) and, when ``weekly_cron``, pretrain (weekly)."""
    out = [
        curate_flow.to_deployment(
            name=f"nightly-curate{SERVED}",
            cron=nightly_cron,
            parameters={"config": config.model_dump(mode="json")},
        )
    ]
    if weekly_cron and config.pretrain is not None:
        out.append(
            pretrain_flow.to_deployment(
                name=f"weekly-pretrain{SERVED}",
                cron=weekly_cron,
                parameters={"root": config.root, "config": config.pretrain.model_dump(mode="json")},
            )
        )
    return out


def serve_deployments(
    config: LakelabelConfig, nightly_cron: str = "0 2 * * *", weekly_cron: str | None = "0 3 * * 0"
) -> None:
    """Block, running scheduled (and manually triggered) runs of the deployments in this process."""
    serve(*deployments(config, nightly_cron, weekly_cron))
