"""Configs keep automatic values as given; resolved() makes them explicit; a model stores its resolved config."""

import dataclasses

import pytest
import torch

from aekit import registry
from aekit.config import ModelConfig, TrainConfig
from aekit.errors import ConfigError
from aekit.models.aae import AAEConfig
from aekit.models.sae import SAEConfig


def test_replace_gives_the_same_config_as_construction():
    a, b = ModelConfig().replace(arch="conv"), ModelConfig(arch="conv")
    assert a == b and a.hidden is None  # the automatic value is kept as given
    assert a.resolved().hidden == b.resolved().hidden == (32, 64)
    assert ModelConfig().resolved().hidden == (256,)
    assert ModelConfig(hidden=(8,)).replace(arch="conv", input_shape=(1, 8, 8)).resolved().hidden == (8,)


def test_sae_sparsity_can_be_replaced():
    c = SAEConfig().replace(sparsity="kl")
    assert c.code_activation == "auto" and c.resolved().code_activation == "sigmoid"
    assert SAEConfig().resolved().code_activation == "relu"
    assert c.replace(sparsity="l1").resolved().code_activation == "relu"
    with pytest.raises(ConfigError, match="sigmoid"):
        SAEConfig(sparsity="kl", code_activation="relu")


def test_replace_composes():
    base = AAEConfig(prior="mixture", supervised=True, num_classes=10)
    assert base.n_components == 0 and base.resolved().n_components == 10
    assert base.replace(num_classes=4).resolved().n_components == 4  # not the 10 of the first config
    assert base.replace(supervised=False, num_classes=4).resolved().n_components == 10
    step = SAEConfig().replace(arch="conv", input_shape=(1, 8, 8)).replace(sparsity="kl", latent_dim=3)
    once = SAEConfig().replace(arch="conv", input_shape=(1, 8, 8), sparsity="kl", latent_dim=3)
    assert step == once and step.resolved() == once.resolved()
    assert step.resolved().hidden == (32, 64) and step.resolved().code_activation == "sigmoid"


def test_resolved_is_explicit_and_idempotent():
    r = SAEConfig().resolved()
    assert r.hidden == (256,) and r.code_activation == "relu"
    assert r.resolved() is r
    t = TrainConfig()
    assert t.resolved() is t
    assert type(AAEConfig().resolved()) is AAEConfig


def test_validate_checks_the_resolved_values():
    with pytest.raises(ConfigError, match="one component per class"):
        AAEConfig(prior="mixture", supervised=True, num_classes=10, n_components=4)
    with pytest.raises(ConfigError, match="needs class labels"):
        AAEConfig(prior="mixture", supervised=True)  # n_components would resolve to 0 classes
    with pytest.raises(ConfigError, match="image data"):
        ModelConfig(arch="conv", input_shape=(5,))
    ModelConfig(arch="conv", input_shape=(1, 8, 8))  # hidden resolves to conv channels


FAMILY_OPTIONS = [("ae", {}), ("dae", {}), ("sae", {"sparsity": "kl"}), ("cae", {}), ("vae", {"arch": "conv"}),
                  ("iwae", {}), ("cvae", {"num_classes": 3}),
                  ("aae", {"prior": "mixture", "supervised": True, "num_classes": 3})]


@pytest.mark.parametrize("name, opts", FAMILY_OPTIONS, ids=[n for n, _ in FAMILY_OPTIONS])
def test_a_saved_config_rebuilds_the_same_model(name, opts):
    m = registry.build(name, seed=0, input_shape=[1, 8, 8], latent_dim=2, **opts)
    assert m.config == m.config.resolved()  # the model stores the resolved config
    saved = m.config.to_dict()
    assert saved["hidden"] is not None and "auto" not in saved.values()
    again = registry.build(name, seed=0, **saved)
    assert again.config == m.config
    sa, sb = m.state_dict(), again.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert registry.build(name, seed=0, input_shape=[1, 8, 8], latent_dim=2, **opts).config == m.config


def test_resolution_is_recorded_in_the_saved_config():
    m = registry.build("sae", input_shape=[4], sparsity="kl")
    assert m.config.to_dict()["code_activation"] == "sigmoid" and m.config.to_dict()["hidden"] == [256]
    aae = registry.build("aae", input_shape=[4], prior="mixture")
    assert aae.config.n_components == 10 and dataclasses.asdict(aae.config)["n_components"] == 10


# --- the device: "auto" by default, made concrete by resolved_for -------------------------------------------


