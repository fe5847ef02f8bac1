"The training loss: the λ-weighted loss computed by hand for integer targets, lerped targets for float ones; the loss object untouched."
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.test import test_eq as eq, test_close as close
from fastai.losses import (CrossEntropyLossFlat, LabelSmoothingCrossEntropy, LabelSmoothingCrossEntropyFlat, FocalLossFlat,
                           BCEWithLogitsLossFlat, MSELossFlat)
from fastai_mixaug.core import box_mask
from fastai_mixaug.callback import MixUp, CutMix, CutMixUp, Cutout, FMix, ResizeMix, RandomMix
from helpers import one_thread, seeded, step, INPUT_MIXERS  # noqa: F401 (one_thread, seeded: autouse fixtures)

MIXERS = INPUT_MIXERS                                # MixUp, CutMix, CutMixUp, FMix, ResizeMix, RandomMix
ids = lambda c: c.__name__


def user_loss(pred, y, reduction='mean'):
    "A plain function with a `reduction` argument"
    l = F.cross_entropy(pred, y, reduction='none') ** 2 + 0.5 * (pred.argmax(1) == y).float()
    return l.mean() if reduction == 'mean' else l.sum() if reduction == 'sum' else l

def _ls(pred, y, eps=0.1):                                        # fastai's LabelSmoothingCrossEntropy, per sample
    lp = F.log_softmax(pred, 1)
    return -lp.sum(1) * eps / pred.shape[1] + (1 - eps) * F.nll_loss(lp, y, reduction='none')

def _focal(pred, y, gamma=2.):
    ce = F.cross_entropy(pred, y, reduction='none')
    return (1 - torch.exp(-ce)) ** gamma * ce

# (name, factory, per-sample loss by hand, reduction)
LOSSES = [
    ('CrossEntropyLoss', nn.CrossEntropyLoss, lambda p, y: F.cross_entropy(p, y, reduction='none'), 'mean'),
    ('CrossEntropyLoss-ls0.1', lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
     lambda p, y: F.cross_entropy(p, y, label_smoothing=0.1, reduction='none'), 'mean'),
    ('CrossEntropyLoss-sum', lambda: nn.CrossEntropyLoss(reduction='sum'), lambda p, y: F.cross_entropy(p, y, reduction='none'), 'sum'),
    ('CrossEntropyLossFlat', CrossEntropyLossFlat, lambda p, y: F.cross_entropy(p, y, reduction='none'), 'mean'),
    ('CrossEntropyLossFlat-sum', lambda: CrossEntropyLossFlat(reduction='sum'), lambda p, y: F.cross_entropy(p, y, reduction='none'), 'sum'),
    ('LabelSmoothingCrossEntropy', LabelSmoothingCrossEntropy, _ls, 'mean'),
    ('LabelSmoothingCrossEntropyFlat', LabelSmoothingCrossEntropyFlat, _ls, 'mean'),
    ('FocalLossFlat', FocalLossFlat, _focal, 'mean'),
    ('user-function', lambda: user_loss, lambda p, y: F.cross_entropy(p, y, reduction='none') ** 2 + 0.5 * (p.argmax(1) == y).float(), 'mean'),
]


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
@pytest.mark.parametrize('name,make,by_hand,red', LOSSES, ids=[l[0] for l in LOSSES])
def test_loss_is_lam_weighted_loss_by_hand(cls, name, make, by_hand, red):
    torch.manual_seed(0)
    bs = 11
    x, y, pred = torch.randn(bs, 3, 8, 10), torch.randint(0, 5, (bs,)), torch.randn(bs, 5)
    lf = make()
    learn = step(cls(seed=3), (x,), (y,), loss_func=lf, pred=pred)
    prm = cls(seed=3).draw(x)                                      # replay the draw
    assert ((prm.lam > 0) & (prm.lam < 1)).sum() >= 4 and (prm.perm != torch.arange(bs)).sum() >= 6
    l = prm.lam * by_hand(pred, y) + (1 - prm.lam) * by_hand(pred, y[prm.perm])
    close(learn.loss_grad, l.sum() if red == 'sum' else l.mean(), eps=1e-5)
    close(learn.loss, learn.loss_grad)
    assert torch.equal(learn.yb[0], y)                             # class targets kept as they are
    assert learn.loss_func is lf
    if hasattr(lf, 'reduction'): eq(lf.reduction, red)             # reduction restored


