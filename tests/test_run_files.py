"""Safe model files: weights load without executing code, and damage is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
