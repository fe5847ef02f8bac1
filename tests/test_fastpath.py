"The fast path (issue #6) changes nothing a user sees: types, metadata, layouts and exact values are those of the slow formulas."
import pytest, torch
from torch import Tensor
from fastcore.test import test_eq as eq
from fastai.torch_core import TensorImage, TensorCategory, TensorMask
from fastai_mixaug.core import (sample_mix, sample_holes, box_mask, mix_batch, erase_batch, mix_weight, mix_input,
                                 mix_loss, _gather, _plain, _retype)

SHAPES = [(5,), (6, 7), (3, 4, 5)]

@pytest.mark.parametrize('sp', SHAPES)
@pytest.mark.parametrize('k', [1, 3])
def test_box_mask_float_and_bool_agree_with_a_per_pixel_reference(sp, k):
    g = torch.Generator().manual_seed(len(sp) * 10 + k)
    lo, hi = sample_holes(4, sp, n_holes=k, length=2, generator=g)
    ref = torch.zeros(4, 1, *sp, dtype=torch.bool)
    for b in range(4):
        for j in range(k):
            ref[(b, 0, *[slice(int(l), int(h)) for l, h in zip(lo[b, j], hi[b, j])])] = True
    eq(box_mask(lo, hi, sp), ref)
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        m = box_mask(lo, hi, sp, dt)
        eq(m.dtype, dt); eq(m, ref.to(dt))

@pytest.mark.parametrize('switch_prob', [0., 0.5, 1.])
@pytest.mark.parametrize('p', [1., 0.6])
def test_weight_is_the_where_formula_exactly(switch_prob, p):
    prm = sample_mix(16, (6, 6), switch_prob=switch_prob, p=p, generator=torch.Generator().manual_seed(3))
    w = mix_weight(prm)
    lam = prm.lam.view(-1, 1, 1, 1)
    if prm.lo is None: eq(w, lam); return
    inside = box_mask(prm.lo, prm.hi, (6, 6))
    ref = torch.where(inside, 0., torch.where(prm.cut.view(-1, 1, 1, 1), 1., lam))
    eq(w, ref)

def test_gather_is_indexing_and_keeps_layout():
    x = torch.randn(6, 3, 5, 5).to(memory_format=torch.channels_last)
    perm = torch.randperm(6)
    g = _gather(x, perm)
    eq(g, x[perm]); assert g.is_contiguous(memory_format=torch.channels_last)
    xr = torch.randn(4, 3, requires_grad=True)                   # autograd still works (falls back to indexing)
    _gather(xr, torch.tensor([1, 0, 3, 2])).sum().backward()
    eq(xr.grad, torch.ones(4, 3))

def test_uint8_paste_is_exact():
    x = torch.randint(0, 256, (8, 3, 9, 9), dtype=torch.uint8)
    prm = sample_mix(8, (9, 9), switch_prob=0., generator=torch.Generator().manual_seed(0))
    (out,), _, _, _ = mix_batch((x,), (torch.arange(8),), prm)
    inside = box_mask(prm.lo, prm.hi, (9, 9))
    eq(out.dtype, torch.uint8); eq(out, torch.where(inside, x[prm.perm], x))

def test_fastai_types_and_metadata_come_back():
    x = TensorImage(torch.randn(6, 3, 8, 8)); x.img_size = (8, 8)
    y = TensorCategory(torch.arange(6)); m = TensorMask(torch.randint(0, 4, (6, 8, 8)))
    for sp in (0., 0.5, 1.):
        prm = sample_mix(6, (8, 8), switch_prob=sp, generator=torch.Generator().manual_seed(1))
        (xo,), (yo, mo), yb1, lam = mix_batch((x,), (y, m), prm)
        eq(type(xo), TensorImage); eq(xo.img_size, (8, 8))
        eq(type(yo), TensorCategory); eq(type(mo), TensorMask)
        assert all(type(t) in (TensorCategory, TensorMask) for t in (yb1 or ()))
        # the same numbers as on plain tensors
        (xp,), (yp, mp), _, _ = mix_batch((_plain(x),), (_plain(y), _plain(m)), prm)
        eq(type(xp), Tensor); eq(_plain(xo), xp); eq(_plain(mo), mp)
    lo, hi = sample_holes(6, (8, 8), generator=torch.Generator().manual_seed(2))
    (xo,), (mo,) = erase_batch((x,), (m,), lo, hi, mask_fill=255)
    eq(type(xo), TensorImage); eq(xo.img_size, (8, 8)); eq(type(mo), TensorMask)
    eq(_plain(xo), torch.where(box_mask(lo, hi, (8, 8)), 0., _plain(x)))

