"""pythae's side of the benchmarks; runs in benchmarks/.venvs/pythae (pythae 0.1.2 from PyPI).

    python pythae_side.py vae --epochs 3 [--seed 0]
        pythae's VAE with its default MLP (784-512 ReLU, two linear heads 512->16 for mean and log-variance;
        decoder 16-512 ReLU-784 sigmoid), reconstruction_loss="bce" (Bernoulli decoder), trained by its
        BaseTrainer (Adam lr 1e-3, batch 128, the library's DataLoader over a BaseDataset) on all 60k
        Fashion-MNIST training images. Seconds of each BaseTrainer.train_step (one epoch; evaluation and
        checkpoints are not part of it), then the test ELBO: -(model loss) in eval mode over the 10k test
        images (one sample of z per image, closed-form KL, as pythae's loss computes it).

    python pythae_side.py nll --weights FILE --n 200 --k 1000
        VAE.get_nll(x_test[:n], n_samples=k, batch_size=100) under torch.no_grad(), with weights copied
        from an aekit VAE of the same shape (FILE, a torch.save'd dict of aekit parameter names), so both
        libraries estimate the log-likelihood of the same model. Images per second and the mean estimate.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from _common import Timer, emit, fashion_mnist, median, setup, stdout_to_stderr  # noqa: E402


def build_vae(latent_dim: int = 16):
    from pythae.models import VAE, VAEConfig

    cfg = VAEConfig(input_dim=(1, 28, 28), latent_dim=latent_dim, reconstruction_loss="bce")
    return VAE(cfg)


@torch.no_grad()
def test_elbo(model, x_test: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    total = 0.0
    for s in range(0, x_test.shape[0], batch_size):
        xb = x_test[s : s + batch_size]
        out = model({"data": xb})
        total += -out.loss.item() * xb.shape[0]  # out.loss: batch mean of recon + KL
    return total / x_test.shape[0]


def cmd_vae(args) -> None:
    from pythae.data.preprocessors import DataProcessor
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    data = fashion_mnist()
    model = build_vae()
    proc = DataProcessor()
    train_dataset = proc.to_dataset(proc.process_data(data["x_train"]))
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        cfg = BaseTrainerConfig(output_dir=tmp, per_device_train_batch_size=128, per_device_eval_batch_size=1000,
                                num_epochs=args.epochs, learning_rate=1e-3, seed=args.seed, no_cuda=True)
        trainer = BaseTrainer(model=model, train_dataset=train_dataset, eval_dataset=None, training_config=cfg)
        trainer.prepare_training()
        secs = []
        for epoch in range(1, args.epochs + 1):
            with Timer() as t:
                trainer.train_step(epoch)
            secs.append(t.seconds)
    elbo = test_elbo(trainer.model, data["x_test"])
    emit({"seconds_per_epoch": median(secs), "epoch_seconds": secs, "test_elbo": elbo,
          "n_train": int(data["x_train"].shape[0])})


def load_aekit_weights(model, path: str) -> None:
    """Copy an aekit VAE (MLP 784-512-2x16, decoder 16-512-784) into pythae's default VAE networks."""
    w = torch.load(path, map_location="cpu", weights_only=True)
    k = w["encoder.mlp.layers.1.weight"].shape[0] // 2
    sd = {
        "encoder.layers.0.0.weight": w["encoder.mlp.layers.0.weight"],
        "encoder.layers.0.0.bias": w["encoder.mlp.layers.0.bias"],
        "encoder.embedding.weight": w["encoder.mlp.layers.1.weight"][:k],
        "encoder.embedding.bias": w["encoder.mlp.layers.1.bias"][:k],
        "encoder.log_var.weight": w["encoder.mlp.layers.1.weight"][k:],
        "encoder.log_var.bias": w["encoder.mlp.layers.1.bias"][k:],
        "decoder.layers.0.0.weight": w["decoder.mlp.layers.0.weight"],
        "decoder.layers.0.0.bias": w["decoder.mlp.layers.0.bias"],
        "decoder.layers.1.0.weight": w["decoder.mlp.layers.1.weight"],
        "decoder.layers.1.0.bias": w["decoder.mlp.layers.1.bias"],
    }
    model.load_state_dict(sd)


def cmd_nll(args) -> None:
    data = fashion_mnist()
    model = build_vae()
    load_aekit_weights(model, args.weights)
    model.eval()
    x = data["x_test"][: args.n]
    with stdout_to_stderr(), torch.no_grad(), Timer() as t:
        ll = model.get_nll(x, n_samples=args.k, batch_size=100)
    emit({"images_per_second": x.shape[0] / t.seconds, "seconds": t.seconds, "n": int(x.shape[0]),
          "k": args.k, "mean_log_likelihood": float(ll)})


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vae")
    v.add_argument("--epochs", type=int, default=1)
    v.add_argument("--seed", type=int, default=0)
    n = sub.add_parser("nll")
    n.add_argument("--weights", required=True)
    n.add_argument("--n", type=int, default=200)
    n.add_argument("--k", type=int, default=1000)
    n.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup(args.seed)
    {"vae": cmd_vae, "nll": cmd_nll}[args.cmd](args)


if __name__ == "__main__":
    main()
