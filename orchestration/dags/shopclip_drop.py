"""Airflow DAG of the monthly drop: wait for a drop, ingest, retrain or not, gate, publish, check the server.

Every task calls one step of `shopclip.orchestration.drop_flow` (plain functions, tested without Airflow too),
configured by the same `SHOPCLIP_*` variables as the CLI and overridable per run through the run's conf
(`airflow dags trigger shopclip_drop --conf '{"retrain": "always"}'`). The sensor reschedules itself between
pokes, so waiting for a drop holds no worker slot. Each step is idempotent, so every task may retry.

    wait_for_drop -> ingest -> plan -> [retrain -> gate] -> publish -> check
                                  \\______ short path _____/
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.bases.sensor import PokeReturnValue
from airflow.sdk.exceptions import AirflowFailException

from shopclip.errors import InvalidInput, PromotionRefused
from shopclip.orchestration import drop_flow

DAG_ID = "shopclip_drop"
DEFAULT_ARGS = {"retries": 2, "retry_delay": timedelta(minutes=1)}


def _config() -> drop_flow.DropFlowConfig:
    """The flow's options for this run: the run's conf over the environment."""
    conf = get_current_context()["dag_run"].conf or {}
    return drop_flow.config_from_environment(dict(conf))


def no_retry_for_mistakes(step: Callable[..., Any]) -> Callable[..., Any]:
    """A bad drop or a bad option fails the task at once: retrying cannot fix it (a store or a server that is
    down raises other errors, which do retry)."""
    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return step(*args, **kwargs)
        except (InvalidInput, PromotionRefused) as mistake:
            raise AirflowFailException(f"{type(mistake).__name__}: {mistake}") from mistake

    return run


@dag(dag_id=DAG_ID, schedule="@hourly", start_date=datetime(2026, 1, 1), catchup=False, max_active_runs=1,
     default_args=DEFAULT_ARGS, tags=["shopclip"], doc_md=__doc__)
def shopclip_drop() -> None:
    @task.sensor(poke_interval=60, timeout=3600, mode="reschedule", soft_fail=True)
    @no_retry_for_mistakes
    def wait_for_drop() -> PokeReturnValue:
        names = drop_flow.pending(_config())
        return PokeReturnValue(is_done=bool(names), xcom_value=names)

    @task
    @no_retry_for_mistakes
    def ingest(_names: list[str]) -> dict[str, Any]:
        return drop_flow.ingest(_config())

    @task.branch
    @no_retry_for_mistakes
    def plan(ingested: dict[str, Any]) -> str:
        decision = drop_flow.plan(_config(), ingested)
        print(f"path: {decision['path']} ({decision['reason']})")
        return "retrain" if decision["path"] == drop_flow.RETRAIN else "publish"

    @task
    @no_retry_for_mistakes
    def retrain() -> dict[str, Any]:
        return drop_flow.retrain(_config())

    @task
    @no_retry_for_mistakes
    def gate(trained: dict[str, Any]) -> dict[str, Any]:
        return drop_flow.gate(_config(), trained["bundle"], trained["export"]["folder"])

    @task(trigger_rule="none_failed_min_one_success")  # after the gate, or straight from plan (short path)
    @no_retry_for_mistakes
    def publish() -> dict[str, Any]:
        return drop_flow.publish(_config())

    @task
    @no_retry_for_mistakes
    def check(published: dict[str, Any]) -> dict[str, Any]:
        return drop_flow.check(_config(), published)

    branch = plan(ingest(wait_for_drop()))
    trained = retrain()
    published = publish()
    branch >> [trained, published]
    gate(trained) >> published
    check(published)


shopclip_drop_dag = shopclip_drop()
