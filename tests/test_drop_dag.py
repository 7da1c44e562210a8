"""The monthly-drop DAG end to end with `dag.test()`: a real S3 server (drops and bundles in a bucket), a real
MLflow registry (SQLite), a tiny real model trained by the DAG, and a running server that the DAG checks.

First drop (with broken rows), no champion yet: the DAG retrains, the gate promotes the first model, the index
is published with it, the server follows it; the rejects file is in the store beside the drop. Second drop
(new products of known codes): the short path, same champion, a new index version with the new products.
Airflow runs in a child process with its own AIRFLOW_HOME (it reads its configuration at import)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from shopclip.objectstore import ObjectStore
from support.index import synthetic_drop, write_csv
from support.server import serving
from support.training import TINY_MODEL

DAG_FILE = Path(__file__).resolve().parent.parent / "orchestration" / "dags" / "shopclip_drop.py"
RUN_DAG = """
import json, runpy, sys
dag = runpy.run_path(sys.argv[1])["shopclip_drop_dag"]
run = dag.test(run_conf=json.loads(sys.argv[2]))
states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
print("RESULT " + json.dumps({"state": str(run.state), "tasks": states}))
"""

pytest.importorskip("airflow", reason="the orchestration extra (apache-airflow) is not installed")


def airflow_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "airflow"
    home.mkdir()
    return {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent), "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}


def run_dag(env: dict[str, str], conf: dict[str, object]) -> dict:
    done = subprocess.run([sys.executable, "-c", RUN_DAG, str(DAG_FILE), json.dumps(conf)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, f"dag.test failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    if result["state"] != "success":  # the task logs say why, in the assertion message
        result["log"] = (done.stdout + done.stderr)[-8000:]
    return result


def with_broken_rows(folder: Path) -> Path:
    """A drop whose X file also holds a row without a productid and a row with text nowhere."""
    x_file = folder / "New_X_train.csv"
    rows = x_file.read_text(encoding="utf-8").splitlines()
    count = len(rows) - 1
    rows += [f"{count},titre sans identifiant,,,", f"{count + 1},,,424242,"]
    x_file.write_text("\n".join(rows) + "\n", encoding="utf-8")
    y_file = folder / "New_y_train.csv"
    y_file.write_text(y_file.read_text(encoding="utf-8") + f"{count},10\n{count + 1},10\n", encoding="utf-8")
    return folder


def test_the_drop_dag_retrains_promotes_publishes_then_takes_the_short_path(s3, tmp_path: Path) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    drops = f"s3://{bucket}/drops"
    store.upload(with_broken_rows(synthetic_drop(tmp_path / "first", range(1, 81))), f"{drops}/2026-01")
    regression = synthetic_drop(tmp_path / "regression", range(500, 540))
    root = tmp_path / "work"
    index_root = root / "index"
    env = airflow_env(tmp_path)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    with serving(index_root=str(index_root), poll_interval_s=0.2) as target:
        conf = {"drops": drops, "catalogue": str(root / "catalogue"), "index_root": str(index_root),
                "models": f"s3://{bucket}/models", "work_dir": str(root), "server": target,
                "served_timeout_s": 60, "registry_uri": f"sqlite:///{root / 'registry.db'}",
                "regression_set": str(regression), "retrain_growth": 0.5,
                "train_flags": shlex.join([*TINY_MODEL, "--epochs", "2", "--device", "cpu"])}
        first = run_dag(env, conf)
        assert first["state"] == "success", first.get("log")
        assert first["tasks"]["retrain"] == "success" and first["tasks"]["check"] == "success"
        rejects = store.read_bytes(f"{drops}/2026-01/rejects.csv").decode()
        assert "424242" in rejects and len(rejects.strip().splitlines()) == 3  # header + the two broken rows

        store.upload(synthetic_drop(tmp_path / "second", range(81, 101), word="nouveau"), f"{drops}/2026-02")
        second = run_dag(env, conf)
        assert second["state"] == "success", second.get("log")
        assert second["tasks"]["retrain"] == "skipped" and second["tasks"]["publish"] == "success"

        from shopclip.client import ShopclipClient
        from shopclip.registry.store import open_registry
        from shopclip.registry.options import RegistryOptions

        registry = open_registry(RegistryOptions(registry_uri=conf["registry_uri"]))
        champion = registry.alias("champion")
        assert champion is not None and len(registry.versions()) == 1  # the short path trained nothing
        judged = champion.gate_decisions[-1]["challenger"]
        assert judged["reused_references"] == judged["references"] == 80  # kept by training, not embedded again
        with ShopclipClient(target) as client:
            info = client.info()
            assert info.versions.model_fingerprint == champion.bundle_fingerprint
            assert info.versions.model_release == champion.bundle_release != ""  # the classifier too
            assert info.index_size == 100  # 80 + 20 products, the broken rows rejected
            found = client.search(productid=90, top_k=3)  # a product of the second drop is searchable
            assert found.neighbors and found.versions.index_version == info.versions.index_version
    state = json.loads((index_root / "drops.json").read_text())
    assert set(state) == {"2026-01", "2026-02"}
    manifests = [json.loads(path.read_text()) for path in index_root.glob("versions/*/manifest.json")]
    embedded = [m["counts"]["embedded_this_build"] for m in sorted(manifests, key=lambda m: m["created_at"])]
    assert embedded == [0, 20]  # the kept vectors of the 80 products were reused; the short path embeds 20
    assert not list((root / "known-vectors").glob("*.npz"))  # used, then discarded after the publish


def test_a_drop_of_unreadable_files_fails_the_run_and_leaves_no_index(s3, tmp_path: Path) -> None:
    store, bucket = ObjectStore(), s3.new_bucket()
    broken = tmp_path / "broken"
    broken.mkdir()
    write_csv(broken / "New_X_train.csv", ["", "designation"], [[0, "no productid column"]])
    store.upload(broken, f"s3://{bucket}/drops/2026-03")
    env = airflow_env(tmp_path)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    conf = {"drops": f"s3://{bucket}/drops", "catalogue": str(tmp_path / "catalogue"),
            "index_root": str(tmp_path / "index"), "models": str(tmp_path / "models"), "work_dir": str(tmp_path),
            "registry_uri": f"sqlite:///{tmp_path / 'registry.db'}"}
    result = run_dag(env, conf)
    assert result["state"] == "failed" and result["tasks"]["ingest"] == "failed"
    assert not (tmp_path / "index" / "CURRENT").exists()
