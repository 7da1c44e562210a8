"""`shopclip quickstart`, the README's main command: its report on held-out products, the examples it picks,
and (slow) the whole job on a generated sample catalogue, as a fresh machine without ../shared/data runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shopclip.products import ProductInput
from shopclip.quickstart import _examples, held_out_report


def test_examples_show_every_kind_of_row() -> None:
    both = [(1, ProductInput("lampe", "", b"img")) for _ in range(5)]
    text_only = [(2, ProductInput("roman", "")) for _ in range(5)]
    image_only = [(3, ProductInput("", "", b"img")) for _ in range(5)]
    picked = _examples(both + text_only + image_only, 5)
    assert len(picked) == 5
    assert {code for code, _ in picked} == {1, 2, 3}
    assert _examples(both, 5) == both


def test_held_out_report_scores_the_served_answers() -> None:
    report = held_out_report([10, 10, 40, 50], [10, 40, 40, None], [False, True, False, True])
    lines = dict(line.rsplit(None, 1) for line in report.splitlines() if not line.startswith("abstained"))
    assert float(lines["accuracy"]) == pytest.approx(0.5)
    assert float(lines["accuracy when answering"]) == pytest.approx(1.0)
    assert "2 (50.0%)" in report


@pytest.mark.slow
def test_quickstart_runs_end_to_end_on_the_generated_sample(tmp_path: Path) -> None:
    from shopclip.sample_data import write_sample_catalogue

    data = write_sample_catalogue(tmp_path / "data", products_per_code=12)
    done = subprocess.run([sys.executable, "-m", "shopclip.cli", "quickstart", "--data", str(data),
                           "--workdir", str(tmp_path / "work")], capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    for heading in ("==> GetInfo", "==> Classify", "==> Feedback", "==> SearchSimilar", "==> ClassifyBatch over all"):
        assert heading in done.stdout
    assert "stored: " in done.stdout
    accuracy = float(next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("accuracy ")))
    assert accuracy > 0.5  # the sample's titles name their class: a working pipeline gets most of them
    from shopclip.indexer.published import current_version, open_version

    version = current_version(tmp_path / "work" / "index")  # a published version, named by CURRENT
    assert version is not None and len(open_version(tmp_path / "work" / "index", version)) > 0

    from shopclip.predlog.store import PredictionStore

    store = PredictionStore.open(f"sqlite:///{tmp_path / 'work' / 'predictions.db'}")
    classified = int(next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("products ")))
    assert store.count_predictions() >= classified  # the examples, then every held-out product of the batch
    assert len(store.pending_corrections()) == 1
    store.dispose()
