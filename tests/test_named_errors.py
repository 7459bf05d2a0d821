"""Hostile configs, files and command lines end in an error that names the key, the argument or the file
(never a traceback, a hang or a memory blow-up)."""
import io
import json
import time
import zipfile

import pytest
import torch
from PIL import Image

from imm_ext.cli import main
from imm_ext.data import load_dataset
from imm_ext.models import build, load_model, save_model
from imm_ext.train import Trainer, parse_config
from imm_ext.train.checkpoint import load_checkpoint, save_checkpoint
from imm_ext.train.config import ConfigError

from conftest import tiny_config

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))


def test_yaml_aliases_are_refused_at_once():
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"aliases \(\*a\) are not accepted"):
        parse_config(ALIAS_BOMB, source="bomb.yaml")
    assert time.perf_counter() - started < 5  # refused while reading, not after expanding 9^9 nodes


def test_errors_shorten_long_values():
    with pytest.raises(ConfigError) as error:
        parse_config("train:\n  steps: [" + ", ".join(["1"] * 20_000) + "]\n")
    assert len(str(error.value)) < 300 and "train.steps" in str(error.value)


def test_a_learning_rate_beyond_what_the_optimiser_can_hold_is_named():
    with pytest.raises(ConfigError, match=r"optimizer.lr: must lie in"):
        tiny_config("optimizer.lr=1e39").validate()


def test_overrides_may_follow_options(tmp_path, capsys):
    assert main(["train", "--preset", "toy2d", "train.steps=3", "--name", "x", "train.batch_size=64",
                 "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 3" in printed and "batch_size: 64" in printed and "name: x" in printed
    with pytest.raises(SystemExit):
        main(["train", "--print-config", "--no-such-option"])


def test_sample_names_what_a_checkpoint_lacks(tmp_path, capsys):
    result = Trainer(tiny_config("train.steps=1"), run_dir=tmp_path / "run").run()
    state = load_checkpoint(result.checkpoint)
    del state["data_info"]
    damaged = save_checkpoint(state, tmp_path / "damaged", keep=1)
    assert main(["sample", "--ckpt", str(damaged), "--out", str(tmp_path / "grid.png")]) == 2
    assert "lacks 'data_info'" in capsys.readouterr().err


def zip_with_dataset_json(path, document):
    with zipfile.ZipFile(path, "w") as archive:
        picture = io.BytesIO()
        Image.new("RGB", (4, 4)).save(picture, format="PNG")
        archive.writestr("img0.png", picture.getvalue())
        archive.writestr("dataset.json", document)
    return path


@pytest.mark.parametrize("document,match", [
    (json.dumps([["img0.png", 1]]), "must be a JSON object"),
    ("{\"labels\": ", "not valid JSON"),
    (json.dumps({"labels": {"img0.png": 1}}), "list of \\[file name, label\\] pairs"),
    (json.dumps({"labels": [["img0.png"]]}), "list of \\[file name, label\\] pairs")])
def test_a_malformed_dataset_json_names_the_archive(tmp_path, document, match):
    path = zip_with_dataset_json(tmp_path / "data.zip", document)
    with pytest.raises(ValueError, match=match) as error:
        load_dataset("zip", path=str(path))
    assert "data.zip" in str(error.value)


def test_load_model_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="model file .*missing.safetensors' does not exist"):
        load_model(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="garbage.safetensors' is not a readable safetensors file"):
        load_model(garbage)
    path = tmp_path / "mlp.safetensors"
    save_model(build("mlp", width=8, depth=1), path)
    assert isinstance(load_model(path), torch.nn.Module)
    data = path.read_bytes().replace(b'\\"width\\": 8', b'\\"width\\": 9')
    assert data != path.read_bytes()
    (tmp_path / "tampered.safetensors").write_bytes(data)
    with pytest.raises(ValueError, match="tampered.safetensors' cannot be rebuilt from its recipe"):
        load_model(tmp_path / "tampered.safetensors")
