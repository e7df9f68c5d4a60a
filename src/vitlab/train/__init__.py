"""Training and fine-tuning: `config` (TrainConfig, presets), `run` (`fit`: a whole run),
`loop` (steps and epochs), `optim`, `state` (checkpoints and resume), `distributed` (torchrun),
`report` (per-epoch files). Import the module you need: this package imports nothing itself,
so reading a config does not load torch.

    from vitlab.train.config import build_config
    from vitlab.train.run import fit
    result = fit(build_config("fashion_mnist_vit"))
"""
