"""The model registry and the promotion gate (issue 11, points 2 and 3) against a real MLflow SQLite store.

Nothing of MLflow is mocked: each test copies one migrated empty database (creating it runs MLflow's migrations,
about 5 s, once per module) and drives it through the `shopclip model` commands in process or through the API.
The bundles are real and tiny (hashed n-gram text tower, 16-d, one epoch): one trained on a folder whose titles
name their class, one trained on the same folder with its codes shuffled, and a copy of the first (an equal
model). The regression set holds new products with the same class words.
"""

from __future__ import annotations

import ast
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from shopclip.cli import main
from shopclip.errors import InvalidInput, NotFound, PromotionRefused, exit_code
from shopclip.registry import CHAMPION, GateOptions, RegistryOptions, open_registry, resolve_champion
from shopclip.registry import lineage
from shopclip.registry.gate import Candidate, Scores, decide, promote
from support.catalogue import CatalogueRow, catalogue_title
from support.index import write_drop

CODES = (10, 20, 30, 40, 50, 60)
PER_CLASS = 10
REGRESSION_PER_CLASS = 6
TINY_TRAINING = ["--text-towers", "ngram", "--ngram-buckets", str(2**12), "--ngram-dim", "16", "--embed-dim", "16",
                 "--image-size", "64", "--image-extra-trunks", "", "--no-image-pretrained", "--epochs", "1",
                 "--sparse-c", "1",
                 "--image-view-c", "1", "--device", "cpu"]


@dataclass(frozen=True)
class Bundles:
    good: str
    equal: str
    """A copy of `good` elsewhere on disk: the same model, another version."""
    shuffled: str
    regression: str


def _rows(first_id: int, per_class: int, first_title: int = 0) -> list[CatalogueRow]:
    return [CatalogueRow(first_id + 1000 * code + j, code, catalogue_title(code, first_title + j))
            for code in CODES for j in range(per_class)]


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Training's combiner runs hundreds of tiny L-BFGS steps, which thread hand-offs make about ten times slower
    (14 s against 1 s a bundle on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundles]:
    with one_torch_thread():
        yield _train_bundles(tmp_path_factory.mktemp("bundles"))


def _train_bundles(root: Path) -> Bundles:
    rows = _rows(0, PER_CLASS)
    codes = np.random.default_rng(1).permutation([row.prdtypecode for row in rows])
    shuffled_rows = [CatalogueRow(row.productid, int(code), row.designation) for row, code in zip(rows, codes)]
    for name, data in (("good", rows), ("shuffled", shuffled_rows)):
        write_drop(root / f"{name}-data", data)
        assert main(["train", "--data", str(root / f"{name}-data"), "--out", str(root / name), *TINY_TRAINING]) == 0
    shutil.copytree(root / "good", root / "equal")
    write_drop(root / "regression", _rows(500_000, REGRESSION_PER_CLASS, first_title=100))
    return Bundles(str(root / "good"), str(root / "equal"), str(root / "shuffled"), str(root / "regression"))


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated MLflow database holding nothing, made once; tests copy it."""
    database = tmp_path_factory.mktemp("template") / "registry.db"
    open_registry(RegistryOptions(registry_uri=f"sqlite:///{database}"), create=True).versions()
    return database


@pytest.fixture
def options(empty_database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RegistryOptions:
    """A registry of this test's own; SHOPCLIP_REGISTRY_URI names it, so commands without flags use it too."""
    database = tmp_path / "registry.db"
    shutil.copy(empty_database, database)
    uri = f"sqlite:///{database}"
    monkeypatch.setenv("SHOPCLIP_REGISTRY_URI", uri)
    return RegistryOptions(registry_uri=uri)


def gate(bundles: Bundles, **changes: object) -> GateOptions:
    return GateOptions(regression_set=bundles.regression, device="cpu", **changes)


def model(*argv: str) -> int:
    return main(["model", *argv])