def test_loss_type_follows_the_loss_functions_output():
    pred, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    lf = torch.nn.CrossEntropyLoss()
    out = mix_loss(lf, pred, (y,), (y.flip(0),), torch.tensor([1., .5, .25, 0.]))
    eq(type(out), Tensor)
    eq(type(_retype(out, TensorImage(torch.zeros(1)))), TensorImage)

@pytest.mark.parametrize('switch_prob', [0., 0.5, 1.])
def test_draw_and_apply_cost_a_bounded_number_of_ops(switch_prob):
    "No op count that grows with the batch: the same number of torch ops at bs=4 and bs=64 (no loop over samples)"
    from torch.profiler import profile, ProfilerActivity
    def count(bs):
        x, y = torch.randn(bs, 3, 8, 8), torch.randint(0, 3, (bs,))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            mix_batch((x,), (y,), sample_mix(bs, (8, 8), switch_prob=switch_prob))
        return sum(e.name.startswith('aten::') for e in prof.events())
    eq(count(4), count(64))


# --- second round (fewer ops per batch) ---
from torch import nn
import torch.nn.functional as F
from fastai.losses import CrossEntropyLossFlat
from fastai_mixaug.core import sample_beta, MixParams

class _SlowCE(nn.CrossEntropyLoss):
    "Not exactly nn.CrossEntropyLoss, so `mix_loss` takes its generic path (two calls with reduction='none')"

@pytest.mark.parametrize('kw', [{}, dict(weight=torch.tensor([1., 2., .5, 3.])), dict(ignore_index=2), dict(reduction='sum')])
@pytest.mark.parametrize('flat', [False, True])
def test_ce_fast_path_equals_the_generic_path(kw, flat):
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(8, 4, generator=g, requires_grad=True)
    y, y1 = torch.randint(0, 4, (8,), generator=g), torch.randint(0, 4, (8,), generator=g)
    lam = torch.rand(8, generator=g)
    fast = CrossEntropyLossFlat(**kw) if flat else nn.CrossEntropyLoss(**kw)
    slow = _SlowCE(**kw)
    import fastai_mixaug.core as core
    assert core._ce_losses(fast, pred, (y,), (y1,)) is not None and core._ce_losses(slow, pred, (y,), (y1,)) is None
    a = mix_loss(fast, pred, (y,), (y1,), lam)
    ga, = torch.autograd.grad(a, pred)
    b = mix_loss(slow, pred, (y,), (y1,), lam)
    gb, = torch.autograd.grad(b, pred)
    assert torch.equal(_plain(a), _plain(b))                     # the value bit for bit: cross_entropy is log_softmax + nll_loss
    assert torch.allclose(ga, gb, atol=1e-6)
    if not kw:                                                    # and it is the λ-weighted sum by hand
        eq(a, (lam * F.cross_entropy(pred, y, reduction='none') + (1 - lam) * F.cross_entropy(pred, y1, reduction='none')).mean())
    eq(fast.reduction, kw.get('reduction', 'mean'))                # the loss is left as it was

@pytest.mark.parametrize('lf', [nn.CrossEntropyLoss(label_smoothing=0.1), CrossEntropyLossFlat(label_smoothing=0.1)])
def test_ce_with_label_smoothing_takes_the_generic_path(lf):
    import fastai_mixaug.core as core
    pred, y, y1, lam = torch.randn(6, 3), torch.arange(6) % 3, torch.arange(6).flip(0) % 3, torch.rand(6)
    assert core._ce_losses(lf, pred, (y,), (y1,)) is None
    ls = lambda t: F.cross_entropy(pred, t, reduction='none', label_smoothing=0.1)
    assert torch.allclose(_plain(mix_loss(lf, pred, (y,), (y1,), lam)), (lam * ls(y) + (1 - lam) * ls(y1)).mean())

def test_ce_module_hooks_are_respected():
    import fastai_mixaug.core as core
    lf, seen = nn.CrossEntropyLoss(), []
    lf.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    pred, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert core._ce_losses(lf, pred, (y,), (y,)) is None
    mix_loss(lf, pred, (y,), (y.flip(0),), torch.rand(4))
    eq(len(seen), 2)                                             # the user's hook saw both calls

