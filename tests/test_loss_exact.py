"The mixed loss is exact for every loss a fastai user sets: λ = 1 everywhere gives the loss itself; λ 0 or 1 per sample gives the loss of the targets each sample holds."
from functools import partial
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from torch.testing import assert_close
from fastai.losses import (CrossEntropyLossFlat, BCEWithLogitsLossFlat, FocalLossFlat, LabelSmoothingCrossEntropyFlat,
                           MSELossFlat)
from fastai_mixaug.core import MixParams, mix_batch, mix_loss, _plain
from helpers import one_thread, seeded  # noqa: F401 (autouse fixtures)

BS, C, SP = 16, 5, (6, 6)
W = torch.tensor([1., 2., .5, 3., .25])

def _cls(ignore=-100):
    "Class indices, about 30% of them `ignore` (unlabelled samples), and logits"
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, C, (BS,), generator=g)
    if ignore is not None: y[torch.rand(BS, generator=g) < .3] = ignore
    return torch.randn(BS, C, generator=g), y

def _seg(void=255):
    "Per-pixel classes with a void class on about 20% of the pixels, and per-pixel logits"
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, C, (BS, *SP), generator=g)
    y[torch.rand(BS, *SP, generator=g) < .2] = void
    return torch.randn(BS, C, *SP, generator=g), y

def _soft(kind):
    "Float targets: multi-hot rows, class probabilities or regression values"
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(BS, C, generator=g)
    if kind == 'multi': return pred, (torch.rand(BS, C, generator=g) < .4).float()
    if kind == 'probs': return pred, torch.rand(BS, C, generator=g).softmax(1)
    return pred, torch.randn(BS, C, generator=g)

CASES = {
    'ce':                  (nn.CrossEntropyLoss, {}, _cls),
    'ce_weight':           (nn.CrossEntropyLoss, dict(weight=W), _cls),
    'ce_smooth':           (nn.CrossEntropyLoss, dict(label_smoothing=.1), _cls),
    'ce_weight_smooth':    (nn.CrossEntropyLoss, dict(weight=W, label_smoothing=.1), _cls),
    'ce_ignore0':          (nn.CrossEntropyLoss, dict(ignore_index=0), partial(_cls, None)),
    'ce_sum':              (nn.CrossEntropyLoss, dict(reduction='sum'), _cls),
    'ce_none':             (nn.CrossEntropyLoss, dict(reduction='none'), _cls),
    'F.cross_entropy':     (lambda: F.cross_entropy, {}, _cls),
    'partial_ce':          (lambda: partial(F.cross_entropy, weight=W, ignore_index=0, label_smoothing=.1), {}, partial(_cls, None)),
    'nll_logsoftmax':      (nn.NLLLoss, dict(weight=W), lambda: (lambda p, y: (p.log_softmax(1), y))(*_cls())),
    'ce_flat':             (CrossEntropyLossFlat, {}, _cls),
    'ce_flat_weight_smooth': (CrossEntropyLossFlat, dict(weight=W, label_smoothing=.1), _cls),
    'focal_flat':          (FocalLossFlat, {}, _cls),
    'focal_flat_weight':   (FocalLossFlat, dict(weight=W), _cls),
    'ls_ce_flat':          (LabelSmoothingCrossEntropyFlat, {}, partial(_cls, None)),
    'bce_pos_weight':      (nn.BCEWithLogitsLoss, dict(pos_weight=W), partial(_soft, 'multi')),
    'bce_flat_pos_weight': (BCEWithLogitsLossFlat, dict(pos_weight=W), partial(_soft, 'multi')),
    'ce_probs_smooth':     (nn.CrossEntropyLoss, dict(label_smoothing=.1), partial(_soft, 'probs')),
    'mse_flat':            (MSELossFlat, {}, partial(_soft, 'values')),
    'seg_void':            (CrossEntropyLossFlat, dict(axis=1, ignore_index=255), _seg),
    'seg_void_weight':     (CrossEntropyLossFlat, dict(axis=1, weight=W, ignore_index=255), _seg),
    'seg_void_smooth':     (nn.CrossEntropyLoss, dict(ignore_index=255, label_smoothing=.1), _seg),
    'seg_focal':           (FocalLossFlat, dict(axis=1), partial(_seg, 0)),
}

