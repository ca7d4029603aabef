"""Deployment helpers: the run config a deployment carries, read from a YAML file and validated when
``prefect deploy`` runs (a ``prefect.yaml`` build step), and switching deployments' schedules."""

from __future__ import annotations

from typing import Any

from lakelabel.pipeline.config import load_config


def run_config(path: str, source: str | None = None, root: str | None = None) -> dict[str, Any]:
    """A ``prefect.yaml`` build step: the config in ``path`` (``source``/``root`` overriding), validated
    now, so a bad file fails the deploy. Its output's ``config`` is the curate flow's whole parameter;
    ``root`` and ``pretrain`` feed the pretrain deployment."""
    config = load_config(path, source=source, root=root).model_dump(mode="json")
    return {"config": config, "root": config["root"], "pretrain": config["pretrain"]}


def set_schedules(deployments: list[str], active: bool) -> list[dict[str, Any]]:
    """Switch every schedule of each deployment (``flow/deployment``) on or off; returns what each
    schedule is now. Deployments made by ``prefect deploy`` start with their schedules off."""
    from prefect.client.orchestration import get_client

    out = []
    with get_client(sync_client=True) as client:
        for name in deployments:
            deployment = client.read_deployment_by_name(name)
            for schedule in client.read_deployment_schedules(deployment.id):
                client.update_deployment_schedule(deployment.id, schedule.id, active=active)
                cron = getattr(schedule.schedule, "cron", str(schedule.schedule))
                out.append({"deployment": name, "schedule": cron, "active": active})
    return out


def list_schedules(deployments: list[str]) -> list[dict[str, Any]]:
    """Each schedule of each deployment, and whether it is on."""
    from prefect.client.orchestration import get_client

    out = []
    with get_client(sync_client=True) as client:
        for name in deployments:
            deployment = client.read_deployment_by_name(name)
            for schedule in client.read_deployment_schedules(deployment.id):
                cron = getattr(schedule.schedule, "cron", str(schedule.schedule))
                out.append({"deployment": name, "schedule": cron, "active": bool(schedule.active)})
    return out