@pytest.mark.parametrize('alpha', [1., 0.4, 2., 0.1, 0.01])
def test_sample_beta_paths_have_the_beta_moments(alpha):
    torch.manual_seed(0)
    lam = sample_beta(alpha, 40_000)
    assert lam.min() >= 0 and lam.max() <= 1
    assert abs(lam.mean() - 0.5) < 0.01
    assert abs(lam.var() - 1 / (4 * (2 * alpha + 1))) < 0.01       # Var Beta(α, α) = 1/(4(2α+1))
    big = sample_beta(alpha, 40_000, larger=True)                 # max(λ, 1-λ): E = 1/2 + E|λ - 1/2|
    assert big.min() >= 0.5 and big.max() <= 1
    assert abs(big.mean() - (0.5 + (lam - 0.5).abs().mean())) < 0.01

def test_sample_beta_with_one_alpha_per_draw():
    torch.manual_seed(0)
    a = torch.tensor([0.2, 5.]).repeat_interleave(20_000)
    lam = sample_beta(a, a.numel())
    for v, part in zip((0.2, 5.), lam.view(2, -1)):
        assert abs(part.var() - 1 / (4 * (2 * v + 1))) < 0.01

@pytest.mark.parametrize('switch_prob', [0., 0.5, 1.])
@pytest.mark.parametrize('dt', [torch.float32, torch.bfloat16])
def test_batch_mode_broadcast_weight_equals_the_materialised_one(switch_prob, dt):
    "'batch' mode computes one weight and broadcasts it: the same numbers as per-sample weights made for every row"
    for seed in range(4):
        prm = sample_mix(6, (7, 9), switch_prob=switch_prob, mode='batch', generator=torch.Generator().manual_seed(seed))
        full = MixParams(*(t.contiguous() if isinstance(t, Tensor) else t for t in prm))  # the same draw, one row per sample
        x, m = torch.randn(6, 3, 7, 9).to(dt), torch.randint(0, 5, (6, 7, 9))
        soft = torch.rand(6, 7, 9)                                 # a float per-pixel target, mixed as a label
        a, b = mix_batch((x,), (m, soft), prm), mix_batch((x,), (m, soft), full)
        for u, v in zip(a[0] + a[1], b[0] + b[1]): eq(u, v)
        eq(mix_weight(prm, dtype=dt), mix_weight(full, dtype=dt))
        if prm.lo is not None: eq(box_mask(prm.lo, prm.hi, (7, 9)), box_mask(full.lo, full.hi, (7, 9)))

def test_cutout_batch_mode_equals_the_materialised_holes():
    lo, hi = sample_holes(5, (8, 8), n_holes=2, length=3, mode='batch', generator=torch.Generator().manual_seed(0))
    assert lo.stride(0) == 0
    x, m = torch.randn(5, 3, 8, 8), torch.randint(0, 4, (5, 8, 8))
    a = erase_batch((x,), (m,), lo, hi, mask_fill=255)
    b = erase_batch((x,), (m,), lo.contiguous(), hi.contiguous(), mask_fill=255)
    eq(a[0][0], b[0][0]); eq(a[1][0], b[1][0])
    assert (a[0][0][0] == 0).any() and torch.equal(a[0][0] == 0, a[0][0][:1].expand_as(a[0][0]) == 0)

@pytest.mark.parametrize('dt', [torch.float32, torch.float16, torch.uint8])
def test_mix_input_with_the_partners_weight(dt):
    x = (torch.rand(6, 2, 5, 5) * 100).to(dt)
    perm = torch.randperm(6)
    inside = (torch.rand(6, 1, 5, 5) > 0.5)
    out = mix_input(x, perm, inside.to(torch.float32 if dt == torch.uint8 else dt), partner=True)
    eq(out.dtype, dt); eq(out, torch.where(inside, x[perm], x))     # a paste, exact
    if dt.is_floating_point:
        w = torch.rand(6, 1, 1, 1).to(dt)
        eq(mix_input(x, perm, w, partner=True), torch.lerp(x, x[perm], w))

# each torch op costs 10-20 µs inside `fit` on a small model (cold caches after the backward pass): the count is the cost
OP_BUDGET = {1.: 20, 0.: 46, .5: 57}   # MixUp, CutMix, CutMixUp: draw + apply + mixed cross-entropy, as measured at 4bdf646,
# plus 7 for the exact mean over the kept targets (ignore_index: two `ne`, two `to`, a `lerp`, a `sum` and a `div`; issue 18)

def _top_ops(f):
    from torch.profiler import profile, ProfilerActivity
    f()
    with profile(activities=[ProfilerActivity.CPU]) as prof: f()
    return [e.name for e in prof.events() if e.name.startswith('aten::') and (e.cpu_parent is None or not e.cpu_parent.name.startswith('aten::'))]

