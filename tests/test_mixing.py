"Exact behaviour of the mixing and erasing: λ, pixels, targets and losses, checked against replayed parameters."
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastcore.test import test_eq as eq, test_close as close
from fastai.losses import (CrossEntropyLossFlat, LabelSmoothingCrossEntropy, LabelSmoothingCrossEntropyFlat, FocalLossFlat,
                           BCEWithLogitsLossFlat, MSELossFlat)
from fastai_mixaug.core import box_mask, mix_batch, sample_mix, sample_holes, box_area
from fastai_mixaug.callback import MixUp, CutMix, CutMixUp, Cutout
from mixaug_helpers import drive, constants


def test_cutmix_lam_is_the_fraction_of_pixels_kept():
    x = constants(16, 3, 12, 20)                                       # non-square
    learn = drive(CutMix(seed=0), (x,), (torch.arange(16),))
    prm = CutMix(seed=0).draw(x)
    out = learn.xb[0]
    own = (out == x).all(1).float().mean((1, 2))
    partner = (out == x[prm.perm]).all(1).float().mean((1, 2))
    selfpaired = prm.perm == torch.arange(16)
    eq(own[~selfpaired], prm.lam[~selfpaired])                        # λ = share of the sample's own pixels, exactly
    eq((own + partner)[~selfpaired], torch.ones(int((~selfpaired).sum())))  # every other pixel is the partner's
    assert (prm.lam < 1).any() and (prm.lam > 0).any()


def test_cutmixup_cut_samples_lam_exact_and_blends_strictly_between():
    x = constants(32, 3, 8, 8)
    prm = CutMixUp(seed=2).draw(x)
    (out,), *_ = mix_batch((x,), (), prm)
    moved = prm.perm != torch.arange(32)
    cut, blend = prm.cut & moved, ~prm.cut & moved
    assert cut.any() and blend.any()                                   # both ops in one batch
    eq((out == x).all(1).float().mean((1, 2))[cut], prm.lam[cut])
    lo, hi = torch.minimum(x, x[prm.perm]), torch.maximum(x, x[prm.perm])
    assert ((out >= lo) & (out <= hi))[blend].all()                     # blended samples: between the two
    assert not ((out == x) | (out == x[prm.perm])).all((1, 2, 3))[blend & (prm.lam < 0.999)].any()  # and not pasted
    close(out[blend][:, 0, 0, 0], (prm.lam * x[:, 0, 0, 0] + (1 - prm.lam) * x[prm.perm, 0, 0, 0])[blend])


def test_mixup_lam_at_least_half_and_blend_exact():
    x = torch.randn(64, 3, 4, 4)
    prm = MixUp(seed=1).draw(x)
    assert (prm.lam >= 0.5).all() and (prm.lam <= 1).all()
    learn = drive(MixUp(seed=1), (x,), (torch.zeros(64, dtype=torch.long),))
    w = prm.lam.view(-1, 1, 1, 1)
    close(learn.xb[0], w * x + (1 - w) * x[prm.perm], eps=1e-6)


def test_boxes_and_holes_differ_between_samples():
    x = torch.randn(16, 3, 32, 32)
    prm = CutMix(seed=0).draw(x)
    assert len({tuple(r) for r in torch.cat([prm.lo, prm.hi], 1).tolist()}) > 8
    lo, hi = Cutout(length=8, seed=0).draw(x)
    assert len({tuple(r) for r in lo.flatten(1).tolist()}) > 8
    pb = CutMix(seed=0, mode='batch').draw(x)                         # the paper's one box per batch
    eq(pb.lo, pb.lo[:1].expand_as(pb.lo)); eq(pb.hi, pb.hi[:1].expand_as(pb.hi))


LOSSES = [nn.CrossEntropyLoss(), nn.CrossEntropyLoss(label_smoothing=0.1), nn.CrossEntropyLoss(reduction='sum'),
          CrossEntropyLossFlat(), LabelSmoothingCrossEntropy(), LabelSmoothingCrossEntropyFlat(), FocalLossFlat()]

