"Shared helpers for the tests: drive a callback's batch events exactly as `Learner` does."
import torch, torch.nn as nn
from fastai.learner import Learner
from fastai.test_utils import synth_dbunch


def drive(cb, xb, yb, loss_func=None, pred=None, c=None):
    "Run `cb`'s `before_batch` on (`xb`, `yb`) in a training learner; with `pred`, also the loss and `after_loss`"
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=loss_func or nn.CrossEntropyLoss(), cbs=cb)
    if c is not None: learn.dls.c = c
    learn.training, learn.xb, learn.yb = True, tuple(xb), tuple(yb)
    learn('before_batch')
    if pred is not None:
        learn.pred = pred
        learn.loss_grad = learn.loss_func(learn.pred, *learn.yb)
        learn('after_loss')
    return learn


def constants(bs, *shape, dtype=torch.float32):
    "A batch whose sample i is filled with the value i+1, so every pixel tells where it came from"
    return torch.arange(1, bs + 1, dtype=dtype).view(bs, *[1] * len(shape)).expand(bs, *shape).contiguous()
