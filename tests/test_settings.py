"""shopclip.settings: one dataclass field = one flag, one SHOPCLIP_* variable, one default, for every command."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from shopclip import settings
from shopclip.errors import InvalidInput
from shopclip.indexer import cli as index_cli
from shopclip.indexer.options import AnnParams, BuildOptions
from shopclip.settings import option


@dataclass(frozen=True)
class Inner:
    depth: int = option(3, "how deep")


@dataclass(frozen=True)
class Outer:
    name: str = option("a", "a name")
    ratio: float | None = option(None, "a ratio")
    folder: Path = option(Path("out"), "a folder")
    candidates: tuple[float, ...] = option((0.5, 1.0), "candidate values")
    fast: bool = option(True, "go fast", flag="speed")
    inner: Inner = option(default_factory=Inner)
    internal: int = 7  # no option(): not a flag

    def __post_init__(self) -> None:
        if self.inner.depth < 0:
            raise InvalidInput("depth", "must be >= 0")


def parser_for(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, cls)
    return parser


def test_flags_win_over_variables_which_win_over_defaults() -> None:
    args = parser_for(Outer).parse_args(["--name", "b", "--no-speed", "--candidates", "1,2.5"])
    env = {"SHOPCLIP_NAME": "ignored", "SHOPCLIP_RATIO": "0.25", "SHOPCLIP_DEPTH": "9", "SHOPCLIP_FOLDER": "/x"}
    value = settings.from_sources(Outer, args, env)
    assert value == Outer(name="b", ratio=0.25, folder=Path("/x"), candidates=(1.0, 2.5), fast=False,
                          inner=Inner(depth=9))
    assert settings.from_sources(Outer, parser_for(Outer).parse_args([]), {}) == Outer()


def test_fields_without_option_are_not_flags() -> None:
    destinations = {action.dest for action in parser_for(Outer)._actions}
    assert {"name", "ratio", "folder", "candidates", "fast", "depth"} <= destinations
    assert "internal" not in destinations and "inner" not in destinations
    assert settings.from_sources(Outer, parser_for(Outer).parse_args([]), {"SHOPCLIP_INTERNAL": "9"}).internal == 7


@pytest.mark.parametrize("env, field", [({"SHOPCLIP_DEPTH": "deep"}, "depth"), ({"SHOPCLIP_SPEED": "maybe"}, "fast"),
                                        ({"SHOPCLIP_DEPTH": "-1"}, "depth")])
def test_a_bad_variable_names_the_field(env: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        settings.from_sources(Outer, parser_for(Outer).parse_args([]), env)
    assert caught.value.field == field


def test_a_bad_flag_is_an_argparse_error_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser_for(Outer).parse_args(["--depth", "deep"])
    assert exit_info.value.code == 2 and "--depth" in capsys.readouterr().err


def test_index_build_flags_come_from_the_build_options() -> None:
    parser = argparse.ArgumentParser()
    index_cli.register(parser.add_subparsers())
    args = parser.parse_args(["index", "build", "--index", "ivf", "--keep", "5", "--no-gpu"])
    options = index_cli._build_options(args)
    assert options == BuildOptions(ann=AnnParams(kind="ivf", use_gpu=False), keep_versions=5)
    defaults = index_cli._build_options(parser.parse_args(["index", "build"]))
    assert defaults == BuildOptions()


def test_ingest_takes_the_servers_limit_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    index_cli.register(parser.add_subparsers())
    monkeypatch.setenv("SHOPCLIP_MAX_DESCRIPTION_CHARS", "40000")
    args = parser.parse_args(["index", "ingest", "drop", "--max-image-bytes", "2048", "--no-image-check"])
    options = index_cli._source_options(args)
    assert (options.limits.max_image_bytes, options.limits.max_description_chars) == (2048, 40000)
    assert options.check_images is False
    monkeypatch.setenv("SHOPCLIP_INDEX_ROOT", "/srv/index")
    assert index_cli._locations(parser.parse_args(["index", "status"])).index_root == Path("/srv/index")


def test_train_flags_are_the_train_config_fields() -> None:
    from shopclip.errors import InvalidConfig
    from shopclip.training import cli as train_cli
    from shopclip.training.config import TrainConfig

    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers())
    base = ["train", "--data", "d", "--out", "o"]
    args = parser.parse_args([*base, "--val-fraction", "0.2", "--sparse-c", "1,2", "--no-refit"])
    assert settings.from_sources(TrainConfig, args, {"SHOPCLIP_EPOCHS": "3"}) == TrainConfig(
        val_fraction=0.2, sparse_c=(1.0, 2.0), refit=False, epochs=3)
    assert settings.from_sources(TrainConfig, parser.parse_args(base), {}) == TrainConfig()
    with pytest.raises(InvalidConfig) as caught:
        settings.from_sources(TrainConfig, parser.parse_args([*base, "--val-fraction", "1.5"]), {})
    assert caught.value.field == "val_fraction"


def test_to_env_hands_every_option_to_a_child_process_unchanged() -> None:
    from shopclip.server.config import ServerConfig

    config = ServerConfig(bundle="runs/b", index_root="runs/i", max_wait_ms=2.5, follow_model=False,
                          prediction_log="sqlite:///x.db", torch_threads=None)
    env = settings.to_env(config)
    assert env["SHOPCLIP_FOLLOW_MODEL"] == "false" and "SHOPCLIP_TORCH_THREADS" not in env
    assert env["SHOPCLIP_MAX_IMAGE_BYTES"] == str(config.limits.max_image_bytes)  # nested options too
    assert ServerConfig.from_sources({}, env) == config


def test_training_threads_are_checked_and_applied(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from shopclip.errors import InvalidConfig
    from shopclip.training import train as training
    from shopclip.training.config import TrainConfig

    with pytest.raises(InvalidConfig) as caught:
        TrainConfig(threads=0)
    assert caught.value.field == "threads"
    applied: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", applied.append)

    class Stop(Exception):
        pass

    def no_trainer(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - only the order matters here
        raise Stop

    monkeypatch.setattr(training, "Trainer", no_trainer)
    with pytest.raises(Stop):
        training.train_products([], "unused", config=TrainConfig(threads=1))
    assert applied == [1]  # set before anything of the run computes
