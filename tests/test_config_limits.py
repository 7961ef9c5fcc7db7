"""Limits of the config, the rating scale, synth and tune: each bad value is one clean error."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from resrec import config as config_module
from resrec.cli import app
from resrec.config import (
    MAX_BATCH,
    MAX_EMBEDDING_DIM,
    MAX_WIDTH,
    TrainConfig,
    available_memory,
    check_model_memory,
    load_config_file,
    model_memory,
    preset,
)
from resrec.data.ratings import MAX_SCALE_STEPS, RatingScale
from resrec.data.synth import synthesize
from resrec.errors import ConfigError
from resrec.models.base import build_model

runner = CliRunner()


def _clean_error(result: Any, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert text in result.output, result.output
    assert "Traceback" not in result.output


def _train(udata: Path, *extra: str) -> Any:
    args = ["train", "--ratings", str(udata), "--epochs", "1", "--threads", "1", *extra]
    return runner.invoke(app, args)


def _train_with_config(udata: Path, tmp_path: Path, fields: dict[str, Any]) -> Any:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(fields))
    return _train(udata, "--config", str(path), "--out", str(tmp_path / "run"))


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees every unused-field warning (they are logged once per process)."""
    monkeypatch.setattr(config_module, "_WARNED", set())


# -- 1. --scale --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scale, problem",
    [
        ("1:inf:1", "LOW, HIGH and STEP must be finite numbers"),
        ("nan:5:1", "LOW, HIGH and STEP must be finite numbers"),
        ("0:1e308:1e-300", "HIGH - LOW is inf steps; at most 1,000 are allowed"),
        ("-1e308:1e308:1", "HIGH - LOW is inf steps"),
        ("0:10000:1", "HIGH - LOW is 1e+04 steps; at most 1,000 are allowed"),
        ("5:1:1", "LOW must be below HIGH"),
        ("1:1:1", "LOW must be below HIGH"),
        ("1:5:0", "STEP must be above 0"),
        ("1:5:-1", "STEP must be above 0"),
        ("1:5:0.3", "HIGH - LOW must be a whole number of steps"),
    ],
)
def test_every_scale_value_is_checked(
    udata_file: Path, tmp_path: Path, scale: str, problem: str
) -> None:
    result = _train(udata_file, "--scale", scale, "--out", str(tmp_path / "run"))
    _clean_error(result, f"error: --scale '{scale}': {problem}")
    assert "hint: give LOW:HIGH:STEP with finite LOW < HIGH and STEP > 0" in result.output
    assert not (tmp_path / "run").exists()


def test_a_scale_that_is_not_three_numbers_names_the_option(udata_file: Path) -> None:
    _clean_error(_train(udata_file, "--scale", "1:5"), "--scale must be LOW:HIGH:STEP")


