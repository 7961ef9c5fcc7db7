"""Safe model files: weights load without executing code, and damage is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from resrec.config import preset
from resrec.errors import ModelFileError
from resrec.run import load_run, save_run, sha256_of
from resrec.workflow import fit
from tests.conftest import planted_ratings, write_udata


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = preset("tutorial").replace(epochs=1, batch_size=64, hidden=(16,))
    result = fit(planted_ratings(), config)
    return save_run(result, tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture
def run_copy(saved_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved_run, tmp_path / "run"))


def test_checksums_cover_every_file_including_the_weights(run_copy: Path) -> None:
    recorded = json.loads((run_copy / "checksums.json").read_text())
    files = {p.name for p in run_copy.iterdir()} - {"checksums.json"}
    assert set(recorded) == files
    assert recorded["weights.safetensors"] == sha256_of(run_copy / "weights.safetensors")
    load_run(run_copy)  # intact: loads


def test_truncated_weights_are_refused(run_copy: Path) -> None:
    weights = run_copy / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="truncated or altered"):
        load_run(run_copy)
    with pytest.raises(ModelFileError, match="cannot be loaded"):
        load_run(run_copy, verify=False)  # the format itself notices a short file


def test_a_flipped_byte_in_the_weights_is_refused(run_copy: Path) -> None:
    weights = run_copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor: only the checksum can tell
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"weights\.safetensors does not match"):
        load_run(run_copy)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("weights.safetensors", "not a complete run: missing weights.safetensors"),
        ("history.csv", "history.csv is missing"),
        ("checksums.json", "no checksums.json"),
    ],
)
def test_a_deleted_file_is_refused(run_copy: Path, name: str, message: str) -> None:
    (run_copy / name).unlink()
    with pytest.raises(ModelFileError, match=message):
        load_run(run_copy)


def test_a_damaged_checksum_list_is_refused(run_copy: Path) -> None:
    (run_copy / "checksums.json").write_text('{"weights.safetensors": ')
    with pytest.raises(ModelFileError, match=r"checksums\.json"):
        load_run(run_copy)


class _Payload:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_weights_are_never_unpickled(
    run_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pickle in place of the safetensors file: refused, and its code never runs.
    monkeypatch.chdir(tmp_path)
    torch.save({"user_factors.weight": _Payload()}, run_copy / "weights.safetensors")
    with pytest.raises(ModelFileError):
        load_run(run_copy, verify=False)
    assert not (tmp_path / "pwned").exists()


def test_weights_file_is_safetensors(run_copy: Path) -> None:
    data = (run_copy / "weights.safetensors").read_bytes()
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    assert header["__metadata__"]["format"] == "pt"
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")


def test_cli_refuses_a_damaged_checkpoint_without_a_traceback(tmp_path: Path) -> None:
    data = write_udata(tmp_path / "u.data", planted_ratings())
    staging = tmp_path / "run.partial"
    staging.mkdir()
    options = {"ratings": str(data), "layout": "auto", "duplicates": "error"}
    info = {"config": preset("tutorial").to_dict(), "data": {"read_options": options}}
    (staging / "config.json").write_text(json.dumps(info))
    (staging / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    proc = subprocess.run(
        [sys.executable, "-m", "resrec", "train", "--resume", "run"],
        cwd=tmp_path,
        env={**os.environ, "RESREC_CACHE_DIR": str(tmp_path / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "error: checkpoint" in proc.stderr and "cannot be read" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert staging.is_dir()  # kept: the user decides


def _damage(run: Path, how: str) -> None:
    weights = run / "weights.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "flipped":
        data = bytearray(weights.read_bytes())
        data[-5] ^= 0x01
        weights.write_bytes(bytes(data))
    else:
        weights.unlink()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", "does not match its recorded sha256"),
        ("flipped", "does not match its recorded sha256"),
        ("deleted", "missing weights.safetensors"),
    ],
)
def test_cli_refuses_damaged_weights_with_exit_1(run_copy: Path, how: str, message: str) -> None:
    from typer.testing import CliRunner

    from resrec.cli import app

    _damage(run_copy, how)
    result = CliRunner().invoke(app, ["predict", str(run_copy), "--user", "1", "--movie", "2"])
    assert result.exit_code == 1
    reported = str(result.exception) if isinstance(result.exception, ModelFileError) else ""
    assert message in reported + result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- hand-edited runs


def _edit_config(run: Path, edit: Any) -> None:
    """Change ``config.json`` with ``edit(info)`` and re-hash it, as a careful hand would."""
    path = run / "config.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))
    checksums = json.loads((run / "checksums.json").read_text())
    checksums["config.json"] = sha256_of(path)
    (run / "checksums.json").write_text(json.dumps(checksums))


def _set(*keys: str, value: Any) -> Any:
    def edit(info: dict[str, Any]) -> None:
        for key in keys[:-1]:
            info = info[key]
        info[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("mu", value="x"), "mu must be a finite number within the rating scale"),
        (_set("mu", value=float("nan")), "mu must be a finite number"),
        (_set("mu", value=float("inf")), "mu must be a finite number"),
        (_set("mu", value=True), "mu must be a finite number"),
        (_set("mu", value=99), "mu must be a finite number within the rating scale"),
        (_set("scale", value={"low": 5, "high": 1, "step": 1}), "rating scale needs low < high"),
        (_set("scale", "step", value=float("inf")), "scale must be {low, high, step}"),
        (_set("scale", value="1:5:1"), "scale must be {low, high, step}"),
        (_set("model", "n_users", value=61), "60 user_ids but model.n_users is 61"),
        (_set("model", "n_movies", value="40"), "model.n_movies must be a whole number"),
        (_set("model", "n_users", value=-1), "model.n_users must be a whole number"),
        (_set("model", "kind", value="mf"), "model.kind is 'mf' but config.model is"),
        (_set("config", "embedding_dim", value=12), "user_factors.weight has shape [60, 10]"),
        (_set("config", "hidden", value=[8]), "has shape"),
        (_set("config", "lr", value=float("nan")), "config: lr"),
        (_set("config", value=[]), "config must be a JSON object"),
        (_set("config", "model", value="mf"), "model.kind is 'residual' but config.model is 'mf'"),
    ],
)
def test_a_hand_edited_config_is_refused_in_one_line(
    run_copy: Path, edit: Any, message: str
) -> None:
    _edit_config(run_copy, edit)

    with pytest.raises(ModelFileError) as caught:
        load_run(run_copy)

    assert message in caught.value.message
    assert "config.json" in caught.value.message and "\n" not in caught.value.message


def test_a_config_that_is_not_json_is_refused(run_copy: Path) -> None:
    path = run_copy / "config.json"
    path.write_text("{ not json")
    with pytest.raises(ModelFileError, match=r"config\.json: is not valid JSON"):
        load_run(run_copy, verify=False)


def test_weights_of_another_shape_name_both_files_and_the_shapes(run_copy: Path) -> None:
    _edit_config(run_copy, _set("config", "embedding_dim", value=12))

    with pytest.raises(ModelFileError) as caught:
        load_run(run_copy)

    message = caught.value.message
    assert message.startswith("weights.safetensors does not fit ") and "config.json" in message
    assert "[60, 10] in the weights but [60, 12] from the config" in message


def test_non_finite_weights_are_refused(run_copy: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = run_copy / "weights.safetensors"
    state = load_file(str(weights))
    state["movie_bias.weight"][3] = float("nan")
    save_file(state, str(weights), metadata={"format": "pt"})

    with pytest.raises(ModelFileError, match=r"movie_bias\.weight holds NaN or infinite values"):
        load_run(run_copy, verify=False)


def test_train_pairs_out_of_range_are_refused(run_copy: Path) -> None:
    import numpy as np

    np.savez(run_copy / "train_pairs.npz", users=np.array([0, 600]), movies=np.array([1, 2]))
    run = load_run(run_copy, verify=False)

    with pytest.raises(ModelFileError, match="users must be indices from 0 to 59"):
        run.train_pairs()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("mu", value=float("nan")), "mu must be a finite number"),
        (_set("config", "embedding_dim", value=12), "does not fit"),
    ],
)
def test_cli_refuses_a_hand_edited_run_with_exit_1(run_copy: Path, edit: Any, message: str) -> None:
    from typer.testing import CliRunner

    from resrec.cli import app

    _edit_config(run_copy, edit)
    for command in (["predict", "--user", "1", "--movie", "2"], ["similar", "--movie", "2"]):
        result = CliRunner().invoke(app, [command[0], str(run_copy), *command[1:]])
        assert result.exit_code == 1, result.output
        assert message in result.output and "prediction" not in result.output
        assert "Traceback" not in result.output


def test_a_file_given_as_the_run_is_named_as_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "metrics.json"
    afile.write_text("{}")

    with pytest.raises(ModelFileError, match="is a file, not a run directory"):
        load_run(afile)
