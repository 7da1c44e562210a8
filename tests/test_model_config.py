"""ModelConfig refuses every inconsistent option with an error naming it, before anything is built."""

from __future__ import annotations

import pytest

from shopclip.cli import main
from shopclip.errors import InvalidConfig
from shopclip.model.config import TEXT_TOWERS, ModelConfig
from shopclip.model.text_towers import text_tower_names


def test_the_known_towers_are_the_ones_the_factory_builds() -> None:
    assert sorted(TEXT_TOWERS) == text_tower_names()


@pytest.mark.parametrize(("options", "field"), [
    ({"text_towers": ["use", "nosuchtower"]}, "text_towers"),
    ({"text_towers": []}, "text_towers"),
    ({"codes": [10, 10]}, "codes"),
    ({"embed_dim": 0}, "embed_dim"),
    ({"ngram_buckets": -1}, "ngram_buckets"),
    ({"e5_max_tokens": 2}, "e5_max_tokens"),
    ({"e5_tuned_layers": 13}, "e5_tuned_layers"),
    ({"tower_precision": "fp8"}, "tower_precision"),
    ({"backbone": "open_clip:"}, "clip"),
])
def test_each_mistake_names_its_option(options: dict, field: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        ModelConfig(**options)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)  # what configuration mistakes raised before


def test_the_train_command_answers_a_bad_tower_in_one_line(tmp_path, capsys) -> None:
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "b"), "--text-towers", "nosuchtower"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text_towers" in err[0] and "nosuchtower" in err[0]