def test_register_records_lineage_and_makes_the_newest_the_challenger(options: RegistryOptions,
                                                                      bundles: Bundles) -> None:
    registry = open_registry(options)
    first = registry.register(bundles.good)
    config = json.loads((Path(bundles.good) / "config.json").read_text())
    assert first.version == "1" and first.aliases == ("challenger",)
    assert first.source == str(Path(bundles.good).resolve()) == first.bundle_location
    assert first.bundle_fingerprint == config["fingerprint"]
    assert first.data_fingerprint == config["training"]["data_fingerprint"]
    assert first.tags[lineage.CODE_VERSION] == config["versions"]["shopclip"]
    assert first.tags[lineage.REGISTERED_BY].startswith("shopclip ")
    assert first.metrics == config["metrics"]
    assert first.parent_version is None  # no champion yet
    uploaded = registry.register(bundles.equal, source="s3://models/bundles/equal", parent="1")
    assert uploaded.source == "s3://models/bundles/equal"
    assert uploaded.bundle_location == str(Path(bundles.equal).resolve())  # read from the local copy here
    assert uploaded.parent_version == "1"
    assert registry.get("challenger").version == "2" and registry.get("1").aliases == ()
    again = registry.register(bundles.good)  # a retried registration: the same version, aliases untouched
    assert again.version == "1" and [r.version for r in registry.versions()] == ["2", "1"]
    assert registry.get("challenger").version == "2"


def test_a_bundle_whose_classifier_alone_was_retrained_in_place_is_a_new_version(options: RegistryOptions,
                                                                               bundles: Bundles,
                                                                               tmp_path: Path) -> None:
    """The registry records the release a server reports for the bundle; a retrain written over the same folder
    that changed only the classifier keeps the fingerprint, and is still a new version (not "already registered")."""
    from shopclip.model import load_embedder

    bundle = tmp_path / "bundle"
    shutil.copytree(bundles.good, bundle)
    registry = open_registry(options)
    first = registry.register(str(bundle))
    assert first.bundle_release == load_embedder(str(bundle)).release != ""
    config = json.loads((bundle / "config.json").read_text())
    config["knn"]["temperature"] *= 2  # what a refit of the vote changes
    (bundle / "config.json").write_text(json.dumps(config))
    retrained = registry.register(str(bundle))
    assert retrained.version == "2" and retrained.bundle_fingerprint == first.bundle_fingerprint
    assert retrained.bundle_release == load_embedder(str(bundle)).release != first.bundle_release
    assert registry.register(str(bundle)).version == "2"


def test_alias_moves_show_from_both_sides_and_serving_resolves_the_champion(options: RegistryOptions,
                                                                            bundles: Bundles) -> None:
    registry = open_registry(options)
    with pytest.raises(NotFound):
        resolve_champion(options)
    for bundle in (bundles.good, bundles.equal):
        registry.register(bundle)
    registry.promote("1", event="forced", reason="first")
    assert registry.get("1").aliases == ("champion",) and registry.get("2").aliases == ("challenger",)
    registry.promote("2", event="promoted", reason="second")
    assert registry.get("2").aliases == ("champion",)  # no longer challenger either
    assert registry.get("1").aliases == () and registry.alias("challenger") is None
    champion = resolve_champion(options)
    assert (champion.version, champion.source, champion.previous_champion) == ("2", str(Path(bundles.equal).resolve()),
                                                                               "1")
    assert registry.register(bundles.shuffled).parent_version == "2"  # the champion at registration


def test_the_gate_promotes_a_first_model_and_an_equal_one_and_refuses_shuffled_labels(
        options: RegistryOptions, bundles: Bundles, capsys: pytest.CaptureFixture[str]) -> None:
    gate_flags = ["--regression-set", bundles.regression, "--device", "cpu"]
    assert model("register", bundles.good) == 0
    assert model("promote", *gate_flags) == 0  # the challenger by default; no champion: the floor alone
    assert "first champion" in capsys.readouterr().out
    assert model("register", bundles.equal) == 0
    assert model("promote", "2", *gate_flags, "--reason", "same model, new copy") == 0
    passed = capsys.readouterr().out
    assert "PASSED" in passed and "champion   version 1" in passed
    assert model("register", bundles.shuffled) == 0
    assert model("promote", *gate_flags) == exit_code(PromotionRefused) == 9
    captured = capsys.readouterr()
    assert "REFUSED" in captured.out and "below the floor" in captured.out
    assert captured.err.count("\n") == 1 and "version 3 refused" in captured.err

    registry = open_registry(options)
    assert registry.get(CHAMPION).version == "2"  # the champion stays
    refused = registry.get("3")
    assert refused.aliases == ("challenger",) and refused.tags[lineage.GATE] == "refused"
    decision = refused.gate_decisions[-1]
    assert decision["challenger"]["weighted_f1"] < 0.5 <= decision["champion"]["weighted_f1"]
    assert decision["regression_set"]["products"] == len(CODES) * REGRESSION_PER_CLASS
    assert decision["failed_classes"] and decision["failed_classes_total"] >= len(decision["failed_classes"])
    assert "regression weighted F1 fell" in decision["reason"]
    assert decision["recorded_figures"].startswith("not compared")  # shuffled labels: other data
    assert registry.get("2").gate_decisions[-1]["decision"] == "passed"

    assert model("list") == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in table[2:]] == [["3", "challenger"], ["2", "champion"], ["1", "-"]]
    assert "refused" in table[2] and "passed" in table[3]
    assert model("show", "3") == 0
    shown = capsys.readouterr().out
    assert "gate decisions: 1" in shown and "REFUSED" in shown and "parent version:     2" in shown
    assert f"bundle release:     {registry.get('3').bundle_release}" in shown


