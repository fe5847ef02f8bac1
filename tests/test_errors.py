"Bad input: a clear ValueError/TypeError naming the parameter, before anything of the learner, data or loss changes."
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from fastai.learner import Learner
from fastai.test_utils import synth_dbunch
from fastai_mixaug.all import MixUp, CutMix, CutMixUp, Cutout
from fastai_mixaug.learner import *
from mixaug_helpers import drive


@pytest.mark.parametrize('make, exc, msg', [
    (lambda: MixUp(alpha=0), ValueError, '`alpha`'),
    (lambda: MixUp(alpha=-1.), ValueError, '`alpha`'),
    (lambda: CutMix(alpha=float('inf')), ValueError, '`alpha`'),
    (lambda: CutMix(alpha='1'), TypeError, '`alpha`'),
    (lambda: CutMixUp(mixup_alpha=0.), ValueError, '`mixup_alpha`'),
    (lambda: CutMixUp(cutmix_alpha=-2), ValueError, '`cutmix_alpha`'),
    (lambda: CutMixUp(switch_prob=1.5), ValueError, '`switch_prob`'),
    (lambda: MixUp(p=1.1), ValueError, '`p`'),
    (lambda: CutMix(p=-0.1), ValueError, '`p`'),
    (lambda: Cutout(p=2), ValueError, '`p`'),
    (lambda: MixUp(p='always'), TypeError, '`p`'),
    (lambda: Cutout(n_holes=0), ValueError, '`n_holes`'),
    (lambda: Cutout(n_holes=1.5), TypeError, '`n_holes`'),
    (lambda: Cutout(length=0), ValueError, '`length`'),
    (lambda: Cutout(length=-3), ValueError, '`length`'),
    (lambda: Cutout(length=1.5), ValueError, '`length`'),
    (lambda: Cutout(length='big'), TypeError, '`length`'),
    (lambda: Cutout(fill='blue'), ValueError, '`fill`'),
    (lambda: Cutout(mask_fill=0.5), TypeError, '`mask_fill`'),
    (lambda: MixUp(mode='pair'), ValueError, '`mode`'),
    (lambda: MixUp(mix_target='soft'), ValueError, '`mix_target`'),
    (lambda: MixUp(seed='x'), TypeError, '`seed`'),
    (lambda: MixUp(off_last=-1), ValueError, '`off_last`'),
    (lambda: MixUp(off_last=1.5), ValueError, '`off_last`'),
])
def test_bad_parameters_at_construction(make, exc, msg):
    with pytest.raises(exc, match=msg): make()


def test_one_liner_with_bad_parameter_leaves_learner_as_is():
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=nn.MSELoss())
    cbs = list(learn.cbs)
    with pytest.raises(ValueError, match='`alpha`'): learn.cutmix(alpha=0)
    assert list(learn.cbs) == cbs


@pytest.mark.parametrize('cb, x, y, exc, msg', [
    (CutMix(), torch.randn(4, 10), torch.arange(4), ValueError, 'spatial dimensions'),
    (CutMixUp(), torch.randn(4, 10), torch.arange(4), ValueError, 'spatial dimensions'),
    (Cutout(), torch.randn(4, 10), torch.arange(4), ValueError, 'spatial dimensions'),
    (Cutout(length=40), torch.randn(4, 3, 32, 32), torch.arange(4), ValueError, '`length`=40 px is larger than the image'),
    (Cutout(length=9), torch.randn(4, 3, 8, 20), torch.arange(4), ValueError, 'larger than the image'),
    (MixUp(), torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), torch.arange(4), TypeError, 'floating-point'),
    (CutMixUp(), torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), torch.arange(4), TypeError, 'floating-point'),
    (Cutout(fill='normal'), torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), torch.arange(4), TypeError, '`fill`'),
    (MixUp(), torch.randn(4, 3, 8, 8), torch.arange(5), ValueError, 'batch size 4'),
    (MixUp(), torch.randn(4, 3, 8, 8), [0, 1, 2, 3], TypeError, 'targets must be tensors'),
    (MixUp(mix_target='label'), torch.randn(4, 3, 8, 8), torch.arange(4), ValueError, 'n_classes'),
])
def test_bad_batches_raise_before_anything_changes(cb, x, y, exc, msg):
    x0, y0 = x.clone(), (y.clone() if isinstance(y, torch.Tensor) else list(y))
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=nn.CrossEntropyLoss(), cbs=cb)
    lf = learn.loss_func
    learn.training, learn.xb, learn.yb = True, (x,), (y,)
    with pytest.raises(exc, match=msg): learn('before_batch')
    assert learn.xb[0] is x and learn.yb[0] is y                      # nothing written
    assert torch.equal(x, x0) and (torch.equal(y, y0) if isinstance(y, torch.Tensor) else y == y0)
    assert learn.loss_func is lf and lf.reduction == 'mean'


def test_cutmix_pastes_integer_images_exactly():
    x = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    learn = drive(CutMix(seed=0), (x,), (torch.arange(6),))
    prm = CutMix(seed=0).draw(x.float())
    assert learn.xb[0].dtype == torch.uint8
    from fastai_mixaug.core import box_mask
    assert torch.equal(learn.xb[0], torch.where(box_mask(prm.lo, prm.hi, (8, 8)), x[prm.perm], x))


def test_loss_without_reduction_refused_before_forward():
    def lf(pred, y): return F.cross_entropy(pred, y)               # no `reduction`: per-sample losses impossible
    learn = Learner(synth_dbunch(), nn.Linear(1, 1), loss_func=lf, cbs=MixUp())
    x = torch.randn(4, 3, 8, 8)
    learn.training, learn.xb, learn.yb = True, (x,), (torch.arange(4),)
    with pytest.raises(TypeError, match='cannot give per-sample losses'): learn('before_batch')
    assert learn.xb[0] is x


def test_loss_that_ignores_reduction_gives_clear_error():
    class Scalar(nn.Module):
        reduction = 'mean'
        def forward(self, pred, y): return F.cross_entropy(pred, y)  # claims a reduction, ignores it
    with pytest.raises(ValueError, match='not per-sample losses'):
        drive(MixUp(), (torch.randn(4, 3),), (torch.arange(4),), Scalar(), torch.randn(4, 5))