@pytest.mark.parametrize('switch_prob', OP_BUDGET)
def test_op_count_per_batch_stays_within_budget(switch_prob):
    "A regression guard, not a timing: the number of torch ops one batch costs (draw, mix, mixed loss)"
    x, y, pred = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,)), torch.randn(64, 10, requires_grad=True)
    lf = torch.nn.CrossEntropyLoss()
    def one():
        xb, yb, yb1, lam = mix_batch((x,), (y,), sample_mix(64, (28, 28), switch_prob=switch_prob))
        mix_loss(lf, pred, yb, yb1, lam)
    ops = _top_ops(one)
    assert len(ops) <= OP_BUDGET[switch_prob], ops
    assert 'aten::where' not in ops or switch_prob == .5            # no per-pixel `where` (slow on the CPU)

def test_cutout_op_count_stays_within_budget():
    x = torch.randn(64, 1, 28, 28)
    ops = _top_ops(lambda: erase_batch((x,), (), *sample_holes(64, (28, 28), length=14)))
    assert len(ops) <= 29, ops

@pytest.mark.parametrize('dt', [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.uint8, torch.int64])
@pytest.mark.parametrize('fill', [0, 3, -2.5, 'normal'])
def test_bitwise_erase_is_the_where_formula_for_every_value(dt, fill):
    "Cutout works on the bits: holes get exactly `fill`, every other pixel (inf and NaN included) is untouched"
    if not dt.is_floating_point and fill in (-2.5, 'normal'): return
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 3, 6, 7, generator=g) * 50).to(dt)
    if dt.is_floating_point: x[0, 0, 0, :3] = torch.tensor([float('inf'), float('nan'), float('-inf')]).to(dt)
    lo, hi = sample_holes(4, (6, 7), n_holes=2, length=3, generator=g)
    lo[0, 0] = 0; hi[0, 0] = torch.tensor([1, 2])                 # two of the non-finite pixels in a hole
    inside, x0 = box_mask(lo, hi, (6, 7)), x.clone()
    (out,), _ = erase_batch((x,), (), lo, hi, fill, generator=torch.Generator().manual_seed(1))
    val = torch.empty_like(x).normal_(generator=torch.Generator().manual_seed(1)) if fill == 'normal' else torch.full((), fill, dtype=dt)
    ref = torch.where(inside, val, x)
    eq(out.dtype, dt)
    assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8)) if dt != torch.uint8 else torch.equal(out, ref)  # bit for bit
    assert torch.equal(x.view(torch.uint8) if dt != torch.uint8 else x, x0.view(torch.uint8) if dt != torch.uint8 else x0)  # out of place

def test_bitwise_erase_keeps_the_layout_and_masks():
    x = torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last)
    m = torch.randint(0, 5, (4, 8, 8), dtype=torch.uint8)
    lo, hi = sample_holes(4, (8, 8), length=3, generator=torch.Generator().manual_seed(0))
    (out,), (mo,) = erase_batch((x,), (m,), lo, hi, mask_fill=255)
    assert out.is_contiguous(memory_format=torch.channels_last)
    inside = box_mask(lo, hi, (8, 8))
    eq(out, torch.where(inside, 0., x)); eq(mo, torch.where(inside[:, 0], 255, m).to(torch.uint8))

def test_ce_fast_path_only_for_the_class_axis():
    import fastai_mixaug.core as core
    pred, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert core._ce_losses(CrossEntropyLossFlat(axis=0), pred, (y,), (y,)) is None       # another axis: the loss is called
    assert core._ce_losses(CrossEntropyLossFlat(axis=1), pred, (y,), (y,)) is not None
    assert core._ce_losses(nn.CrossEntropyLoss(), pred, (y.int(),), (y.int(),)) is None   # what torch's CE would reject stays its call
    assert core._ce_losses(nn.CrossEntropyLoss(), pred, (torch.rand(4, 3),), (torch.rand(4, 3),)) is None  # soft targets

def test_batch_mode_weight_without_cut_flags():
    "A hand-made pure-CutMix draw may leave `cut` out: the weight is still the box"
    prm = sample_mix(4, (6, 6), switch_prob=0., mode='batch', generator=torch.Generator().manual_seed(0))
    eq(mix_weight(prm._replace(cut=None)), 1 - box_mask(prm.lo, prm.hi, (6, 6)).float())
