"""What the training tests share: a tiny run config and a training state built from it."""

from vitlab.train.config import TrainConfig
from vitlab.train.optim import build_optimizer, build_scheduler
from vitlab.train.state import TrainState

SMALL = {"patch_size": 4}  # vit_test at 16 px: 16 patches, D 32, 2 blocks


def small_cfg(tmp_path, **kw):
    base = dict(model="vit_test", model_args=SMALL, img_size=16, data="synthetic", epochs=2,
                batch_size=32, lr=3e-3, warmup_steps=2, out=str(tmp_path / "run"))  # fmt: skip
    return TrainConfig(**{**base, **kw})


def state_for(cfg, model):
    opt = build_optimizer(model, cfg, fused=False)
    return TrainState(model, opt, build_scheduler(opt, cfg, 10, 10))
