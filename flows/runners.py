"""Prefect task runners from a :class:`RunnerConfig` (threads, processes or a Dask scheduler)."""

from __future__ import annotations

import os

from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner, ThreadPoolTaskRunner

from lakelabel.pipeline.config import RunnerConfig

#: errors that a retry cannot change: a bad value or contract, a missing input, a path under a file
#: (ConfigError and ContractError are ValueErrors, LabelsNotFound a FileNotFoundError)
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def stage_task(name: str, retries: int = 1, retry_delay_seconds: float = 5):
    """Prefect's ``@task`` as lakelabel's stages use it: retried only for errors that may pass
    (:func:`retry_unless_deterministic`), no result cache or persistence (every stage skips its own
    finished work on its markers)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return task(
        name=name,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_condition_fn=retry_unless_deterministic,
        cache_policy=NO_CACHE,
        persist_result=False,
    )


def retry_unless_deterministic(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn`` for lakelabel's tasks: retry what may pass (a lost worker, a
    flaky store, a commit race), never an error that would only come again."""
    return not isinstance(state.data, DETERMINISTIC_ERRORS)


def make_task_runner(config: RunnerConfig) -> TaskRunner:
    """The task runner ``config`` names; a Dask address always means Dask."""
    kind = config.resolved_kind()
    workers = config.max_workers or os.cpu_count() or 1
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:  # pragma: no cover - depends on extras
        raise RuntimeError("the Dask task runner needs `pip install lakelabel[dask]`") from exc
    return DaskTaskRunner(address=config.dask_address)
