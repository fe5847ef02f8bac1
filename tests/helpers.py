"Shared fixtures of test_core / test_callbacks / test_learner_api / test_bad_input: drive callback events by hand, tiny real learners."
import random
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.learner import Learner
from fastai.callback.core import Callback
import fastai.callback.progress, fastai.callback.schedule  # ProgressCallback (a default, as in any fastai session), `no_bar`, `lr_find`
from fastai.data.core import Datasets
from fastai.torch_core import TensorImage, set_seed
from fastai.test_utils import synth_dbunch


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    "Tiny tensors: one intra-op thread is fastest, and much faster on a shared CPU (restored after the module)"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def seeded():
    "Every test starts from the same global RNG state"
    set_seed(0, reproducible=True)


# ---------- driving the batch events by hand (as `one_step` in nbs/01_callback.ipynb) ----------
def step(cbs, xb, yb, loss_func=None, pred=None, c=None, training=True):
    "Run `before_batch` of `cbs` on (`xb`, `yb`) in a learner; with `pred`, also compute the loss and run `after_loss`"
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=loss_func if loss_func is not None else nn.CrossEntropyLoss(), cbs=cbs)
    if c is not None: learn.dls.c = c
    learn.training, learn.xb, learn.yb = training, tuple(xb), tuple(yb)
    learn('before_batch')
    if pred is not None:
        learn.pred = pred
        learn.loss_grad = learn.loss_func(learn.pred, *learn.yb)
        learn.loss = learn.loss_grad.clone()
        learn('after_loss')
    return learn


def constants(bs, *shape, dtype=torch.float32):
    "A batch whose sample i is filled with the value i+1: every pixel tells which sample it comes from"
    return torch.arange(1, bs + 1, dtype=dtype).view(bs, *[1] * len(shape)).expand(bs, *shape).contiguous()


def source_share(out, x, perm):
    "Per sample: fraction of pixels equal to the sample itself, and to its partner (for `constants` inputs)"
    dims = tuple(range(1, out.ndim))
    return (out == x).float().mean(dims), (out == x[perm]).float().mean(dims)


# ---------- the augmentations, from the library's one list (MIXAUGS), built-in ones only (a test may add its own) ----------
from fastai_mixaug.learner import MIXAUGS
from fastai_mixaug.callback import MixCallback, ManifoldMixUp
BUILT_IN = {k: v for k, v in MIXAUGS.items() if v.__module__.startswith('fastai_mixaug.')}
ONE_LINERS = list(BUILT_IN)                                              # every augmentation, by its one-liner's name
INPUT_MIXERS = [c for c in BUILT_IN.values() if issubclass(c, MixCallback) and not issubclass(c, ManifoldMixUp)]  # they mix `xb`


# ---------- tiny real learners ----------
N_CLASSES, N_ALL = 4, 96
_g = torch.Generator().manual_seed(0)
_X = torch.randn(N_ALL, 3, 8, 8, generator=_g)
_Y = torch.randint(0, N_CLASSES, (N_ALL,), generator=_g)
_X += _Y.view(-1, 1, 1, 1).float() * 0.5                              # learnable a little
_V = torch.randn(N_ALL, 6, generator=_g)                                # tabular-like rows: no spatial dims

def get_img(i): return TensorImage(_X[i])
def get_lbl(i): return int(_Y[i])
def get_row(i): return _V[i]
def get_u8(i): return TensorImage((_X[i] * 40 + 128).clamp(0, 255).to(torch.uint8))


def image_dls(n_train=64, n_valid=32, bs=16, get_x=get_img):
    "fastai `DataLoaders` over synthetic 3×8×8 float images with 4 integer classes (no `c`, no batch transforms)"
    dss = Datasets(range(n_train + n_valid), [[get_x], [get_lbl]], splits=[range(n_train), range(n_train, n_train + n_valid)])
    dls = dss.dataloaders(bs=bs, num_workers=0)
    dls.train.rng = random.Random(0)
    return dls


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, N_CLASSES))


def make_learner(dls, model=None, loss_func=None, cbs=None, seed=0, **kw):
    "A seeded learner with a fresh tiny CNN; the train DataLoader's shuffling is reseeded too"
    set_seed(seed, reproducible=True)
    dls.train.rng = random.Random(seed)
    return Learner(dls, model if model is not None else tiny_cnn(), loss_func=loss_func if loss_func is not None else nn.CrossEntropyLoss(),
                   cbs=cbs, **kw)


def quiet_fit(learn, n=1, lr=1e-2, **kw):
    with learn.no_bar(), learn.no_logging(): learn.fit(n, lr, **kw)


def quiet_validate(learn):
    with learn.no_bar(): return learn.validate()


def quiet_preds(learn, **kw):
    with learn.no_bar(): return learn.get_preds(with_loss=True, **kw)


def same_cbs(a, b):
    "The same callback objects in the same order (fastai's `no_bar` replaces the ProgressCallback by a new one)"
    from fastai.callback.progress import ProgressCallback
    a, b = [c for c in a if not isinstance(c, ProgressCallback)], [c for c in b if not isinstance(c, ProgressCallback)]
    return len(a) == len(b) and all(u is v for u, v in zip(a, b))


def params(model): return [p.detach().clone() for p in model.state_dict().values()]

def same_params(a, b): return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


class Raise(Callback):
    "Raise `exc` in `event` of the `k`-th training batch (order 2: after the mixing callbacks)"
    order = 2
    def __init__(self, exc, k=2, event='after_loss'): self.exc, self.k, self.i, self.event = exc, k, 0, event
    def _tick(self):
        if not self.training: return
        self.i += 1
        if self.i == self.k: raise self.exc
    def after_loss(self):
        if self.event == 'after_loss': self._tick()
    def after_pred(self):
        if self.event == 'after_pred': self._tick()


class RaiseInForward(nn.Module):
    "Wrap `model`; its forward raises `exc` on the `k`-th call in training mode"
    def __init__(self, model, exc, k=2):
        super().__init__()
        self.model, self.exc, self.k, self.i = model, exc, k, 0
    def forward(self, x):
        if self.training:
            self.i += 1
            if self.i == self.k: raise self.exc
        return self.model(x)


class RaisingLoss(nn.Module):
    "Cross-entropy with a `reduction` attribute that raises `exc` the `k`-th time it is called per sample (`reduction='none'`)"
    def __init__(self, exc, k=2, reduction='mean'):
        super().__init__()
        self.exc, self.k, self.i, self.reduction = exc, k, 0, reduction
    def forward(self, pred, y):
        if self.reduction == 'none':
            self.i += 1
            if self.i == self.k: raise self.exc
        return F.cross_entropy(pred, y, reduction=self.reduction)


class CountForward(nn.Module):
    "Wrap `model`, counting its forward calls (inputs cast to float)"
    def __init__(self, model):
        super().__init__()
        self.model, self.n = model, 0
    def forward(self, x):
        self.n += 1
        return self.model(x.float())


def usage_error(main, prog, argv, msg, capsys, out):
    "Run a command's `main(argv + ['--out', out])`: a usage error (exit 2) whose message contains `msg`, and nothing written"
    with pytest.raises(SystemExit) as e: main(argv + ['--out', str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f'usage: {prog}'), err
    assert f'{prog}: error: {msg}' in err, err
    assert not out.exists()                                   # nothing was written