def _scores(weighted_f1: float, answers: dict[int, list[bool]]) -> Scores:
    """Scores over products laid out class by class in `answers` order (the same for every model compared)."""
    truth = np.concatenate([np.full(len(hits), code) for code, hits in answers.items()])
    return Scores(weighted_f1, truth, np.concatenate([np.array(hits, dtype=bool) for hits in answers.values()]))


def _hits(n: int, right: int) -> list[bool]:
    """The first `right` of `n` products answered right."""
    return [True] * right + [False] * (n - right)


def test_a_class_that_loses_recall_is_refused_even_when_weighted_f1_holds() -> None:
    options = GateOptions(regression_set="unused", min_class_products=5, max_recall_drop=0.10)
    champion = _scores(0.90, {1: _hits(50, 45), 2: _hits(50, 45), 3: _hits(4, 4)})
    better_on_average = _scores(0.905, {1: _hits(50, 50), 2: _hits(50, 37), 3: _hits(4, 0)})
    decision = decide([_candidate("2"), _candidate("1")], [better_on_average, champion], options,
                      {"products": 104})
    assert decision["decision"] == "refused"
    assert [c["code"] for c in decision["failed_classes"]] == [2]  # class 3 has too few products to judge
    assert decision["failed_classes"][0]["p_value"] < 0.01  # 8 products lost, none won
    assert decision["regression_set"]["classes_judged"] == 2
    steady = _scores(0.895, {1: _hits(50, 42), 2: _hits(50, 42), 3: _hits(4, 0)})
    assert decide([_candidate("2"), _candidate("1")], [steady, champion], options, {})["decision"] == "passed"


def test_a_recall_drop_that_chance_explains_is_not_a_refusal() -> None:
    options = GateOptions(regression_set="unused", min_class_products=5, max_recall_drop=0.10)
    champion = _scores(0.80, {1: _hits(15, 12), 2: _hits(15, 12)})
    # class 1: 3 products lost and 1 won (recall 0.80 -> 0.67): one-sided McNemar p = 5/16
    # class 2: 5 lost, none won (0.80 -> 0.47): p = 1/32
    shuffled_answers = _scores(0.78, {1: _hits(9, 9) + [False, False, False, True, False, False],
                                      2: _hits(15, 7)})
    decision = decide([_candidate("2"), _candidate("1")], [shuffled_answers, champion], options, {})
    assert [c["code"] for c in decision["failed_classes"]] == [2]
    assert decision["failed_classes"][0]["p_value"] == pytest.approx(1 / 32, abs=1e-4)
    every_drop = GateOptions(regression_set="unused", min_class_products=5, recall_drop_significance=1.0)
    judged_naively = decide([_candidate("2"), _candidate("1")], [shuffled_answers, champion], every_drop, {})
    assert [c["code"] for c in judged_naively["failed_classes"]] == [2, 1]


def test_a_drop_in_a_figure_both_bundles_recorded_refuses() -> None:
    options = GateOptions(regression_set="unused")
    same = _scores(0.9, {1: _hits(10, 9)})
    decision = decide([_candidate("2", val=0.70), _candidate("1", val=0.75)], [same, same], options, {})
    assert decision["decision"] == "refused" and "recorded validation weighted F1 fell" in decision["reason"]
    unrecorded = decide([_candidate("2"), _candidate("1", val=0.75)], [same, same], options, {})
    assert unrecorded["decision"] == "passed"  # compared only where both recorded it