def _user_loss(pred, y, reduction='mean'):
    l = F.cross_entropy(pred, y, reduction='none') * 2 + 1
    return l.mean() if reduction == 'mean' else l.sum() if reduction == 'sum' else l

@pytest.mark.parametrize('cls', [MixUp, CutMix, CutMixUp])
@pytest.mark.parametrize('lf', LOSSES + [_user_loss], ids=lambda l: getattr(l, '__name__', repr(l)))
def test_loss_is_the_lam_weighted_loss(cls, lf):
    torch.manual_seed(0)
    x, y, pred = torch.randn(9, 3, 8, 8), torch.randint(0, 5, (9,)), torch.randn(9, 5)
    learn = drive(cls(seed=5), (x,), (y,), lf, pred)
    prm = cls(seed=5).draw(x)
    red = getattr(lf, 'reduction', 'mean')
    def per_sample(t):
        if hasattr(lf, 'reduction'):
            old = lf.reduction; lf.reduction = 'none'
            try: return lf(pred, t)
            finally: lf.reduction = old
        return lf(pred, t, reduction='none')
    l = prm.lam * per_sample(y) + (1 - prm.lam) * per_sample(y[prm.perm])
    close(learn.loss_grad, l.sum() if red == 'sum' else l.mean(), eps=1e-5)
    close(learn.loss, learn.loss_grad)
    eq(getattr(lf, 'reduction', 'mean'), red)                          # the loss is left as it was
    eq(learn.yb[0], y)                                                 # integer targets untouched


@pytest.mark.parametrize('ydtype', [torch.float32, torch.long])
def test_multilabel_targets_are_mixed_and_bce_uses_them(ydtype):
    torch.manual_seed(0)
    x, y, pred = torch.randn(8, 3, 8, 8), (torch.rand(8, 6) > 0.5).to(ydtype), torch.randn(8, 6)
    lf = BCEWithLogitsLossFlat()
    learn = drive(CutMix(seed=3), (x,), (y,), lf, pred)
    prm = CutMix(seed=3).draw(x)
    yf = y.float()
    want = prm.lam[:, None] * yf + (1 - prm.lam[:, None]) * yf[prm.perm]
    close(learn.yb[0], want, eps=1e-6)
    eq(learn.yb[0].dtype, torch.float32)
    close(learn.loss_grad, F.binary_cross_entropy_with_logits(pred, want), eps=1e-6)


def test_regression_targets_are_mixed():
    torch.manual_seed(0)
    x, y, pred = torch.randn(8, 4), torch.randn(8, 1), torch.randn(8, 1)
    learn = drive(MixUp(seed=0), (x,), (y,), MSELossFlat(), pred)
    prm = MixUp(seed=0).draw(x)
    want = prm.lam[:, None] * y + (1 - prm.lam[:, None]) * y[prm.perm]
    close(learn.yb[0], want)
    close(learn.loss_grad, F.mse_loss(pred, want))


def test_forced_modes():
    torch.manual_seed(0)
    x, y, pred = torch.randn(6, 3, 8, 8), torch.randint(0, 4, (6,)), torch.randn(6, 4)
    learn = drive(MixUp(seed=0, mix_target='label'), (x,), (y,), nn.CrossEntropyLoss(), pred, c=4)   # one-hot, soft CE
    prm = MixUp(seed=0).draw(x)
    oh = F.one_hot(y, 4).float()
    want = prm.lam[:, None] * oh + (1 - prm.lam[:, None]) * oh[prm.perm]
    close(learn.yb[0], want)
    close(learn.loss_grad, F.cross_entropy(pred, want))
    yr, pr = torch.randn(6, 2), torch.randn(6, 2)                      # float targets, loss mixed instead
    learn = drive(MixUp(seed=0, mix_target='loss'), (x,), (yr,), nn.MSELoss(), pr)
    l = lambda t: F.mse_loss(pr, t, reduction='none')
    close(learn.loss_grad, (prm.lam[:, None] * l(yr) + (1 - prm.lam[:, None]) * l(yr[prm.perm])).mean())
    eq(learn.yb[0], yr)