def test_loss_gradient_flows_through_the_mixed_loss():
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 4, 4), torch.randint(0, 3, (6,))
    pred = torch.randn(6, 3, requires_grad=True)
    learn = step(MixUp(seed=0), (x,), (y,), pred=pred)
    learn.loss_grad.backward()
    prm = MixUp(seed=0).draw(x)
    p2 = pred.detach().clone().requires_grad_()
    ce = lambda t: F.cross_entropy(p2, t, reduction='none')
    (prm.lam * ce(y) + (1 - prm.lam) * ce(y[prm.perm])).mean().backward()
    close(pred.grad, p2.grad, eps=1e-6)


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
@pytest.mark.parametrize('ydtype', [torch.float32, torch.long, torch.bool], ids=['float', 'int', 'bool'])
def test_bce_multilabel_targets_lerped_exactly(cls, ydtype):
    bs, C = 10, 6
    g = torch.Generator().manual_seed(1)
    x = torch.randn(bs, 3, 7, 9, generator=g)
    y = (torch.rand(bs, C, generator=g) > 0.5).to(ydtype)
    pred = torch.randn(bs, C, generator=g)
    lf = BCEWithLogitsLossFlat()
    learn = step(cls(seed=2), (x,), (y,), loss_func=lf, pred=pred)
    prm = cls(seed=2).draw(x)
    lam = prm.lam[:, None]
    yf = y.float()
    ymix = lam * yf + (1 - lam) * yf[prm.perm]
    eq(learn.yb[0].dtype, torch.float32)
    close(learn.yb[0], ymix, eps=1e-6)                             # the exact mixed target
    close(learn.loss_grad, F.binary_cross_entropy_with_logits(pred, ymix), eps=1e-6)
    assert torch.equal(y, y.clone()) and y.dtype == ydtype         # the batch's own target tensor is untouched


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_mse_regression_targets_lerped(cls):
    bs = 9
    g = torch.Generator().manual_seed(2)
    x, y, pred = torch.randn(bs, 2, 6, 6, generator=g), torch.randn(bs, generator=g) * 10, torch.randn(bs, generator=g)
    learn = step(cls(seed=4), (x,), (y,), loss_func=MSELossFlat(), pred=pred)
    prm = cls(seed=4).draw(x)
    ymix = prm.lam * y + (1 - prm.lam) * y[prm.perm]
    close(learn.yb[0], ymix, eps=1e-5)
    close(learn.loss_grad, F.mse_loss(pred, ymix), eps=1e-5)
    y2 = torch.randn(bs, 3, generator=g)                           # (bs, k) regression targets too
    learn = step(cls(seed=4), (x,), (y2,), loss_func=MSELossFlat(), pred=torch.zeros(bs, 3))
    close(learn.yb[0], prm.lam[:, None] * y2 + (1 - prm.lam[:, None]) * y2[prm.perm], eps=1e-6)


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_one_hot_float_targets_lerped_with_cross_entropy(cls):
    bs, C = 8, 4
    g = torch.Generator().manual_seed(3)
    x, pred = torch.randn(bs, 3, 6, 6, generator=g), torch.randn(bs, C, generator=g)
    y = F.one_hot(torch.randint(0, C, (bs,), generator=g), C).float()
    learn = step(cls(seed=1), (x,), (y,), loss_func=nn.CrossEntropyLoss(), pred=pred)
    prm = cls(seed=1).draw(x)
    ymix = prm.lam[:, None] * y + (1 - prm.lam[:, None]) * y[prm.perm]
    close(learn.yb[0], ymix, eps=1e-6)
    close(learn.yb[0].sum(1), torch.ones(bs), eps=1e-6)
    close(learn.loss_grad, F.cross_entropy(pred, ymix), eps=1e-6)


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_mix_target_label_one_hots_class_indices(cls):
    bs, C = 8, 5
    g = torch.Generator().manual_seed(4)
    x, y, pred = torch.randn(bs, 3, 6, 6, generator=g), torch.randint(0, C, (bs,), generator=g), torch.randn(bs, C, generator=g)
    learn = step(cls(seed=2, mix_target='label'), (x,), (y,), loss_func=nn.CrossEntropyLoss(), pred=pred, c=C)
    prm = cls(seed=2).draw(x)
    oh = F.one_hot(y, C).float()
    ymix = prm.lam[:, None] * oh + (1 - prm.lam[:, None]) * oh[prm.perm]
    close(learn.yb[0], ymix, eps=1e-6)
    close(learn.loss_grad, F.cross_entropy(pred, ymix), eps=1e-6)


def test_mix_target_loss_on_float_targets_mixes_the_loss():
    bs = 8
    g = torch.Generator().manual_seed(5)
    x, y, pred = torch.randn(bs, 3, 6, 6, generator=g), torch.randn(bs, 2, generator=g), torch.randn(bs, 2, generator=g)
    lf = MSELossFlat()
    learn = step(MixUp(seed=0, mix_target='loss'), (x,), (y,), loss_func=lf, pred=pred)
    prm = MixUp(seed=0).draw(x)
    assert torch.equal(learn.yb[0], y)
    l = lambda t: ((pred - t) ** 2).mean(1)                        # MSELossFlat(reduction='none') flattens: per element
    close(learn.loss_grad, (prm.lam * l(y) + (1 - prm.lam) * l(y[prm.perm])).mean(), eps=1e-5)
    eq(lf.reduction, 'mean')


