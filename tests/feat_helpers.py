"Helpers for test_features: tiny DataLoaders, a tiny model, and recorders of each training batch before and after fastai_mixaug."
import math, random
import torch, torch.nn as nn
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
import fastai.callback.progress  # noqa: F401  (learn.no_bar)


class Rec(Callback):
    "Record every training batch at `order`: -5 sees the raw batch, 5 the batch after fastai_mixaug's callbacks (orders 0 and 1)"
    def __init__(self, order):
        self.order, self.batches = order, []
    def before_batch(self):
        if not self.training: return
        self.batches.append(dict(pct=float(self.pct_train), epoch=self.epoch, refs=(self.xb, self.yb),
                                 xb=tuple(t.clone() for t in self.xb), yb=tuple(t.clone() for t in self.yb)))


def tiny_dls(xs, ys, bs=8, n_valid=8, after_batch=None, device='cpu', seed=0):
    "DataLoaders over items `(xs[i], ys[i])`: the first `n_valid` for validation; the train shuffle seeded with `seed`"
    items = list(zip(xs, ys))
    dls = DataLoaders.from_dsets(items[n_valid:], items[:n_valid], bs=bs, after_batch=after_batch, device=device)
    dls.train.rng = random.Random(seed)
    return dls


def tiny_model(shape, c):
    "A linear model on inputs of `shape` (without the batch dim), `c` outputs"
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), c))


def fit_rec(learn, n_epoch=2, lr=1e-2, **kw):
    "Fit `learn` quietly, returning the raw and augmented training batches"
    pre, post = Rec(-5), Rec(5)
    with learn.no_bar(), learn.no_logging(): learn.fit(n_epoch, lr, cbs=[pre, post], **kw)
    return pre.batches, post.batches


def same_batch(a, b):
    "Whether two recorded batches are bit-identical (inputs and targets, dtypes included)"
    ts = lambda r: list(r['xb']) + list(r['yb'])
    return all(x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in zip(ts(a), ts(b)))