def _params(kind:str, lam01:torch.Tensor, perm:torch.Tensor) -> MixParams:
    "A blend (MixUp) or a paste (CutMix) whose λ is exactly `lam01`: 0 takes the whole partner, 1 keeps the sample"
    if kind == 'blend': return MixParams(perm, lam01, spatial=SP)
    hi = (1 - lam01).long().view(-1, 1) * torch.tensor(SP)         # a box over the whole image where λ = 0, empty where λ = 1
    return MixParams(perm, lam01, torch.ones(BS, dtype=torch.bool), torch.zeros_like(hi), hi, SP, blend=False)

def _mixed(lf, pred, x, y, prm):
    "The loss a mixing callback gives for this draw: the loss of the mixed targets, or the mixed loss"
    xb, yb, yb1, lam = mix_batch((x,), (y,), prm)
    return lf(pred, *yb) if lam is None else mix_loss(lf, pred, yb, yb1, lam)

@pytest.mark.parametrize('kind', ['blend', 'paste'])
@pytest.mark.parametrize('limit', ['all_ones', 'zero_or_one'])
@pytest.mark.parametrize('case', list(CASES))
def test_mixed_loss_is_exact_at_its_limits(case, limit, kind):
    make, kw, data = CASES[case]
    lf, (pred, y) = make(**kw), data()
    g = torch.Generator().manual_seed(4)
    x, perm = torch.randn(BS, 3, *SP, generator=g), torch.randperm(BS, generator=g)
    lam = torch.ones(BS) if limit == 'all_ones' else (torch.rand(BS, generator=g) < .5).float()
    held = torch.where(lam.view(-1, *[1] * (y.ndim - 1)).bool(), y, y[perm])   # the targets whose pixels each sample holds
    want = lf(pred, held)
    got = _mixed(lf, pred, x, y, _params(kind, lam, perm))
    assert_close(_plain(got), _plain(want))
    if limit == 'all_ones': assert_close(_plain(got), _plain(lf(pred, y)))

def test_ignored_targets_mean_over_the_kept_ones():
    "The issue's case: 30% of the targets are -100; the mixed loss with λ = 1 is the loss itself (1.46 was reported as 1.00)"
    pred, y = _cls()
    assert (y == -100).any()
    lf = nn.CrossEntropyLoss()
    got = mix_loss(lf, pred, (y,), (y[torch.randperm(BS)],), torch.ones(BS))
    assert_close(got, lf(pred, y))
    assert not torch.allclose(got, F.cross_entropy(pred, y, reduction='none').mean())   # not divided by the batch size

def test_weighted_mean_between_the_limits():
    "In between: Σ[λ·w(y)·l(y) + (1-λ)·w(y')·l(y')] / Σ[λ·w(y) + (1-λ)·w(y')], ignored targets weighing 0"
    pred, y = _cls()
    g = torch.Generator().manual_seed(5)
    y1, lam = y[torch.randperm(BS, generator=g)], torch.rand(BS, generator=g)
    lf = nn.CrossEntropyLoss(weight=W)
    wt = lambda t: torch.where(t == -100, 0., W[t.clamp_min(0)])
    l = lambda t: F.cross_entropy(pred, t, weight=W, reduction='none')   # already w(y)·l(y), 0 where ignored
    want = (lam * l(y) + (1 - lam) * l(y1)).sum() / (lam * wt(y) + (1 - lam) * wt(y1)).sum()
    assert_close(mix_loss(lf, pred, (y,), (y1,), lam), want)

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_predictions_keep_the_losss_dtype(dtype):
    "Half-precision logits (fp16/bf16 training): the mean over the kept targets, in the loss's own dtype"
    pred, y = _cls()
    pred, lf = pred.to(dtype), nn.CrossEntropyLoss()
    got = mix_loss(lf, pred, (y,), (y[torch.randperm(BS)],), torch.ones(BS))
    assert got.dtype == dtype
    assert_close(got, lf(pred, y))
