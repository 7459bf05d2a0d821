"""Released networks read without the authors' code: pickles written here in their persistence format
(each network class a `_reconstruct_persistent_obj(meta)` call carrying its module source, which must
never run; layers as torch.nn classes; tensors as storages), as a plain .pkl and as a torch.save .pt. The
loaded network equals imm_ext's model built from the same state; tensors it does not use are reported;
a payload that would run code is refused; `imm-ext sample` samples the file with the paper's settings."""
import pickle
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from imm_ext.cli import main
from imm_ext.models import DiT, UNet, load_authors_state_dict, load_released
from imm_ext.restricted_pickle import UnsafePickleError
from imm_ext.train.evaluation import load_trained_model

from test_models_interop import DIT, UNET, authors_dit_state_dict, authors_unet_state_dict

SOURCE_THAT_MUST_NOT_RUN = "import pathlib\npathlib.Path('source-ran').touch()\n"


@pytest.fixture
def persistence(monkeypatch):
    """A stand-in for the authors' torch_utils.persistence, so pickle can name its reconstructor."""
    package, module = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the authors' loader would run here; imm_ext must not")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    package.persistence = module
    monkeypatch.setitem(sys.modules, "torch_utils", package)
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)
    return module


def persistent(persistence, class_name, init_kwargs):
    """An nn.Module that pickles as the authors' persistent classes do: reconstructor, (meta,), no state."""

    class Persistent(nn.Module):
        def __reduce__(self):
            meta = {"type": "class", "version": 6, "module_src": SOURCE_THAT_MUST_NOT_RUN, "class_name": class_name,
                    "state": dict(self.__dict__)}
            return persistence._reconstruct_persistent_obj, (meta,), None

    module = Persistent()
    module._init_args, module._init_kwargs = (), dict(init_kwargs)
    return module


def network_tree(root: nn.Module, state_dict):
    """Nested torch.nn modules holding `state_dict` under the same key names."""
    for key, value in state_dict.items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        module.register_parameter(name, nn.Parameter(value.float(), requires_grad=False))
    return root


def authors_file(persistence, path, model_class, model_kwargs, state_dict, settings):
    wrapper = persistent(persistence, "IMMPrecond", settings)
    wrapper.add_module("model", network_tree(persistent(persistence, model_class, model_kwargs), state_dict))
    wrapper.register_buffer("sampling_table", torch.arange(3.0))  # a tensor the network does not use
    wrapper.register_buffer("scratch", torch.zeros(2), persistent=False)
    payload = {"ema": wrapper, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {"resolution": 8}}
    if path.suffix == ".pt":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


DIT_SETTINGS = {"img_resolution": DIT["input_size"], "img_channels": DIT["in_channels"],
                "label_dim": DIT["num_classes"], "model_type": "DiT", "noise_schedule": "fm", "f_type": "euler_fm",
                "temb_type": "stride", "time_scale": 1000, "sigma_data": 0.5, "eps": np.float64(0.0), "T": 0.994}
DIT_KWARGS = {"img_resolution": DIT["input_size"], "in_channels": DIT["in_channels"], "label_dim": DIT["num_classes"],
              "patch_size": DIT["patch_size"], "hidden_size": DIT["hidden_size"], "depth": DIT["depth"],
              "num_heads": DIT["heads"]}


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_a_released_dit_loads_as_imm_ext_builds_it_and_nothing_from_the_file_runs(tmp_path, persistence, suffix,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = authors_dit_state_dict()
    path = authors_file(persistence, tmp_path / f"net{suffix}", "DiT", DIT_KWARGS, state, DIT_SETTINGS)
    released = load_released(path)
    assert not (tmp_path / "source-ran").exists()
    assert released.class_name == "IMMPrecond" and released.settings["temb_type"] == "stride"
    assert released.extra_keys == ["sampling_table"]
    expected = load_authors_state_dict(DiT(**DIT), {k: v.float() for k, v in state.items()})
    assert isinstance(released.network, DiT)
    for name, value in expected.state_dict().items():
        assert torch.equal(released.network.state_dict()[name], value), name
    model, config, info, step = load_trained_model(path)
    assert config.method.time_embedding == "stride" and config.method.guidance == 1.5 and step == 0
    assert info.sample_shape == (3, 8, 8) and info.num_classes == 4 and config.data.vae == "stabilityai/sd-vae-ft-ema"


def test_a_released_unet_samples_from_the_command_line(tmp_path, persistence):
    state = authors_unet_state_dict()
    settings = {"img_resolution": 8, "img_channels": 3, "label_dim": 4, "model_type": "SongUNet", "f_type": "simple_edm",
                "temb_type": "identity", "eps": 0.006, "T": 0.994, "noise_schedule": "fm"}
    kwargs = {"img_resolution": 8, "dropout": 0.0}  # the sizes are read from the tensors
    path = authors_file(persistence, tmp_path / "cifar.pkl", "SongUNet", kwargs, state, settings)
    released = load_released(path)
    expected = load_authors_state_dict(UNet(**UNET), {k: v.float() for k, v in state.items()})
    assert all(torch.equal(released.network.state_dict()[k], v) for k, v in expected.state_dict().items())
    assert main(["sample", "--ckpt", str(path), "--n", "3", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as samples:  # the CIFAR-10 recipe: 2 steps
        assert samples["samples_2step"].shape == (3, 3, 8, 8) and np.isfinite(samples["samples_2step"]).all()


class _RunsCode:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


@pytest.mark.parametrize("suffix", [".pkl", ".pt"])
def test_a_payload_that_would_run_code_is_refused(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / f"evil{suffix}"
    if suffix == ".pt":
        torch.save({"ema": _RunsCode()}, path)
    else:
        path.write_bytes(pickle.dumps({"ema": _RunsCode()}))
    with pytest.raises(UnsafePickleError, match=r"refers to (posix|os)\.system, which a released network does not need"):
        load_released(path)
    with pytest.raises(UnsafePickleError):
        load_trained_model(path)
    assert not (tmp_path / "pwned").exists()


def test_files_that_hold_no_network_or_the_wrong_one_are_named(tmp_path, persistence):
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"ema": [1, 2]}))
    with pytest.raises(ValueError, match="holds no network"):
        load_released(tmp_path / "plain.pkl")
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match="junk.pkl"):
        load_released(tmp_path / "junk.pkl")
    state = authors_dit_state_dict()
    del state["final_layer.linear.bias"]
    path = authors_file(persistence, tmp_path / "short.pkl", "DiT", DIT_KWARGS, state, DIT_SETTINGS)
    with pytest.raises(ValueError, match=r"short\.pkl.*missing keys \(1\): final_layer\.linear\.bias"):
        load_released(path)
    other = authors_file(persistence, tmp_path / "gan.pkl", "StyleGAN", {}, {"w": torch.zeros(1)}, DIT_SETTINGS)
    with pytest.raises(ValueError, match="'StyleGAN'; imm_ext reads DiT"):
        load_released(other)
