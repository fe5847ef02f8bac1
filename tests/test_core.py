"What the batch becomes: λ is the share of each sample kept, boxes/holes per sample, p, mode, dtypes, seeds, replayed exactly."
import pytest, torch
from fastcore.test import test_eq as eq, test_close as close
from fastai_mixaug.core import box_mask, box_area, mix_batch, erase_batch
from fastai_mixaug.callback import MixUp, CutMix, CutMixUp, Cutout, FMix, ResizeMix, RandomMix
from helpers import one_thread, seeded, step, constants, source_share, INPUT_MIXERS  # noqa: F401 (one_thread, seeded: autouse fixtures)

MIXERS = INPUT_MIXERS                                # MixUp, CutMix, CutMixUp, FMix, ResizeMix, RandomMix
ALL = MIXERS + [Cutout]
ids = lambda c: c.__name__


def _moved(prm): return prm.perm != torch.arange(len(prm.perm))


@pytest.mark.parametrize('shape', [(3, 12, 20), (1, 7, 5), (2, 16), (1, 4, 6, 5)], ids=['12x20', '7x5', '1d', '3d'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_cutmix_lam_is_fraction_of_pixels_kept_per_sample(shape, seed):
    bs = 16
    x = constants(bs, *shape)
    learn = step(CutMix(seed=seed), (x,), (torch.arange(bs),))
    prm = CutMix(seed=seed).draw(x)
    own, partner = source_share(learn.xb[0], x, prm.perm)
    m = _moved(prm)
    assert m.sum() >= 8
    eq(own[m], prm.lam[m])                                         # λ = share of own pixels, exactly (float32 ==)
    eq((own + partner)[m], torch.ones(int(m.sum())))               # every other pixel is the partner's
    sp = x.shape[2:]
    npx = torch.tensor(sp).prod()
    close(prm.lam, 1 - box_area(prm.lo, prm.hi).float() / npx, eps=1e-6)  # and 1 - box area / image area
    inside = box_mask(prm.lo, prm.hi, sp)
    eq(learn.xb[0], torch.where(inside, x[prm.perm], x))           # pasted exactly through the box
    assert ((prm.lam > 0) & (prm.lam < 1)).sum() >= 4              # real mixing happened


def test_cutmix_box_orientation_non_square():
    "a tall box on a wide image must be clipped by H in dim 0 and by W in dim 1"
    x = constants(64, 1, 6, 40)
    prm = CutMix(seed=3).draw(x)
    assert (prm.hi[:, 0] <= 6).all() and (prm.hi[:, 1] <= 40).all() and (prm.lo >= 0).all()
    assert (prm.hi[:, 1] - prm.lo[:, 1] > 6).any()                 # boxes wider than H exist: W was used for dim 1


def test_cutmixup_cut_samples_exact_blended_samples_lerped():
    bs = 32
    x = constants(bs, 3, 9, 7)
    learn = step(CutMixUp(seed=4), (x,), (torch.arange(bs),))
    prm = CutMixUp(seed=4).draw(x)
    out, m = learn.xb[0], _moved(prm)
    cut, blend = prm.cut & m, ~prm.cut & m
    assert cut.sum() >= 4 and blend.sum() >= 4                     # both ops in one batch
    own, partner = source_share(out, x, prm.perm)
    eq(own[cut], prm.lam[cut]); eq((own + partner)[cut], torch.ones(int(cut.sum())))
    assert (prm.lam[blend] >= 0.5).all()
    w = prm.lam.view(-1, 1, 1, 1)
    close(out[blend], (w * x + (1 - w) * x[prm.perm])[blend], eps=1e-5)
    # λ of a blended sample is recovered from any of its pixels
    lam_back = (out[:, 0, 0, 0] - x[prm.perm][:, 0, 0, 0]) / (x[:, 0, 0, 0] - x[prm.perm][:, 0, 0, 0])
    close(lam_back[blend], prm.lam[blend], eps=1e-4)


def test_mixup_blend_exact_and_lam_at_least_half():
    x = torch.randn(33, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    learn = step(MixUp(alpha=1., seed=1), (x,), (torch.zeros(33, dtype=torch.long),))
    prm = MixUp(alpha=1., seed=1).draw(x)
    assert (prm.lam >= 0.5).all() and (prm.lam <= 1).all() and (prm.lam < 0.9).any()
    assert prm.cut is None and prm.lo is None
    w = prm.lam.view(-1, 1, 1, 1)
    close(learn.xb[0], w * x + (1 - w) * x[prm.perm], eps=1e-5)


def test_partners_are_a_permutation_and_mostly_others():
    x = torch.zeros(64, 1, 4, 4)
    for cls in MIXERS:
        prm = cls(seed=0).draw(x)
        eq(prm.perm.sort().values, torch.arange(64))
        assert _moved(prm).sum() > 48


def test_boxes_and_holes_differ_between_samples():
    x = torch.randn(16, 3, 32, 32)
    prm = CutMix(seed=0).draw(x)
    assert len({tuple(r) for r in torch.cat([prm.lo, prm.hi], 1).tolist()}) >= 12
    assert len(set(prm.lam.tolist())) >= 12
    lo, hi = Cutout(n_holes=2, length=8, seed=0).draw(x)
    assert len({tuple(r) for r in lo.flatten(1).tolist()}) >= 12
    assert (lo[:, 0] != lo[:, 1]).any(1).any()                     # the holes of one sample differ too
    learn = step(Cutout(n_holes=2, length=8, seed=0), (x,), (torch.zeros(16, dtype=torch.long),))
    erased = learn.xb[0] != x
    assert len({tuple(e.flatten().tolist()) for e in erased}) >= 12


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_mode_batch_one_shared_draw(cls):
    x = constants(12, 3, 10, 14)
    prm = cls(seed=7, mode='batch', p=1.).draw(x)
    eq(prm.lam, prm.lam[:1].expand(12))
    if prm.lo is not None:
        eq(prm.lo, prm.lo[:1].expand_as(prm.lo)); eq(prm.hi, prm.hi[:1].expand_as(prm.hi)); eq(prm.cut, prm.cut[:1].expand(12))
    learn = step(cls(seed=7, mode='batch'), (x,), (torch.arange(12),))
    changed = (learn.xb[0] != x).any(1)                            # (bs, H, W)
    moved = _moved(prm)
    if prm.cut is not None and prm.cut[0]: eq(changed[moved], changed[moved][:1].expand_as(changed[moved]))  # one box
    lo, hi = Cutout(length=4, seed=7, mode='batch').draw(x)
    eq(lo, lo[:1].expand_as(lo)); eq(hi, hi[:1].expand_as(hi))


def test_mode_batch_paper_scheme_over_many_batches():
    "with mode='batch', p decides for the whole batch: every batch is all-mixed or all-kept"
    cb, x = CutMix(seed=0, mode='batch', p=0.5), constants(8, 1, 6, 6)
    lams = torch.stack([cb.draw(x).lam for _ in range(40)])
    for l in lams: assert (l == l[0]).all()
    kept = (lams[:, 0] == 1).float().mean()
    assert 0.2 < kept < 0.8


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_p0_leaves_batch_bit_identical(cls):
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    x0, y0 = x.clone(), y.clone()
    pred = torch.randn(8, 3)
    learn = step(cls(p=0.), (x,), (y,), pred=pred)
    assert torch.equal(learn.xb[0], x0) and torch.equal(learn.yb[0], y0)
    assert torch.equal(learn.loss_grad, torch.nn.functional.cross_entropy(pred, y0))


@pytest.mark.parametrize('cls', MIXERS, ids=ids)
def test_p_is_per_sample_unaugmented_bit_identical(cls):
    bs = 200
    x = constants(bs, 1, 6, 6)
    cb = cls(p=0.5, seed=11)
    prm = cls(p=0.5, seed=11).draw(x)
    learn = step(cb, (x,), (torch.zeros(bs, dtype=torch.long),))
    kept = prm.lam == 1
    assert 0.3 < kept.float().mean() < 0.7                         # about p of the samples mixed
    assert torch.equal(learn.xb[0][kept], x[kept])                 # unmixed samples: bit for bit
    changed, mixed = (learn.xb[0] != x).flatten(1).any(1), ~kept & _moved(prm)
    assert not (changed & ~mixed).any()                            # only the others change,
    assert changed[mixed & (prm.lam < 0.999)].all()                # all of them (a λ within rounding of 1 can give x back)


def test_cutout_p_is_per_sample():
    x = torch.randn(200, 1, 8, 8) + 5
    learn = step(Cutout(length=3, p=0.3, seed=1), (x,), (torch.zeros(200, dtype=torch.long),))
    hit = (learn.xb[0] != x).flatten(1).any(1).float().mean()
    assert 0.15 < hit < 0.45


@pytest.mark.parametrize('fill', [0., -1.5, 'normal'])
def test_cutout_holes_exact(fill):
    x = torch.randn(10, 3, 9, 13) + 10                             # no pixel is 0, -1.5 or N(0,1)-like near 10
    learn = step(Cutout(n_holes=3, length=4, fill=fill, seed=5), (x,), (torch.zeros(10, dtype=torch.long),))
    lo, hi = Cutout(n_holes=3, length=4, fill=fill, seed=5).draw(x)
    eq(lo.shape, (10, 3, 2))
    eq(hi - lo <= 4, torch.ones_like(lo, dtype=torch.bool))
    inside = box_mask(lo, hi, (9, 13))
    out = learn.xb[0]
    assert torch.equal(out[~inside.expand_as(x)], x[~inside.expand_as(x)])   # outside the holes: untouched
    if isinstance(fill, float): assert (out[inside.expand_as(x)] == fill).all()
    else: assert (out[inside.expand_as(x)] < 6).all()              # noise, not the image
    assert inside.flatten(1).any(1).all()                          # every sample has a hole


def test_cutout_length_fraction_of_shorter_side():
    cb = Cutout(length=0.5)
    eq(cb.hole_px((10, 30)), 5); eq(cb.hole_px((30, 8)), 4); eq(Cutout(length=1.).hole_px((7, 9)), 7)
    eq(Cutout(length=0.01).hole_px((8, 8)), 1)                     # at least one pixel
    lo, hi = Cutout(length=0.5, seed=0).draw(torch.zeros(64, 1, 10, 30))
    assert ((hi - lo) <= 5).all() and ((hi - lo) == 5).all(-1).any()


def test_cutout_then_mixup_combine():
    "Cutout (order 0) erases first, then MixUp (order 1) blends the erased images"
    bs = 10
    x, y = torch.randn(bs, 3, 8, 8) + 5, torch.randint(0, 3, (bs,))
    learn = step([MixUp(seed=2), Cutout(length=4, seed=1)], (x,), (y,))
    lo, hi = Cutout(length=4, seed=1).draw(x)
    (xe,), _ = erase_batch((x,), (y,), lo, hi)
    prm = MixUp(seed=2).draw(xe)
    (xm,), *_ = mix_batch((xe,), (y,), prm)
    assert torch.equal(learn.xb[0], xm)
    eq(learn.yb[0], y)


@pytest.mark.parametrize('bs', [1, 2, 7])
@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_small_and_odd_batches(cls, bs):
    x, y, pred = torch.randn(bs, 3, 5, 9), torch.randint(0, 4, (bs,)), torch.randn(bs, 4)
    learn = step(cls(seed=0), (x,), (y,), pred=pred)
    eq(learn.xb[0].shape, x.shape); eq(learn.yb[0], y)
    assert torch.isfinite(learn.loss_grad) and learn.loss_grad.ndim == 0
    if bs == 1 and cls is not Cutout:                              # a lone sample can only be mixed with itself
        assert torch.equal(learn.xb[0], x)
        close(learn.loss_grad, torch.nn.functional.cross_entropy(pred, y))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_half_inputs_keep_dtype_memory_format_and_labels(cls, dtype):
    bs = 8
    x32 = constants(bs, 3, 6, 10) * 3 + 250                        # labels > 256 below would be rounded by bf16
    x = x32.to(dtype).to(memory_format=torch.channels_last)
    y = torch.arange(bs) + 300
    pred = torch.randn(bs, 400)
    learn = step(cls(seed=3), (x,), (y,), pred=pred)
    out = learn.xb[0]
    eq(out.dtype, dtype)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(learn.yb[0], y) and learn.yb[0].dtype == torch.long   # targets never cast to the image dtype
    ref = step(cls(seed=3), (x.float(),), (y,)).xb[0]             # the same draw in float32
    if cls in (CutMix, Cutout): assert torch.equal(out.float(), ref)  # pasted / erased: exact
    else: close(out.float(), ref, eps=0.01 * ref.abs().max().item())
    assert torch.isfinite(learn.loss_grad)


def test_uint8_cutmix_pastes_exactly_and_cutout_integer_fill():
    bs = 12
    x = constants(bs, 1, 8, 8, dtype=torch.uint8)
    learn = step(CutMix(seed=1), (x,), (torch.arange(bs),))
    prm = CutMix(seed=1).draw(x)
    out = learn.xb[0]
    eq(out.dtype, torch.uint8)
    own, partner = source_share(out, x, prm.perm)
    m = _moved(prm)
    eq(own[m], prm.lam[m]); eq((own + partner)[m], torch.ones(int(m.sum())))
    learn = step(Cutout(length=3, fill=7, seed=0), (x,), (torch.arange(bs),))
    eq(learn.xb[0].dtype, torch.uint8)
    lo, hi = Cutout(length=3, fill=7, seed=0).draw(x)
    inside = box_mask(lo, hi, (8, 8))
    assert (learn.xb[0][inside] == 7).all() and torch.equal(learn.xb[0][~inside], x[~inside])


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_dataloader_tensors_never_written(cls):
    x, y = torch.randn(9, 3, 8, 8), torch.randint(0, 3, (9,))
    m = torch.randint(0, 3, (9, 8, 8))
    x0, y0, m0 = x.clone(), y.clone(), m.clone()
    kw = dict(mask_fill=255) if cls is Cutout else {}
    learn = step(cls(seed=0, **kw), (x,), (y,), pred=torch.randn(9, 3, requires_grad=True))
    assert learn.xb[0] is not x
    assert torch.equal(x, x0) and torch.equal(y, y0)
    step(cls(seed=0, **kw), (x,), (m,))                            # with a segmentation mask as target
    assert torch.equal(x, x0) and torch.equal(m, m0)


@pytest.mark.parametrize('cls', ALL, ids=ids)
def test_seeded_reproducible_different_seeds_differ_global_rng(cls):
    x = torch.randn(16, 3, 12, 12)
    y = torch.randint(0, 3, (16,))
    def run(**kw):
        cb = cls(**kw)
        learn = step(cb, (x,), (y,))
        outs = [learn.xb[0]]
        for _ in range(2):                                         # later batches continue the callback's own stream
            learn.xb, learn.yb = (x,), (y,)
            learn('before_batch'); outs.append(learn.xb[0])
        return outs
    a, b, c = run(seed=5), run(seed=5), run(seed=6)
    for u, v in zip(a, b): assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[1])                             # successive batches get new draws
    torch.manual_seed(0); s = torch.rand(1)                        # a seeded callback does not touch the global RNG
    torch.manual_seed(0); cls(seed=1).draw(x); eq(torch.rand(1), s)
    torch.manual_seed(9); g1 = run()                               # seed=None: torch's global RNG
    torch.manual_seed(9); g2 = run()
    for u, v in zip(g1, g2): assert torch.equal(u, v)


def test_draw_replays_the_callback_exactly():
    x = torch.randn(10, 3, 7, 7)
    for cls in MIXERS:
        prm1, prm2 = cls(seed=42).draw(x), cls(seed=42).draw(x)
        for a, b in zip(prm1, prm2):
            if isinstance(a, torch.Tensor): assert torch.equal(a, b)
            else: eq(a, b)


@pytest.mark.parametrize('cls,kw', [(MixUp, dict(alpha=lambda pct: 0.)), (CutMix, dict(alpha=lambda pct: 0.)),
                                    (CutMixUp, dict(mixup_alpha=lambda pct: 0., cutmix_alpha=lambda pct: 0.))], ids=['MixUp', 'CutMix', 'CutMixUp'])
def test_alpha_schedule_reaching_0_switches_mixing_off(cls, kw):
    "Beta(α, α) → {0, 1} as α → 0: each sample keeps itself whole; the callback says 'a schedule reached α=0: off'"
    x = constants(16, 3, 8, 8)
    learn = step(cls(seed=0, **kw), (x,), (torch.arange(16),))
    assert torch.equal(learn.xb[0], x)


@pytest.mark.parametrize('alpha', [1e-3, 1e-4])
def test_mixup_small_alpha_mixes_little(alpha):
    "with a small α, λ ~ Beta(α, α) is near 0 or 1, so MixUp's max(λ, 1-λ) is near 1, never a 50/50 blend"
    prm = MixUp(alpha=alpha, seed=0).draw(torch.zeros(2000, 1, 2, 2))
    assert prm.lam.mean() > 0.95, f"mean λ {prm.lam.mean():.3f}; share of λ < 0.6: {(prm.lam < 0.6).float().mean():.3f}"
