"""Custom encoder and decoder networks: by import path and JSON arguments (Python, command line, config.json),
or as an nn.Module instance whose arguments can be recovered; saved as a config, rebuilt in a fresh process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import aekit
from aekit import registry
from aekit.errors import ConfigError

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
ENC, DEC = "custom_nets:ConvEncoder", "custom_nets:ConvDecoder"


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.random((40, 3, 64, 64), dtype=np.float32)


@pytest.fixture(scope="module")
def ds(images):
    return aekit.datasets.from_arrays(images, kind="image", name="images")


def fresh_python(code: str) -> str:
    """Run ``code`` in a new interpreter that imports this aekit and the test networks; its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_path_and_arguments_are_the_config(ds):
    m = aekit.build("vae", dataset=ds, latent_dim=8, encoder=ENC, encoder_args={"width": 4}, decoder=DEC, seed=0)
    cfg = m.config.to_dict()
    assert (cfg["encoder"], cfg["encoder_args"], cfg["decoder"], cfg["decoder_args"]) == (ENC, {"width": 4}, DEC, {})
    enc = m.custom_networks()["encoder"]
    assert type(enc).__name__ == "ConvEncoder" and enc.width == 4  # input_shape and latent_dim came from aekit
    # aekit's head reads the flattened features (8 channels at 8x8) and gives the mean and log-variance
    head = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert any(h.in_features == 8 * 8 * 8 and h.out_features == 16 for h in head)
    json.dumps(cfg)  # JSON all the way
    x = torch.as_tensor(ds.x_train[:4])
    assert m.encode(x).shape == (4, 8) and m.decode(m.encode(x)).shape == (4, 3, 64, 64)
    again = aekit.build("vae", dataset=ds, latent_dim=8, encoder=ENC, encoder_args={"width": 4}, decoder=DEC, seed=0)
    torch.testing.assert_close(again.encode(x), m.encode(x), rtol=0, atol=0)  # the seed covers the user's networks


def test_one_side_custom_the_other_aekit_s(ds):
    m = aekit.build("ae", dataset=ds, latent_dim=4, decoder=DEC, arch="conv", hidden=[4])
    assert set(m.custom_networks()) == {"decoder"}
    assert m.reconstruct(torch.as_tensor(ds.x_train[:2])).shape == (2, 3, 64, 64)


@pytest.mark.parametrize("options, message", [
    ({"encoder": "no_such_pkg.nets:Enc"}, "cannot import module 'no_such_pkg.nets'"),
    ({"encoder": "custom_nets:NoSuch"}, "has no attribute 'NoSuch'"),
    ({"encoder": "os:system", "encoder_args": {"command": "echo never"}}, "is not an nn.Module subclass"),
    ({"encoder": "custom_nets/ConvEncoder"}, "is not an import path"),
    ({"encoder_args": {"width": 4}}, "encoder_args applies to a custom encoder"),
    ({"encoder": ENC, "encoder_args": {"depth": 4}}, "could not be built (TypeError"),
    ({"encoder": ENC, "encoder_args": '{"width": 4'}, "expects a JSON object"),
    ({"encoder": ENC, "encoder_args": {"width": float("nan")}}, "every value must be JSON"),
    ({"decoder": "custom_nets:WrongShape"}, "maps codes of shape (2, 4) to (2, 10), but the likelihood reads"),
    ({"encoder": ENC, "tied": True}, "tied weights"),
])
def test_mistakes_are_one_line(ds, options, message, capfd):
    with pytest.raises(ConfigError) as e:
        aekit.build("ae", dataset=ds, latent_dim=4, **options)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "never" not in capfd.readouterr().out  # os.system was not called


def test_an_instance_is_saved_by_class_and_arguments(ds, tmp_path):
    import custom_nets

    torch.manual_seed(1)
    enc = custom_nets.ConvEncoder(input_shape=(3, 64, 64), width=4)
    m = aekit.build("ae", dataset=ds, latent_dim=4, encoder=enc, decoder=DEC, seed=0)
    assert (m.config.encoder, m.config.encoder_args) == (ENC, {"width": 4})  # input_shape: aekit passes it
    mine = m.custom_networks()["encoder"]
    assert mine is not enc  # the user's module is not taken over, its weights are copied
    for (k, a), (_, b) in zip(mine.state_dict().items(), enc.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    cfg = custom_nets.Configured(input_shape=(3, 64, 64), sizes=[16])
    m2 = aekit.build("ae", dataset=ds, latent_dim=4, encoder=cfg)  # get_config() gives the arguments
    assert m2.config.encoder_args == {"sizes": [16]}


def test_an_instance_that_cannot_be_rebuilt_is_refused(ds):
    import custom_nets

    class Local(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3 * 64 * 64, 4)

        def forward(self, x):
            return self.lin(x.flatten(1))

    cases = [(Local(), "inside a function"), (custom_nets.Hidden(width=3), "argument 'width' of Hidden() cannot be "
                                                                          "recovered"),
             (nn.Linear(4, 4), "are not all JSON values")]
    for net, message in cases:
        with pytest.raises(ConfigError, match="use the import-path form|instead of an instance") as e:
            aekit.build("ae", dataset=ds, latent_dim=4, encoder=net)
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ConfigError, match="encoder_args goes with an import path"):
        aekit.build("ae", dataset=ds, latent_dim=4, encoder=custom_nets.ConvEncoder(width=4), encoder_args={})