def test_recorded_figures_are_compared_only_between_models_trained_on_the_same_data() -> None:
    options = GateOptions(regression_set="unused")
    same = _scores(0.9, {1: _hits(10, 9)})
    after_a_drop = decide([_candidate("2", val=0.61, data="after"), _candidate("1", val=0.65, data="before")],
                          [same, same], options, {})
    assert after_a_drop["decision"] == "passed" and after_a_drop["recorded_figures"].startswith("not compared")


def _candidate(version: str, val: float | None = None, data: str = "folder") -> Candidate:
    from shopclip.registry.store import ModelRecord

    figures = {} if val is None else {"val_weighted_f1_classify": val}
    record = ModelRecord("shopclip", version, f"/bundles/{version}", 0, tags={lineage.DATA_FINGERPRINT: data})
    return Candidate(record, None, [], set(), figures)


def test_forced_promotion_is_recorded_as_forced(options: RegistryOptions, bundles: Bundles) -> None:
    registry = open_registry(options)
    registry.register(bundles.shuffled)
    decision = promote(registry, "challenger", GateOptions(), force=True, reason="incident 42")
    assert decision["decision"] == "forced" and decision["reason"] == "incident 42"
    record = registry.get(CHAMPION)
    assert record.tags[lineage.GATE] == "forced" and record.alias_events[-1]["event"] == "forced"


def test_rollback_moves_the_champion_back_one_step_at_a_time_and_records_why(options: RegistryOptions,
                                                                          bundles: Bundles,
                                                                          capsys: pytest.CaptureFixture[str]
                                                                          ) -> None:
    registry = open_registry(options)
    for bundle in (bundles.good, bundles.equal, bundles.shuffled):
        registry.register(bundle)
        registry.promote("challenger", event="forced", reason="setup")
    assert registry.get(CHAMPION).version == "3"
    assert model("rollback", "--reason", "bad answers on 1160") == 0
    assert "from version 3 to version 2" in capsys.readouterr().out
    assert registry.get(CHAMPION).version == "2"
    left = registry.get("3").alias_events[-1]
    assert (left["event"], left["to"], left["reason"]) == ("rolled_back", "2", "bad answers on 1160")
    assert registry.get("2").alias_events[-1]["event"] == "restored"
    last = json.loads(registry.client.get_registered_model("shopclip").tags["shopclip.last_alias_change"])
    assert (last["event"], last["from"], last["version"]) == ("rollback", "3", "2")
    assert model("rollback", "--reason", "again") == 0 and registry.get(CHAMPION).version == "1"
    assert model("rollback", "--reason", "once more") == exit_code(NotFound)  # 1 replaced nobody
    assert "nothing to roll back to" in capsys.readouterr().err