def test_rating_scale_checks_its_values_when_made() -> None:
    with pytest.raises(ConfigError, match=r"got 0.0:1e\+308:1e-300 \(HIGH - LOW is inf steps"):
        RatingScale(0.0, 1e308, 1e-300)
    with pytest.raises(ConfigError, match="must be finite numbers"):
        RatingScale(1.0, 10**400, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rating scale needs low < high"):
        RatingScale(5, 1, 1)


def test_scales_up_to_the_most_steps_are_accepted() -> None:
    assert RatingScale(0, MAX_SCALE_STEPS, 1).high == 1000
    assert RatingScale.parse("0:100:0.1").step == 0.1
    assert RatingScale.parse("-10:10:0.5").describe() == "-10 to 10 in steps of 0.5"
    with pytest.raises(ConfigError, match="1e\\+03 steps"):
        RatingScale(0, MAX_SCALE_STEPS + 1, 1)


def test_a_scale_that_fits_the_file_still_trains(udata_file: Path, tmp_path: Path) -> None:
    result = _train(udata_file, "--scale", "1:5:1", "--out", str(tmp_path / "run"))
    assert result.exit_code == 0, result.output


# -- 2, 3, 5. config fields: ranges, finiteness ----------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"schedule": "step", "schedule_step": 0}, "schedule_step must be in [1, 1000000]; got 0"),
        ({"optimizer": "adam", "betas": [0.9]}, "betas must be a list of two finite numbers"),
        ({"optimizer": "adam", "betas": [0.9, 0.999, 5]}, "got (0.9, 0.999, 5)"),
        ({"optimizer": "adam", "betas": [1.5, -3]}, "betas must both be in [0, 1); got (1.5, -3)"),
        ({"optimizer": "adam", "betas": [0.9, 1]}, "betas must both be in [0, 1)"),
        ({"betas": 0.9}, "betas must be a list of two finite numbers"),
        ({"eval_batch_size": -5}, "eval_batch_size must be in [1, 16777216]; got -5"),
        ({"eval_batch_size": 0}, "eval_batch_size must be in [1, 16777216]; got 0"),
        ({"embedding_dim": 1000000}, "embedding_dim must be in [1, 4096]; got 1000000"),
        ({"hidden": [100000000]}, "hidden widths must be in [1, 65536]; got (100000000,)"),
        ({"hidden": [8] * 65}, "hidden must have at most 64 layers; got 65"),
        ({"hidden": 400}, "hidden must be a list of ints; got 400"),
        ({"side_units": 10**6}, "side_units must be in [1, 65536]"),
        ({"batch_size": 10**9}, "batch_size must be in [1, 16777216]"),
        ({"user_chunk": 10**30}, "user_chunk must be in [0, 16777216]"),
        ({"epochs": 10**7}, "epochs must be in [1, 1000000]"),
        ({"threads": 10**6}, "threads must be in [0, 4096]"),
        ({"init_scale": 0}, "init_scale must be > 0 and at most 1"),
        ({"init_scale": -0.05}, "init_scale must be > 0 and at most 1"),
        ({"eps": 0}, "eps must be > 0 and at most 1"),
        ({"schedule_gamma": 0}, "schedule_gamma must be > 0 and at most 1"),
        ({"schedule_gamma": 2}, "schedule_gamma must be > 0 and at most 1"),
        ({"test_fraction": 1.0}, "test_fraction must be in [0, 1)"),
        ({"valid_fraction": -0.1}, "valid_fraction must be in [0, 1)"),
        ({"test_fraction": 0.5, "valid_fraction": 0.5}, "test_fraction + valid_fraction"),
        ({"extra": [1, 2]}, "extra must be a JSON object; got [1, 2]"),
        (
            {"side_input": "movie_ratings", "model": "mf"},
            "side_input 'movie_ratings' is for model 'residual' only; got model 'mf'",
        ),
        (
            {"side_input": "movie_ratings", "model": "deep"},
            "side_input 'movie_ratings' is for model 'residual' only; got model 'deep'",
        ),
    ],
)
def test_config_values_out_of_range_are_clean_errors(
    udata_file: Path, tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    result = _train_with_config(udata_file, tmp_path, {**fields, "epochs": fields.get("epochs", 1)})
    _clean_error(result, message)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_float_in_a_config_file_says_finite(
    udata_file: Path, tmp_path: Path, value: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(f'{{"lr": {value}}}')
    result = _train(udata_file, "--config", str(path))
    shown = {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[value]
    _clean_error(result, f"lr must be a finite number; got {shown}")


def test_non_finite_options_on_the_command_line_say_finite(udata_file: Path) -> None:
    _clean_error(_train(udata_file, "--lr", "nan"), "lr must be a finite number; got nan")
    _clean_error(_train(udata_file, "--dropout", "inf"), "dropout must be a finite number")


def test_huge_sizes_on_the_command_line_are_refused_before_reading(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"  # never read: the config is checked first
    _clean_error(
        _train(missing, "--hidden", "100000000"),
        "hidden widths must be in [1, 65536]; got (100000000,)",
    )
    _clean_error(
        _train(missing, "--embedding-dim", "100000000"),
        "embedding_dim must be in [1, 4096]; got 100000000",
    )


_FLOAT_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if f.type == "float"]


@pytest.mark.parametrize("name", _FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_every_float_field_must_be_finite(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be a finite number; got {value}$"):
        TrainConfig().replace(**{name: value})


def test_betas_must_hold_finite_numbers() -> None:
    with pytest.raises(ConfigError, match="two finite numbers"):
        TrainConfig(betas=(math.nan, 0.9))
    with pytest.raises(ConfigError, match="two finite numbers"):
        TrainConfig().replace(betas="ab")


def test_extra_must_be_json() -> None:
    with pytest.raises(ConfigError, match="extra must hold only JSON values"):
        TrainConfig(extra={"when": object()})
    assert TrainConfig(extra={"note": [1, "a", None]}).extra == {"note": [1, "a", None]}


def test_the_bounds_themselves_are_accepted() -> None:
    config = TrainConfig(
        embedding_dim=MAX_EMBEDDING_DIM,
        hidden=(MAX_WIDTH, 1),
        side_units=MAX_WIDTH,
        batch_size=MAX_BATCH,
        eval_batch_size=MAX_BATCH,
        schedule="step",
        schedule_step=1,
        schedule_gamma=1.0,
        eps=1.0,
        init_scale=1.0,
    )
    assert config.embedding_dim == 4096 and config.hidden == (65536, 1)
    assert TrainConfig().replace(hidden=[], betas=[0.0, 0.5]).betas == (0.0, 0.5)


# -- 5. fields the rest of the config does not use ---------------------------------------------


def test_side_input_belongs_to_the_residual_model() -> None:
    with pytest.raises(ConfigError, match="side_input 'movie_ratings' is for model 'residual'"):
        TrainConfig(model="mf", side_input="movie_ratings")
    with pytest.raises(ConfigError, match="got model 'biases'") as info:
        preset("tutorial").replace(model="biases", side_input="movie_ratings")
    assert "side_input 'embeddings'" in (info.value.hint or "")
    # Another model chosen on top of a preset that reads movie ratings: the residual
    # model's side_input does not carry over (compare and tune rely on this).
    assert preset("accurate").replace(model="mf").side_input == "embeddings"
    assert preset("accurate").replace(model="residual").side_input == "movie_ratings"


def test_a_saved_config_from_before_the_check_still_loads() -> None:
    saved = {**preset("accurate").to_dict(), "model": "deep", "side_input": "movie_ratings"}
    loaded = TrainConfig.from_dict(saved)
    assert loaded.model == "deep" and loaded.side_input == "embeddings"


def test_accurate_preset_still_trains_another_model(udata_file: Path, tmp_path: Path) -> None:
    result = _train(
        udata_file, "--preset", "accurate", "--model", "mf", "--out", str(tmp_path / "r")
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["config"]
    assert saved["model"] == "mf" and saved["side_input"] == "embeddings"


@pytest.mark.parametrize(
    "base, change, field, where",
    [
        ("tutorial", {"betas": [0.5, 0.9]}, "betas (0.5, 0.9)", "optimizer 'adam' only"),
        ("fast", {"momentum": 0.5}, "momentum 0.5", "optimizer 'sgd' only"),
        ("tutorial", {"eps": 1e-3}, "eps 0.001", "optimizer 'adam' or 'adagrad' only"),
        ("tutorial", {"schedule_step": 3}, "schedule_step 3", "schedule 'step' only"),
        ("tutorial", {"schedule_gamma": 0.1}, "schedule_gamma 0.1", "schedule 'step' only"),
        ("tutorial", {"side_units": 64}, "side_units 64", "side_input 'movie_ratings' only"),
        ("tutorial", {"bias_passes": 3}, "bias_passes 3", "model 'biases' only"),
        ("tutorial", {"l2_implicit": 0.1}, "l2_implicit 0.1", "implicit_feedback true only"),
        ({"model": "mf"}, {"hidden": [16]}, "hidden (16,)", "side_input 'embeddings' only"),
        ({"model": "biases"}, {"embedding_dim": 8}, "embedding_dim 8", "'mf' and 'deep' only"),
    ],
)
def test_a_changed_field_that_is_not_used_is_a_warning(
    caplog: pytest.LogCaptureFixture,
    base: str | dict[str, Any],
    change: dict[str, Any],
    field: str,
    where: str,
) -> None:
    start = preset(base) if isinstance(base, str) else TrainConfig(**base)
    with caplog.at_level(logging.WARNING, logger="resrec.config"):
        start.replace(**change)
        start.replace(**change)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings  # once per combination, not per replace
    assert warnings[0].startswith(f"{field} has no effect: it is used with ")
    assert where in warnings[0]


def test_fields_that_are_used_or_unchanged_warn_of_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="resrec.config"):
        for name in ("tutorial", "fast", "accurate"):
            config = preset(name)
            config.replace(**config.to_dict())  # a whole config file, as tune writes one
            TrainConfig.from_dict(config.to_dict())
        preset("tutorial").replace(optimizer="adam", betas=[0.5, 0.9])
        preset("tutorial").replace(optimizer="adam")  # betas are the defaults: no change
        preset("fast").replace(momentum=0.9)  # the value it already has
    assert caplog.records == []


def test_unused_field_warning_reaches_the_command_line(udata_file: Path, tmp_path: Path) -> None:
    result = _train_with_config(udata_file, tmp_path, {"betas": [0.5, 0.9]})
    assert result.exit_code == 0, result.output
    assert (
        "WARNING betas (0.5, 0.9) has no effect: it is used with optimizer 'adam' only, "
        "and this config has optimizer 'sgd'"
    ) in result.output


# -- 4. memory of the model ------------------------------------------------------------


def test_model_memory_counts_the_parameters_of_the_built_model() -> None:
    n_users, n_movies = 30, 20
    mf = TrainConfig(model="mf", embedding_dim=6, optimizer="adam")
    params = sum(p.numel() for p in build_model(mf, n_users, n_movies, seed=0).parameters())
    assert sum(model_memory(mf, n_users, n_movies).values()) == 4 * 4 * params  # 4 copies

    deep = TrainConfig(model="deep", embedding_dim=6, hidden=(8, 4), momentum=0.9)
    model = build_model(deep, n_users, n_movies, seed=0)
    rows = model.user_factors.weight.numel() + model.movie_factors.weight.numel()
    dense = sum(p.numel() for p in model.side.parameters())
    parts = model_memory(deep, n_users, n_movies)
    assert parts == {
        "embedding_dim 6 x (users + movies)": 3 * 4 * rows,  # weights, copy, momentum
        "hidden [8, 4]": 4 * 4 * dense,  # and a gradient
    }


def test_model_memory_of_the_ratings_side_and_the_baselines() -> None:
    accurate = preset("accurate")
    parts = model_memory(accurate, 1000, 100)
    assert parts["side_units 500 x users"] == 4 * (5 * 2 * 1000 * 500 + 2 * 100 * 500)
    assert "embedding_dim 64 x (users + movies + implicit)" in parts
    assert model_memory(TrainConfig(model="global-mean"), 1000, 100) == {}
    assert model_memory(TrainConfig(model="biases"), 1000, 100) == {
        "biases of users and movies": 4 * 4 * 1100
    }


def test_a_model_larger_than_the_memory_is_refused() -> None:
    config = TrainConfig(model="mf", embedding_dim=MAX_EMBEDDING_DIM)
    with pytest.raises(ConfigError) as info:
        check_model_memory(config, 1_000_000, 100_000, available=8 * 10**9)
    message = str(info.value)
    assert message.startswith("the model needs about 54.1 GB of memory to train (1,000,000 users")
    assert "more than the 8 GB available; embedding_dim 4096 x (users + movies) takes 54.1 GB" in (
        message
    )
    assert "lower embedding_dim, hidden or side_units" in (info.value.hint or "")
    wide = TrainConfig(hidden=(MAX_WIDTH, MAX_WIDTH))
    with pytest.raises(ConfigError, match=r"hidden \[65536, 65536\] takes 68.7 GB"):
        check_model_memory(wide, 100, 100, available=16 * 10**9)


def test_a_model_that_fits_is_not_refused() -> None:
    config = preset("tutorial")
    estimate = check_model_memory(config, 943, 1682, available=10**9)
    assert estimate == sum(model_memory(config, 943, 1682).values())
    assert 10**5 < estimate < 10**7  # ML-100K's sizes: about half a megabyte


def test_nothing_is_refused_when_the_memory_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "available_memory", lambda: None)
    config = TrainConfig(embedding_dim=MAX_EMBEDDING_DIM)
    assert check_model_memory(config, 10**7, 10**6) > 5 * 10**11


def test_available_memory_is_found_on_this_machine() -> None:
    found = available_memory()
    assert found is None or found > 0


def test_available_memory_falls_back_when_meminfo_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_file(*args: object, **kwargs: object) -> None:
        raise OSError("no /proc here")

    monkeypatch.setattr(config_module, "open", no_file, raising=False)
    found = available_memory()
    assert found is None or found > 0


# -- 6. synth ------------------------------------------------------------------------


def _synth(out: Path, *extra: str) -> Any:
    sizes = ["--users", "50", "--movies", "30", "--ratings", "1200"]
    return runner.invoke(app, ["synth", "--out", str(out), *sizes, *extra])


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--seed", "-1"), "seed must be in [0, 4294967295]; got -1"),
        (("--seed", str(2**32)), "seed must be in [0, 4294967295]; got 4294967296"),
        (("--users", str(10**20)), "n_users must be at most 2,147,483,647"),
        (("--movies", str(2**31)), "n_movies must be at most 2,147,483,647"),
        (("--users", "-3"), "n_users, n_movies, rank and min_user_ratings must be at least 1"),
        (("--ratings", "-1"), "n_ratings must lie between"),
    ],
)
def test_synth_options_out_of_range_are_clean_errors(
    tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    out = tmp_path / "syn8"
    _clean_error(_synth(out, *extra), message)
    assert not out.exists()


def test_synth_takes_the_largest_seed(tmp_path: Path) -> None:
    result = _synth(tmp_path / "syn", "--seed", str(2**32 - 1))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "syn" / "ratings.csv").read_text().count("\n") == 1201


def test_synth_refuses_a_table_larger_than_the_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "available_memory", lambda: 10_000)
    out = tmp_path / "big"
    result = _synth(out)
    _clean_error(result, "1,200 ratings of 50 users and 30 movies need about 0.0 GB of memory")
    assert "hint: ask for fewer ratings (--ratings)" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"noise": math.nan}, "noise must be a finite number; got nan"),
        ({"noise": math.inf}, "noise must be a finite number; got inf"),
        ({"noise": -0.1}, "noise must be >= 0"),
        ({"rank": 0}, "must be at least 1"),
        ({"rank": 5000}, "rank must be at most 1,024; got 5000"),
        ({"seed": 1.5}, "seed must be a whole number; got 1.5"),
        ({"seed": True}, "seed must be a whole number; got True"),
        ({"n_users": 50.0}, "n_users must be a whole number; got 50.0"),
    ],
)
def test_synthesize_checks_its_arguments(arguments: dict[str, Any], message: str) -> None:
    sizes: dict[str, Any] = {"n_users": 50, "n_movies": 30, "n_ratings": 1200}
    with pytest.raises(ConfigError) as info:
        synthesize(**{**sizes, **arguments})
    assert message in str(info.value)


