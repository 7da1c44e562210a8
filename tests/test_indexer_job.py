"""Periodic job: new drops are picked up once, builds follow changes, JSON lines and exit codes; CLI wiring."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from shopclip.cli import main
from shopclip.errors import Busy, InvalidInput, exit_code
from shopclip.indexer.published import open_current
from shopclip.indexer import job, publish
from support.index import synthetic_drop


def config(tmp_path: Path) -> job.JobConfig:
    return job.JobConfig(drops=tmp_path / "drops", catalogue_uri=str(tmp_path / "db"), index_root=tmp_path / "index",
                         bundle="fake:dim=16,classes=4")


def test_runs_pick_up_each_drop_once_and_build_only_when_needed(tmp_path: Path) -> None:
    synthetic_drop(tmp_path / "drops" / "2026-10", range(1, 21))
    (tmp_path / "drops" / "not-a-drop").mkdir()
    cfg = config(tmp_path)

    code, first = job.run_once(cfg)
    assert (code, first["status"]) == (0, "published")
    assert [d["added"] for d in first["drops"]] == [20] and first["build"]["vectors"] == 20
    assert first["current_version"] == first["build"]["version"]

    code, idle = job.run_once(cfg)
    assert (code, idle["status"], idle["drops"], idle["build"]) == (0, "up-to-date", [], None)

    synthetic_drop(tmp_path / "drops" / "2026-11", range(15, 31), word="nouveau")
    code, third = job.run_once(cfg)
    assert third["status"] == "published" and third["build"]["embedded"] == 16
    assert [(d["added"], d["updated"]) for d in third["drops"]] == [(10, 6)]
    assert (tmp_path / "index" / "rejects" / "2026-11.csv").exists()


def test_busy_builder_gives_exit_status_6_and_a_json_line(tmp_path: Path) -> None:
    synthetic_drop(tmp_path / "drops" / "a", range(1, 5))
    cfg = config(tmp_path)
    with publish.builder_lock(cfg.index_root):
        code, summary = job.run_once(cfg)
    assert (code, summary["status"]) == (exit_code(Busy), "busy") and "another index builder" in summary["error"]


def test_missing_drops_directory_is_invalid_input(tmp_path: Path) -> None:
    code, summary = job.run_once(config(tmp_path))
    assert (code, summary["status"]) == (exit_code(InvalidInput), "invalid-input") and "drops" in summary["error"]


def test_every_loops_until_stopped_and_emits_one_line_per_run(tmp_path: Path) -> None:
    synthetic_drop(tmp_path / "drops" / "a", range(1, 5))
    lines: list[str] = []
    stop = threading.Event()

    def emit(line: str) -> None:
        lines.append(line)
        if len(lines) == 2:
            stop.set()

    code = job.run_every(config(tmp_path), interval_s=0.01, emit=emit, stop=stop)
    assert code == 0 and [json.loads(line)["status"] for line in lines] == ["published", "up-to-date"]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1h", 3600), ("1d", 86400), ("2", 2)])
def test_durations(text: str, seconds: float) -> None:
    assert job.parse_duration(text) == seconds


def test_bad_duration_names_the_flag() -> None:
    with pytest.raises(InvalidInput) as info:
        job.parse_duration("soon")
    assert info.value.field == "every"


def test_cli_ingest_build_status_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drop = synthetic_drop(tmp_path / "drops" / "a", range(1, 13))
    where = ["--catalogue", str(tmp_path / "db")]
    index = ["--index-root", str(tmp_path / "index"), "--bundle", "fake:dim=16,classes=4"]
    assert main(["index", "ingest", str(drop), *where, "--rejects", str(tmp_path / "r.csv")]) == 0
    assert json.loads(capsys.readouterr().out)["added"] == 12
    assert main(["index", "build", *where, *index, "--index", "flat"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["status"] == "published" and built["counts"]["vectors"] == 12
    assert main(["index", "status", *where, *index]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["current"] == built["version"] and status["catalogue"]["stale_rows"] == 0
    assert (status["models"], status["releases"]) == ({built["version"]: "fake-16-4"}, {built["version"]: "fake-16-4"})
    assert main(["index", "run", "--once", "--drops", str(tmp_path / "drops"), *where, *index]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "up-to-date"  # the drop was ingested by hand


def test_cli_remove_then_build_publishes_an_index_without_the_products(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    drop = synthetic_drop(tmp_path / "drops" / "a", range(1, 13))
    where = ["--catalogue", str(tmp_path / "db")]
    index = ["--index-root", str(tmp_path / "index"), "--bundle", "fake:dim=16,classes=4"]
    assert drop.is_dir()
    assert main(["index", "run", "--once", "--drops", str(tmp_path / "drops"), *where, *index]) == 0
    assert json.loads(capsys.readouterr().out)["build"]["vectors"] == 12
    (tmp_path / "gone.txt").write_text("3,4\n500\n", encoding="utf-8")
    assert main(["index", "remove", "7", "--from-file", str(tmp_path / "gone.txt"), *where]) == 0
    removed = json.loads(capsys.readouterr().out)
    assert removed["removed"] == 3 and removed["not_found"] == [500]
    assert main(["index", "run", "--once", "--drops", str(tmp_path / "drops"), *where, *index]) == 0
    assert json.loads(capsys.readouterr().out)["build"]["vectors"] == 9  # the job noticed the catalogue change
    published = open_current(tmp_path / "index")
    assert len(published) == 9 and published.titles([3, 4, 7]) == [("", None)] * 3
    assert main(["index", "remove", "x1", *where]) == 2  # not an integer: invalid input
    assert "productids" in capsys.readouterr().err


def test_cli_build_without_a_bundle_is_invalid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOPCLIP_BUNDLE", raising=False)
    assert main(["index", "build", "--catalogue", str(tmp_path / "db"), "--index-root", str(tmp_path / "i")]) == 2


def test_an_unreadable_drop_is_reported_without_blocking_the_others(tmp_path: Path) -> None:
    synthetic_drop(tmp_path / "drops" / "good", range(1, 9))
    broken = tmp_path / "drops" / "broken"
    broken.mkdir(parents=True)
    (broken / "New_X_train.csv").write_text(",designation,productid\n0,a,1\n", encoding="utf-8")
    code, summary = job.run_once(config(tmp_path))
    assert code == exit_code(InvalidInput) and summary["status"] == "published-with-invalid-drops"
    errors = {Path(d["source"]).name: d.get("error") for d in summary["drops"]}
    assert errors["good"] is None and "description" in errors["broken"]
    assert summary["build"]["vectors"] == 8
