"""Training and ensemble stage tasks."""

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task
from prefect.runtime import task_run

from tag_pipeline.config import GNNConfig
from tag_pipeline.ensemble import materialize_ensemble
from tag_pipeline.train import materialize_training_run, training_run_in_lake, training_workers
from tasks import STAGE_TASK_OPTIONS, reading


def _run_name(prefix: str, with_feature: bool) -> str:
    """``train-gcn-TA-s0`` / ``ensemble-gcn-s0``; runs on fine-tuned LM features add ``-ft``."""
    p = task_run.parameters
    parts = [prefix, p["model"], *([p["feature"]] if with_feature else []), *(["ft"] if p.get("lm") == "finetuned" else [])]
    return "-".join(parts) + f"-s{p['seed']}"


def _train_run_name() -> str:
    return _run_name("train", True)


def _ensemble_run_name() -> str:
    return _run_name("ensemble", False)


@task(name="train-gnn", task_run_name=_train_run_name, **STAGE_TASK_OPTIONS)
def train_gnn(
    graph: str, features: str, feature: str, model: str, seed: int, gnn: GNNConfig, lake: str, build: bool = True,
    lm: str = "frozen",
) -> dict:
    """Train one GNN on one feature and seed; return its accuracies, artifact path, ``lm``
    (the encoder mode, for the report) and ``pid`` (the process that ran the task: the flow's,
    or a worker's under :func:`train_gnn_runs`; kept on a cache hit; in neither the lake nor
    a key). ``build=False``: lookup only."""
    with reading(build, "train"):
        summary = materialize_training_run(Path(graph), Path(features), feature, model, seed, gnn, Path(lake))
    return summary | {"lm": lm, "pid": os.getpid()}


@task(name="ensemble", task_run_name=_ensemble_run_name, **STAGE_TASK_OPTIONS)
def ensemble(graph: str, runs: list[dict], model: str, seed: int, mode: str, lake: str, lm: str = "frozen") -> dict:
    """h_TAPE of one model, seed and encoder mode: average the feature models' outputs."""
    return materialize_ensemble(Path(graph), runs, mode, Path(lake)) | {"lm": lm}


def _api_for_worker_processes() -> contextlib.AbstractContextManager:
    """Settings under which worker processes reach this process's Prefect API.

    With no ``PREFECT_API_URL`` (the ``tag`` command's ephemeral server) every spawned
    worker would start an ephemeral server of its own on the same database; instead the
    block sets ``PREFECT_API_URL`` to the server this flow run already talks to, and the
    process pool hands its settings to the workers. A no-op where the URL is set.
    """
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    ctx = FlowRunContext.get()
    if PREFECT_API_URL.value() or ctx is None or ctx.client is None:
        return contextlib.nullcontext()
    return temporary_settings({PREFECT_API_URL: str(ctx.client.api_url)})


def _needs_training(call: Mapping[str, Any]) -> bool:
    """Whether :func:`train_gnn` with these arguments would train: it may build and its run
    is not in the lake yet (:func:`tag_pipeline.train.training_run_in_lake`)."""
    if not call.get("build", True):
        return False
    return not training_run_in_lake(
        Path(call["graph"]), Path(call["features"]), call["feature"], call["model"], call["seed"], call["gnn"],
        Path(call["lake"]),
    )


def train_gnn_runs(
    calls: Sequence[Mapping[str, Any]],
    workers: int | None,
    threads: int | None,
    on_done: Callable[[int], object] | None = None,
) -> list[dict]:
    """Run :func:`train_gnn` once per set of keyword arguments in ``calls``, inside a flow run;
    return the summaries in the order of ``calls``.

    The runs that must train (not in the lake yet, and allowed to build) go to
    :func:`tag_pipeline.train.training_workers` ``(workers, threads, <their number>)`` worker
    processes of Prefect's ``ProcessPoolTaskRunner`` when that is more than one; each task
    run still belongs to the calling flow run, under the same name and cache key as a plain
    call's. Everything else runs here, one call after another, as plain task calls: lookups,
    runs already in the lake (cache hits), and every run when one worker is all there is.
    A warm rerun thus starts no process (each would spend seconds importing torch and the
    project: workers are ``spawn``ed).

    Processes, not threads: a run draws its initial weights and dropout masks from torch's
    global RNG, which threads would share. Every run seeds it, so the numbers do not depend
    on where it ran.

    Args:
        calls: keyword arguments of :func:`train_gnn`, one mapping per run.
        workers: ``GNNConfig.workers`` (``None``: as many as the cores hold).
        threads: ``GNNConfig.threads``, torch threads per run.
        on_done: called in this process with the number of runs finished so far, after each.

    Returns:
        list[dict]: :func:`train_gnn`'s summaries, in the order of ``calls``.

    Raises:
        Exception: the first failed run's error, in the order of ``calls``; with worker
            processes, only once every run has finished, so the others are in the lake and
            cached for a retry.
    """
    from prefect.futures import as_completed
    from prefect.task_runners import ProcessPoolTaskRunner
    from prefect.utilities.callables import get_call_parameters

    notify = on_done or (lambda done: None)
    to_train = [i for i, call in enumerate(calls) if _needs_training(call)] if workers != 1 else []
    processes = training_workers(workers, threads, len(to_train))
    if processes == 1:
        summaries = []
        for call in calls:
            summaries.append(train_gnn(**call))
            notify(len(summaries))
        return summaries

    print(
        f"GNN training: {len(to_train)} of {len(calls)} runs in {processes} worker processes"
        + (f", {len(calls) - len(to_train)} from the lake here" if len(to_train) < len(calls) else "")
    )
    with _api_for_worker_processes(), ProcessPoolTaskRunner(max_workers=processes) as runner:
        outcomes: dict[int, Any] = {
            i: runner.submit(train_gnn, get_call_parameters(train_gnn.fn, (), dict(calls[i]))) for i in to_train
        }
        # while the workers start: the other runs, here; as states, so that a failure here
        # waits for the workers too and is raised in the order of calls
        done = 0
        for i, call in enumerate(calls):
            if i not in outcomes:
                outcomes[i] = train_gnn(**call, return_state=True)
                done += 1
                notify(done)
        for _ in as_completed([outcomes[i] for i in to_train]):
            done += 1
            notify(done)
        return [outcomes[i].result() for i in range(len(calls))]