@pytest.fixture
def machine(monkeypatch):
    """Pretend this machine has ``cuda`` CUDA devices (current one 0) and MPS or not; outside torchrun."""
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def set_(cuda: int = 0, mps: bool = False, local_rank: int | None = None, world: int | None = None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        for name, value in (("LOCAL_RANK", local_rank), ("WORLD_SIZE", world)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, str(value))

    return set_


def one_line_config_error(e, *fragments):
    msg = str(e.value)
    assert "\n" not in msg and all(f in msg for f in fragments), msg


def test_device_is_auto_by_default_and_the_cli_says_so(capsys):
    from aekit.cli import main

    assert TrainConfig().device == "auto" and TrainConfig.from_dict({"device": "auto"}).device == "auto"
    assert TrainConfig().replace(epochs=3).device == "auto"  # kept as given until resolved
    assert main(["train", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--device DEVICE torch device: auto (CUDA" in help_text and "[default: auto]" in help_text


@pytest.mark.parametrize("cuda, mps, want", [(0, False, "cpu"), (0, True, "mps"), (1, True, "cuda:0"),
                                             (2, False, "cuda:0")])
def test_auto_takes_cuda_then_mps_then_the_cpu(machine, cuda, mps, want):
    machine(cuda=cuda, mps=mps)
    r = TrainConfig().resolved_for(1000)
    assert r.device == want and r.resolved_for(1000).device == want  # idempotent
    assert TrainConfig(device="cuda" if cuda else "cpu").resolved_for(10).device == ("cuda:0" if cuda else "cpu")


def test_auto_under_torchrun_is_the_process_s_own_gpu(machine):
    machine(cuda=4, local_rank=3, world=8)  # e.g. the 4th process of two machines with 4 GPUs each
    assert TrainConfig().resolved_for(10).device == "cuda:3"
    assert TrainConfig(device="cuda").resolved_for(10).device == "cuda:3"
    # a run written by rank 0 records cuda:0; every rank resumes it on its own GPU
    assert TrainConfig(device="cuda:0").resolved_for(10).device == "cuda:3"
    machine(cuda=4, local_rank=0, world=1)  # one torchrun process: an explicit index is kept
    assert TrainConfig(device="cuda:2").resolved_for(10).device == "cuda:2"
    assert TrainConfig().resolved_for(10).device == "cuda:0"
    machine(cuda=0, mps=True, local_rank=1, world=2)  # no CUDA: gloo on the CPU, never MPS
    assert TrainConfig().resolved_for(10).device == "cpu"


def test_a_device_this_machine_lacks_is_one_line(machine):
    machine(cuda=2, local_rank=2, world=3)
    with pytest.raises(ConfigError) as e:
        TrainConfig().resolved_for(10)
    one_line_config_error(e, "LOCAL_RANK=2", "2 CUDA device(s)", "--nproc-per-node")
    machine(cuda=2)
    with pytest.raises(ConfigError) as e:
        TrainConfig(device="cuda:2").resolved_for(10)
    one_line_config_error(e, "'cuda:2'", "cuda:0 to cuda:1")
    machine(cuda=0, mps=False)
    for device, fragment in (("cuda", "no CUDA device"), ("cuda:1", "no CUDA device"), ("mps", "MPS is not")):
        TrainConfig(device=device)  # a valid option: whether it exists is decided where it trains
        with pytest.raises(ConfigError) as e:
            TrainConfig(device=device).resolved_for(10)
        one_line_config_error(e, repr(device), fragment, "--device auto or cpu")
    machine(local_rank="x1")
    with pytest.raises(ConfigError) as e:
        TrainConfig().resolved_for(10)
    one_line_config_error(e, "LOCAL_RANK='x1'")


def test_a_device_without_cuda_here_is_refused_for_real():
    """The same without monkeypatching: on this machine's torch, whatever it has."""
    from aekit.config import resolve_device

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="MPS is not available"):
            resolve_device("mps")
    here = "cuda:" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").startswith(here) and resolve_device(torch.device("cpu")) == "cpu"


def test_a_run_records_the_device_it_trained_on(tmp_path, digits, machine):
    import aekit
    from aekit.run import Run

    machine(cuda=0, mps=False)  # this machine as it is (no GPU), whatever the host has
    model = aekit.build("ae", dataset=digits, hidden=[8], latent_dim=2, seed=0)
    res = aekit.fit(model, digits, TrainConfig(epochs=1), out_dir=tmp_path / "r", quiet=True)
    assert res.config.device == "cpu" and Run.open(tmp_path / "r").train.device == "cpu"
    again = aekit.fit(aekit.build("ae", dataset=digits, hidden=[8], latent_dim=2, seed=0), digits,
                      TrainConfig(epochs=2), out_dir=tmp_path / "r", resume=True, quiet=True)  # auto again: cpu
    assert len(again.history) == 2 and Run.open(tmp_path / "r").train.device == "cpu"
    m = Run.open(tmp_path / "r").model(device="auto")
    assert m.device.type == "cpu" and aekit.load(tmp_path / "r").device.type == "cpu"
    with pytest.raises(ConfigError) as e:
        Run.open(tmp_path / "r").model(device="cuda")
    one_line_config_error(e, "no CUDA device")


def test_runs_of_aekit_0_1_0_keep_their_device_and_load_anywhere(machine):
    from pathlib import Path

    from aekit.run import Run

    machine(cuda=0, mps=False)
    for path in sorted((Path(__file__).parent / "fixtures" / "runs_v0_1_0").iterdir()):
        if path.is_dir():
            run = Run.open(path)
            assert run.train.device == "cpu"
            assert run.model(device="auto").device.type == "cpu"
            assert run.train.resolved_for(100).device == "cpu"  # what --resume compares with