@pytest.mark.parametrize('cb', [MixUp(p=0.), CutMix(p=0.), CutMixUp(p=0.), Cutout(p=0.), Cutout(p=0., fill='normal')],
                         ids=lambda c: type(c).__name__)
def test_p0_leaves_batch_unchanged(cb):
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    learn = drive(cb, (x,), (y,), pred=torch.randn(8, 3))
    assert torch.equal(learn.xb[0], x) and torch.equal(learn.yb[0], y)
    close(learn.loss_grad, F.cross_entropy(learn.pred, y))


@pytest.mark.parametrize('cb', [MixUp(), CutMix(), CutMixUp(), Cutout(length=0.3), Cutout(fill='normal')], ids=lambda c: type(c).__name__)
def test_dataloader_tensors_never_written(cb):
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    x0, y0 = x.clone(), y.clone()
    learn = drive(cb, (x,), (y,), pred=torch.randn(8, 3))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert learn.xb[0] is not x


def test_p_is_per_sample():
    x = constants(200, 1, 4, 4)
    prm = CutMix(p=0.5, seed=0).draw(x)
    n_on = int((prm.lam < 1).sum())
    assert 60 < n_on < 140                                             # about half the samples, not all-or-none


@pytest.mark.parametrize('bs', [1, 3, 7])
@pytest.mark.parametrize('cls', [MixUp, CutMix, CutMixUp, Cutout])
def test_odd_and_single_batches(bs, cls):
    x, y = torch.randn(bs, 3, 10, 14), torch.randint(0, 3, (bs,))
    learn = drive(cls(), (x,), (y,), pred=torch.randn(bs, 3))
    eq(learn.xb[0].shape, x.shape)
    assert torch.isfinite(learn.loss_grad)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('cls', [MixUp, CutMix, CutMixUp, Cutout])
def test_half_inputs_and_channels_last_kept(dtype, cls):
    x = torch.randn(6, 3, 8, 8).to(dtype).to(memory_format=torch.channels_last)
    learn = drive(cls(), (x,), (torch.arange(6) % 3,), pred=torch.randn(6, 3))
    eq(learn.xb[0].dtype, dtype)
    assert learn.xb[0].is_contiguous(memory_format=torch.channels_last)
    assert learn.loss_grad.dtype == torch.float32


def test_seeded_reproducible_and_global_rng():
    x = torch.randn(8, 3, 16, 16)
    a = drive(CutMixUp(seed=7), (x,), ()).xb[0]
    torch.rand(10)                                                     # other users of the global RNG do not matter
    b = drive(CutMixUp(seed=7), (x,), ()).xb[0]
    c = drive(CutMixUp(seed=8), (x,), ()).xb[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(0); d = drive(CutMix(), (x,), ()).xb[0]
    torch.manual_seed(0); e = drive(CutMix(), (x,), ()).xb[0]
    assert torch.equal(d, e)                                           # without seed: torch's global RNG


def test_cutout_holes_exact():
    x = torch.randn(8, 3, 20, 20) + 10
    lo, hi = Cutout(n_holes=3, length=5, seed=0).draw(x)
    learn = drive(Cutout(n_holes=3, length=5, seed=0), (x,), (torch.arange(8),))
    inside = box_mask(lo, hi, (20, 20))
    assert (learn.xb[0][inside.expand_as(x)] == 0).all()
    assert torch.equal(learn.xb[0][~inside.expand_as(x)], x[~inside.expand_as(x)])
    assert ((hi - lo) <= 5).all()
    eq(Cutout(length=0.5).hole_px((20, 30)), 10)                     # a fraction of the shorter side
    out = drive(Cutout(length=4, fill=2.5, seed=1), (x,), ()).xb[0]
    assert (out == 2.5).any()
