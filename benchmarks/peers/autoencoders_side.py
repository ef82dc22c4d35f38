"""The `autoencoders` package's side of the benchmarks; runs in benchmarks/.venvs/autoencoders (PyPI 0.6.8).

    python autoencoders_side.py {ae,dae,sae,cae} --epochs 1 [--seed 0]

The family's model from ``load_model`` with the built-in MLP backbone: encoder hidden_dims [512, 16]
(784-512 ReLU-16 linear; latent_dim=None, so no extra projection layer) and the decoder inferred from it
(16-512 ReLU-784 linear), its default MSE reconstruction loss. DAE: Gaussian noise std 0.3 (as aekit's
default); SAE: L1 on the latents, weight 1e-3; CAE: contractive weight 0.1 (the library's penalty: one
autograd.grad per latent unit with create_graph). Trained by its AETrainer (Adam lr 1e-3, batch 128, a
torch DataLoader with shuffle over the 60k flattened training images, via the library's
create_dataloaders). Seconds of each AETrainer.train_epoch; validation, checkpoints and test are not timed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Timer, emit, fashion_mnist, median, setup, stdout_to_stderr  # noqa: E402

FAMILY = {
    "ae": ("ae", {}),
    "dae": ("dae", {"noise_type": "gaussian", "noise_std": 0.3}),
    "sae": ("sae", {"sparsity_weight": 1e-3}),
    "cae": ("cae", {"contractive_weight": 0.1}),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("family", choices=sorted(FAMILY))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup(args.seed)

    from autoencoders import AETrainer, TrainingConfig, load_model
    from autoencoders.data.base import DatasetSplits, TensorSpec, create_dataloaders

    data = fashion_mnist()
    x = data["x_train"].reshape(-1, 784)
    xt = data["x_test"].reshape(-1, 784)
    name, extra = FAMILY[args.family]
    model = load_model(name, sample_spec=TensorSpec(shape=(784,)), latent_dim=None, encoder="mlp",
                       encoder_config={"hidden_dims": [512, 16], "activation": "relu", "use_bias": True},
                       **extra)
    loaders = create_dataloaders(DatasetSplits(train=x, validation=xt[:1000], test=xt), batch_size=128)
    with tempfile.TemporaryDirectory() as tmp, stdout_to_stderr():
        cfg = TrainingConfig(output_dir=tmp, epochs=args.epochs, batch_size=128, learning_rate=1e-3,
                             device="cpu", seed=args.seed)
        trainer = AETrainer(model=model, args=cfg)
        trainer.configure_optimizers_for_fit(total_train_batches=len(loaders.train), max_epochs=args.epochs)
        secs, losses = [], []
        for epoch in range(1, args.epochs + 1):
            trainer.on_epoch_start(epoch)
            with Timer() as t:
                metrics = trainer.train_epoch(loaders.train)
            secs.append(t.seconds)
            losses.append(metrics["loss"])
    emit({"seconds_per_epoch": median(secs), "epoch_seconds": secs, "train_loss": losses[-1],
          "params": sum(p.numel() for p in model.parameters()), "n_train": int(x.shape[0])})


if __name__ == "__main__":
    main()
