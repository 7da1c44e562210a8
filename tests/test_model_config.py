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


TRAIN = ["train", "--data", "d", "--out", "o"]


def test_model_flags_and_variables_reach_the_model_config() -> None:
    from shopclip.cli import build_parser
    from shopclip.training.cli import train_configs

    args = build_parser().parse_args([*TRAIN, "--text-towers", "ngram,use", "--embed-dim", "64",
                                      "--no-image-pretrained", "--clip", "open_clip:ViT-B-32=/m.pt"])
    model, _ = train_configs(args, {"SHOPCLIP_NGRAM_DIM": "32", "SHOPCLIP_EMBED_DIM": "999",
                                    "SHOPCLIP_TOWER_PRECISION": "float32", "SHOPCLIP_TEXT_TOWERS": "e5"})
    assert model == ModelConfig(backbone="open_clip:ViT-B-32=/m.pt", text_towers=["ngram", "use"], embed_dim=64,
                                image_pretrained=False, ngram_dim=32, tower_precision="float32")
    assert train_configs(build_parser().parse_args(TRAIN), {})[0] == ModelConfig()
    from_env, _ = train_configs(build_parser().parse_args(TRAIN), {"SHOPCLIP_TEXT_TOWERS": "use, ngram"})
    assert from_env.text_towers == ["use", "ngram"]


@pytest.mark.parametrize(("argv", "env", "field"), [
    (["--e5-max-tokens", "2"], {}, "e5_max_tokens"),
    ([], {"SHOPCLIP_EMBED_DIM": "0"}, "embed_dim"),
    ([], {"SHOPCLIP_NGRAM_DIM": "wide"}, "ngram_dim"),
    ([], {"SHOPCLIP_CLIP": "open_clip:"}, "clip"),
])
def test_a_bad_model_option_exits_with_one_line_naming_it(argv, env, field, monkeypatch, capsys) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main([*TRAIN, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0]