def test_cli_train_then_load_and_score_in_a_fresh_process(images, tmp_path, cli, monkeypatch):
    """The command line takes --encoder / --encoder-args; another process rebuilds the run from config.json and
    scores through the Detector."""
    monkeypatch.syspath_prepend(str(TESTS))
    np.save(tmp_path / "x.npy", images)
    code, out, err = cli("train", "vae", "--dataset", tmp_path / "x.npy", "--latent-dim", 4, "--epochs", 1,
                         "--encoder", ENC, "--encoder-args", '{"width": 4}', "--decoder", DEC,
                         "--decoder-args", '{"width": 4}', "--out", tmp_path / "run", "--quiet")
    assert code == 0, err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (saved["encoder"], saved["encoder_args"], saved["decoder_args"]) == (ENC, {"width": 4}, {"width": 4})
    assert all(f.suffix in (".json", ".jsonl", ".safetensors") for f in (tmp_path / "run").iterdir())
    here = aekit.Detector.load(tmp_path / "run").decision_function(images[:5])
    there = fresh_python(f"""
import json, numpy as np, aekit
x = np.load({str(tmp_path / "x.npy")!r})[:5]
model = aekit.load({str(tmp_path / "run")!r})
assert type(model.custom_networks()['encoder']).__name__ == 'ConvEncoder'
print(json.dumps(aekit.Detector.load({str(tmp_path / "run")!r}).decision_function(x).tolist()))
""")
    np.testing.assert_allclose(json.loads(there), here, rtol=1e-6)


def test_bad_arguments_on_the_command_line_are_one_line(images, tmp_path, cli, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    np.save(tmp_path / "x.npy", images)
    code, _, err = cli("train", "ae", "--dataset", tmp_path / "x.npy", "--encoder", ENC, "--encoder-args", "width=4",
                       "--out", tmp_path / "run")
    assert code == 2 and "expects a JSON object" in err and len(err.strip().splitlines()) == 1


def test_a_missing_import_at_load_time_is_one_line(ds, tmp_path, cli):
    m = aekit.build("ae", dataset=ds, latent_dim=4, encoder=ENC, encoder_args={"width": 4})
    aekit.fit(m, ds, aekit.TrainConfig(epochs=1), out_dir=tmp_path / "run", quiet=True)
    path = tmp_path / "run" / "config.json"
    config = json.loads(path.read_text())
    config["config"]["encoder"] = "moved_away.nets:ConvEncoder"
    path.write_text(json.dumps(config))
    with pytest.raises(aekit.RunError, match="config.json: custom encoder .*cannot import module 'moved_away.nets'"):
        aekit.load(tmp_path / "run")
    code, _, err = cli("eval", tmp_path / "run")
    assert code == 2 and "moved_away" in err and len(err.strip().splitlines()) == 1


def test_detector_with_custom_networks_saves_and_loads_in_a_fresh_process(images, tmp_path):
    import custom_nets

    enc = custom_nets.ConvEncoder(width=4)  # an instance: saved as its import path and arguments
    det = aekit.Detector(latent_dim=4, epochs=1, random_state=0, encoder=enc, decoder=DEC,
                         decoder_args={"width": 4}).fit(images)
    assert det.models_[0].config.encoder == ENC
    det.save(tmp_path / "det")
    np.save(tmp_path / "x.npy", images[:6])
    here = det.decision_function(images[:6])
    there = fresh_python(f"""
import json, numpy as np, aekit
det = aekit.Detector.load({str(tmp_path / "det")!r})
assert det.encoder == {ENC!r} and det.encoder_args == {{'width': 4}}
print(json.dumps(det.decision_function(np.load({str(tmp_path / "x.npy")!r})).tolist()))
""")
    np.testing.assert_allclose(json.loads(there), here, rtol=1e-6)


def test_every_family_trains_with_custom_networks(ds):
    """Losses fall for a few steps of every family that has an encoder and a decoder (cvae: the label enters
    through aekit's heads)."""
    rng = np.random.default_rng(1)
    labelled = aekit.datasets.from_arrays(rng.random((40, 3, 64, 64), dtype=np.float32), rng.integers(0, 2, 40),
                                          kind="image", name="labelled")
    for name in registry.MODELS:
        m = registry.build_for(name, labelled, latent_dim=4, encoder=ENC, encoder_args={"width": 4}, decoder=DEC,
                               decoder_args={"width": 4}, seed=0)
        res = aekit.fit(m, labelled, aekit.TrainConfig(epochs=3, lr=3e-3, batch_size=16), quiet=True)
        first, last = res.history[0]["train"], res.history[-1]["train"]
        key = "recon"
        assert last[key] < first[key], (name, first, last)