def test_commands_fail_with_one_line(options: RegistryOptions, bundles: Bundles,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    empty = [("show",), ("rollback", "--reason", "x"), ("promote", "--regression-set", bundles.regression)]
    for argv in empty:
        assert model(*argv) == exit_code(NotFound), argv
    assert model("list") == 0 and "no versions" in capsys.readouterr().out
    assert model("register", bundles.good) == 0
    capsys.readouterr()
    failures = [(("show", "7"), NotFound, "has no version 7 (versions: 1..1)"),
                (("show", "latest"), InvalidInput, "neither a version number"),
                (("show", "champion"), NotFound, "has no champion"),
                (("promote",), InvalidInput, "regression_set: required"),
                (("register", str(Path(bundles.good).parent)), NotFound, "has no config.json")]
    for argv, error, words in failures:
        assert model(*argv) == exit_code(error), argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, (argv, err)
    missing = f"sqlite:///{Path(options.registry_uri[10:]).parent / 'typo.db'}"
    assert model("show", "--registry-uri", missing) == exit_code(NotFound)
    assert not Path(missing[10:]).exists()  # a read never creates a registry


def test_bundles_training_data_and_regression_set_in_the_object_store(s3, options: RegistryOptions,
                                                                     bundles: Bundles) -> None:
    from shopclip.objectstore import ObjectStore
    from shopclip.staging import BUNDLE_MARKER

    bucket, store = s3.new_bucket(), ObjectStore()
    data, regression = f"s3://{bucket}/labelled", f"s3://{bucket}/regression"
    store.upload(Path(bundles.good).parent / "good-data", data)
    store.upload(bundles.regression, regression)
    with one_torch_thread():
        assert main(["train", "--data", data, "--out", f"s3://{bucket}/models/v1", *TINY_TRAINING]) == 0
    store.upload(bundles.equal, f"s3://{bucket}/models/v2", last=[BUNDLE_MARKER])
    gate_flags = ["--regression-set", regression, "--device", "cpu"]
    for version in ("v1", "v2"):  # v1 recorded its training folder as the URI: the gate mirrors it for k-NN
        assert model("register", f"s3://{bucket}/models/{version}") == 0
        assert model("promote", *gate_flags) == 0
    champion = resolve_champion(options)
    assert (champion.version, champion.source) == ("2", f"s3://{bucket}/models/v2")
    assert champion.bundle_location == champion.source  # no local copy: loaded through the bundle cache
    decision = champion.gate_decisions[-1]
    assert decision["decision"] == "passed"
    assert decision["regression_set"]["products"] == len(CODES) * REGRESSION_PER_CLASS


class DictVectors:
    """KnownVectors in memory, recording what the gate asked for and kept."""

    def __init__(self) -> None:
        self.vectors: dict[tuple[str, int], np.ndarray] = {}
        self.kept: list[tuple[str, int]] = []

    def lookup(self, fingerprint: str, products: list) -> dict[int, np.ndarray]:
        return {p.productid: self.vectors[fingerprint, p.productid] for p in products
                if (fingerprint, p.productid) in self.vectors}

    def keep(self, fingerprint: str, products: list, vectors: np.ndarray) -> None:
        for product, vector in zip(products, vectors, strict=True):
            self.vectors[fingerprint, product.productid] = vector
            self.kept.append((fingerprint, product.productid))


def test_the_gate_reuses_known_reference_vectors_and_keeps_those_it_embeds(options: RegistryOptions,
                                                                          bundles: Bundles) -> None:
    from shopclip.registry.gate import evaluate_gate

    registry = open_registry(options)
    good, shuffled = registry.register(bundles.good), registry.register(bundles.shuffled)
    plain = evaluate_gate(shuffled, good, gate(bundles))
    known = DictVectors()
    first = evaluate_gate(shuffled, good, gate(bundles), known)
    references = first["challenger"]["references"] + first["champion"]["references"]
    assert len(known.kept) == len(set(known.kept)) == references  # each model's references, embedded once
    assert first["challenger"]["reused_references"] == first["champion"]["reused_references"] == 0
    again = evaluate_gate(shuffled, good, gate(bundles), known)
    assert len(known.kept) == references  # nothing embedded the second time
    assert again["challenger"]["reused_references"] == again["challenger"]["references"]
    for decision in (first, again):  # the same answers as when every reference is embedded
        assert decision["challenger"]["weighted_f1"] == plain["challenger"]["weighted_f1"]
        assert decision["champion"]["weighted_f1"] == plain["champion"]["weighted_f1"]
        assert decision["decision"] == plain["decision"] == "refused"


def test_the_server_does_not_import_the_registry() -> None:
    server = Path(__file__).resolve().parent.parent / "server"
    imported = set()
    for path in server.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert not [name for name in imported if name.startswith("shopclip.registry")]


def test_the_drop_flows_gate_refuses_a_shuffled_label_model_and_keeps_the_champion(
        options: RegistryOptions, bundles: Bundles, tmp_path: Path) -> None:
    """The DAG's gate task (drop_flow.gate, what `dag.test()` runs): a refusal is a result, the champion stays,
    and a retried task neither registers nor promotes twice."""
    from shopclip.orchestration import drop_flow

    config = drop_flow.config_from_environment({"regression_set": bundles.regression, "device": "cpu",
                                                "work_dir": str(tmp_path / "work"),
                                                "catalogue": str(tmp_path / "catalogue")})
    first = drop_flow.gate(config, bundles.good)
    assert first["promoted"] and first["version"] == "1"
    refused = drop_flow.gate(config, bundles.shuffled)
    assert (refused["promoted"], refused["version"]) == (False, "2")
    assert "regression weighted F1 fell" in refused["decision"]["reason"]
    retried = drop_flow.gate(config, bundles.shuffled)
    assert (retried["promoted"], retried["version"]) == (False, "2")
    registry = open_registry(options)
    assert registry.get(CHAMPION).version == "1" and len(registry.versions()) == 2
    assert drop_flow._champion(config).version == "1"  # what publish builds the next index with