# -- 7. tune --------------------------------------------------------------------------


def _capture_tune(monkeypatch: pytest.MonkeyPatch) -> dict[str, TrainConfig]:
    seen: dict[str, TrainConfig] = {}

    def fake_tune(table: object, *, config: TrainConfig, **kwargs: object) -> object:
        seen["config"] = config
        raise ConfigError("stopped by the test")

    monkeypatch.setattr("resrec.tune.tune", fake_tune)
    return seen


def _tune(udata: Path, out: Path, *extra: str) -> Any:
    args = ["tune", "--ratings", str(udata), "--trials", "1", "--out", str(out), *extra]
    return runner.invoke(app, args)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (("--preset", "fast"), 0.05),  # the preset has none: tune's default
        (("--preset", "tutorial"), 0.05),
        (("--preset", "accurate"), 0.05),  # the preset's own
        (("--preset", "fast", "--valid-fraction", "0.2"), 0.2),
    ],
)
def test_tune_has_a_valid_fraction_option(
    udata_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    expected: float,
) -> None:
    seen = _capture_tune(monkeypatch)
    _clean_error(_tune(udata_file, tmp_path / "best.json", *extra), "stopped by the test")
    assert seen["config"].valid_fraction == expected


def test_tune_keeps_the_valid_fraction_of_a_config_file(
    udata_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _capture_tune(monkeypatch)
    path = tmp_path / "config.json"
    path.write_text('{"valid_fraction": 0.15}')
    args = ("--preset", "fast", "--config", str(path))
    _clean_error(_tune(udata_file, tmp_path / "best.json", *args), "stopped by the test")
    assert seen["config"].valid_fraction == 0.15


def test_tune_without_validation_names_the_option(udata_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="optuna is the optional extra resrec[tune]")
    result = _tune(udata_file, tmp_path / "best.json", "--preset", "fast", "--valid-fraction", "0")
    _clean_error(result, "tune needs a validation split")
    assert "hint: give resrec tune --valid-fraction above 0 (e.g. 0.05)" in result.output
    assert not (tmp_path / "best.json").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--seed", "-1"), "--seed must be in [0, 4294967295]; got -1"),
        (("--seed", str(2**32)), "--seed must be in [0, 4294967295]"),
        (("--timeout", "inf"), "--timeout must be a finite number of seconds above 0; got inf"),
        (("--valid-fraction", "nan"), "valid_fraction must be a finite number; got nan"),
        (("--valid-fraction", "1"), "valid_fraction must be in [0, 1); got 1.0"),
    ],
)
def test_tune_options_out_of_range_are_clean_errors(
    udata_file: Path, tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    _clean_error(_tune(udata_file, tmp_path / "best.json", *extra), message)


def test_tune_with_the_fast_preset_runs(udata_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("optuna", reason="optuna is the optional extra resrec[tune]")
    out = tmp_path / "best.json"
    result = _tune(udata_file, out, "--preset", "fast", "--epochs", "1", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["config"]["valid_fraction"] == 0.05


def test_fit_checks_the_model_memory_before_building_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import resrec.config as config_module
    from resrec.data.ratings import WHOLE_STARS, Ratings
    from resrec.workflow import encode_ratings, fit

    ratings = Ratings(
        user_id=np.array([1, 1, 2, 2, 3, 3, 4, 4, 5, 5], dtype=np.int64),
        movie_id=np.array([1, 2, 1, 3, 2, 3, 1, 2, 3, 1], dtype=np.int64),
        rating=np.array([5, 4, 3, 2, 4, 5, 1, 2, 3, 4], dtype=np.float32),
        timestamp=None,
        scale=WHOLE_STARS,
    )
    monkeypatch.setattr(config_module, "available_memory", lambda: 1_000)  # 1 kB free
    built: list[object] = []
    monkeypatch.setattr("resrec.workflow.build_model", lambda *a, **k: built.append(a))
    with pytest.raises(ConfigError, match=r"the model needs about .* of memory to train"):
        fit(encode_ratings(ratings), preset("tutorial").replace(epochs=1))
    assert built == []  # refused before any table was allocated


def test_a_field_given_twice_in_a_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text('{"lr": 0.1, "epochs": 2, "lr": 0.2}')
    with pytest.raises(ConfigError, match=r"'lr' is given twice \(0\.1 and 0\.2\)"):
        load_config_file(path)
