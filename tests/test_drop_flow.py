"""The drop flow's decisions without Airflow: options from a run's conf and the environment, and when to
retrain (the DAG test runs the steps themselves end to end)."""

from __future__ import annotations

import pytest

from shopclip.errors import InvalidInput
from shopclip.orchestration import drop_flow
from shopclip.orchestration.drop_flow import REINDEX, RETRAIN, config_from_environment, plan

CHAMPION = {"label_map": {"index_to_code": [10, 40]}, "training": {"trained_on": {"products": 100}}}


def test_a_runs_conf_wins_over_the_environment_and_reaches_nested_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOPCLIP_DROPS", "s3://bucket/from-env")
    monkeypatch.setenv("SHOPCLIP_RETRAIN_GROWTH", "0.3")
    config = config_from_environment({"drops": "s3://bucket/from-conf", "max_f1_drop": 0.02})
    assert config.drops == "s3://bucket/from-conf" and config.retrain_growth == 0.3
    assert config.gate.max_f1_drop == 0.02  # a nested option (the gate's), by its own name


@pytest.mark.parametrize(("conf", "field"), [({"dropz": "x"}, "dropz"), ({"retrain": "sometimes"}, "retrain"),
                                             ({"retrain_growth": -1}, "retrain_growth"),
                                             ({"train_flags": "--epochs 'unclosed"}, "train_flags")])
def test_a_bad_conf_is_invalid_input_naming_the_field(conf: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as error:
        config_from_environment(conf)
    assert error.value.field == field


@pytest.mark.parametrize(("champion", "ingested", "path", "why"), [
    (None, {"labelled": 50, "codes": [10]}, RETRAIN, "no champion"),
    (CHAMPION, {"labelled": 105, "codes": [10, 40, 2583]}, RETRAIN, "2583"),
    (CHAMPION, {"labelled": 120, "codes": [10, 40]}, RETRAIN, "growth"),
    (CHAMPION, {"labelled": 119, "codes": [10, 40]}, REINDEX, "embeds the new rows"),
])
def test_plan_retrains_only_when_the_champion_cannot_keep_up(monkeypatch: pytest.MonkeyPatch, champion: dict | None,
                                                            ingested: dict, path: str, why: str) -> None:
    monkeypatch.setattr(drop_flow, "_champion_config", lambda config: champion)
    decision = plan(config_from_environment({}), ingested)
    assert decision["path"] == path and why in decision["reason"]


@pytest.mark.parametrize(("retrain", "path"), [("always", RETRAIN), ("never", REINDEX)])
def test_the_retrain_option_overrides_the_plan(monkeypatch: pytest.MonkeyPatch, retrain: str, path: str) -> None:
    monkeypatch.setattr(drop_flow, "_champion_config", lambda config: CHAMPION)
    assert plan(config_from_environment({"retrain": retrain}), {"labelled": 1000, "codes": [1]})["path"] == path


def test_ingest_writes_the_pending_feedback_into_the_catalogue_after_the_drops(tmp_path) -> None:  # noqa: ANN001
    from shopclip.indexer.catalogue import Catalogue
    from shopclip.predictions import Feedback
    from shopclip.predlog.store import PredictionStore
    from support.index import synthetic_drop

    synthetic_drop(tmp_path / "drops" / "2026-11", range(1, 21))
    url = f"sqlite:///{tmp_path / 'log.db'}"
    store = PredictionStore.open(url)
    store.add_feedback(Feedback(prdtypecode=2583, productid=4, actor="admin:alice"))  # the drop says 10
    config = config_from_environment({"drops": str(tmp_path / "drops"), "catalogue": str(tmp_path / "catalogue"),
                                      "index_root": str(tmp_path / "index"), "work_dir": str(tmp_path / "work"),
                                      "prediction_log": url})
    ingested = drop_flow.ingest(config)
    assert ingested["drops"][0]["added"] == 20
    assert (ingested["corrections"]["relabelled"], ingested["corrections"]["applied"]) == (1, 1)
    assert Catalogue(config.catalogue).products([4]).to_pylist()[0]["prdtypecode"] == 2583
    assert store.pending_corrections() == []
    assert drop_flow.ingest(config)["corrections"]["products"] == 0  # a retried task applies nothing twice
    store.dispose()