def test_segmentation_masks_cutmix_pasted_mixup_loss_per_pixel():
    bs, C = 6, 3
    g = torch.Generator().manual_seed(6)
    x = torch.randn(bs, 3, 8, 10, generator=g)
    m = torch.randint(0, C, (bs, 8, 10), generator=g)
    pred = torch.randn(bs, C, 8, 10, generator=g)
    learn = step(CutMix(seed=1), (x,), (m,), loss_func=CrossEntropyLossFlat(axis=1), pred=pred)
    prm = CutMix(seed=1).draw(x)
    inside = box_mask(prm.lo, prm.hi, (8, 10))[:, 0]
    assert torch.equal(learn.yb[0], torch.where(inside, m[prm.perm], m))  # the mask pasted through the same box
    close(learn.loss_grad, F.cross_entropy(pred, learn.yb[0]), eps=1e-6)
    learn = step(MixUp(seed=1), (x,), (m,), loss_func=CrossEntropyLossFlat(axis=1), pred=pred)
    prm = MixUp(seed=1).draw(x)
    assert torch.equal(learn.yb[0], m)
    ce = lambda t: F.cross_entropy(pred, t, reduction='none')
    close(learn.loss_grad, (prm.lam[:, None, None] * ce(m) + (1 - prm.lam[:, None, None]) * ce(m[prm.perm])).mean(), eps=1e-6)


def test_cutout_mask_fill_and_targets_otherwise_untouched():
    x, m, y = torch.randn(5, 3, 8, 8) + 3, torch.randint(0, 3, (5, 8, 8)), torch.randint(0, 3, (5,))
    learn = step(Cutout(length=3, mask_fill=255, seed=0), (x,), (m,))
    lo, hi = Cutout(length=3, seed=0).draw(x)
    inside = box_mask(lo, hi, (8, 8))[:, 0]
    assert torch.equal(learn.yb[0], torch.where(inside, 255, m))
    learn = step(Cutout(length=3, seed=0), (x,), (m,))
    assert torch.equal(learn.yb[0], m)                              # without mask_fill, masks untouched
    learn = step(Cutout(length=3, seed=0), (x,), (y,), pred=torch.randn(5, 3))
    assert torch.equal(learn.yb[0], y)


@pytest.mark.parametrize('cls', MIXERS + [Cutout], ids=ids)
def test_validation_batches_not_touched(cls):
    x, y, pred = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,)), torch.randn(6, 3)
    learn = step(cls(seed=0), (x,), (y,), pred=pred, training=False)
    assert torch.equal(learn.xb[0], x) and torch.equal(learn.yb[0], y)
    assert torch.equal(learn.loss_grad, F.cross_entropy(pred, y))


def test_no_state_leaks_to_the_next_batch():
    "a training batch left unmixed (p scheduled to 0) right after a mixed one gets the plain loss"
    x, y, pred = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,)), torch.randn(6, 3)
    learn = step(MixUp(p=lambda pct: 1. if pct < 0.5 else 0., seed=0), (x,), (y,), pred=pred)
    assert not torch.equal(learn.loss_grad, F.cross_entropy(pred, y))
    learn.pct_train, learn.xb, learn.yb = 0.9, (x,), (y,)
    learn('before_batch')
    learn.loss_grad = learn.loss_func(pred, *learn.yb); learn('after_loss')
    assert torch.equal(learn.xb[0], x) and torch.equal(learn.loss_grad, F.cross_entropy(pred, y))


def test_schedules_and_off_last():
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    cb = MixUp(alpha=lambda pct: 0.4, p=lambda pct: 0. if pct > 0.5 else 1.)
    learn = step(cb, (x,), (y,))
    assert not torch.equal(learn.xb[0], x)
    learn.pct_train, learn.xb = 0.9, (x,)
    learn('before_batch')
    assert torch.equal(learn.xb[0], x)                              # p scheduled to 0 late in training
    cb = CutMix(off_last=1)
    learn = step(cb, (x,), (y,))
    learn.epoch, learn.n_epoch, learn.xb = 2, 3, (x,)
    learn('before_batch')
    assert torch.equal(learn.xb[0], x)                              # off for the last epoch
    learn.epoch, learn.xb = 1, (x,)
    learn('before_batch')
    assert not torch.equal(learn.xb[0], x)


_W = torch.tensor([1., 2., 5., 0.5, 3.])
SELF_LOSSES = [(n, m) for n, m, *_ in LOSSES] + [
    ('CrossEntropyLoss-weight', lambda: nn.CrossEntropyLoss(weight=_W)),
    ('CrossEntropyLossFlat-weight', lambda: CrossEntropyLossFlat(weight=_W)),
    ('FocalLossFlat-weight', lambda: FocalLossFlat(weight=_W))]

@pytest.mark.parametrize('cls', MIXERS, ids=ids)
@pytest.mark.parametrize('name,make', SELF_LOSSES, ids=[l[0] for l in SELF_LOSSES])
def test_mixing_a_sample_with_itself_gives_the_plain_loss(cls, name, make):
    "bs=1: the only partner is the sample itself, so the batch and the loss must be exactly what they are without mixing"
    torch.manual_seed(1)
    x, y, pred = torch.randn(1, 3, 8, 8), torch.tensor([2]), torch.randn(1, 5)
    lf = make()
    learn = step(cls(seed=0), (x,), (y,), loss_func=lf, pred=pred)
    assert torch.equal(learn.xb[0], x)
    close(learn.loss_grad, lf(pred, y), eps=1e-5)
