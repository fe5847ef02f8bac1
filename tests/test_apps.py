"Every fastai application end to end, with its own DataLoaders, model and loss: tabular, text, collab (and the mixes that cannot apply)."
import warnings
import pytest, torch, torch.nn as nn, torch.nn.functional as F
import matplotlib.pyplot as plt
from fastcore.test import test_eq as eq, test_close as close
from fastai.callback.core import Callback
from fastai.metrics import accuracy
from fastai.torch_core import set_seed
from fastai.tabular.learner import tabular_learner
from fastai.collab import collab_learner
import fastai.callback.progress  # noqa: F401 (no_bar)
from fastai_mixaug.all import MixUp, ManifoldMixUp, MixCallback, hidden_sites
from fastai_mixaug.data import tabular_dls, text_dls, collab_dls
from helpers import one_thread, seeded  # noqa: F401 (autouse fixtures)

warnings.filterwarnings('ignore', message='.*torch.jit.script.*')


class Spy(Callback):
    "Records, for each training batch, what the loss was computed from (after the mixing callback)"
    order = 50
    def __init__(self): self.recs = []
    def after_loss(self):
        if not self.training: return
        mix = next(c for c in self.learn.cbs if isinstance(c, MixCallback))
        self.recs.append(dict(pred=self.pred.detach().clone(), yb=[y.clone() for y in self.yb], loss=self.loss_grad.detach().clone(),
                              prm=mix._prm, site=mix._site if mix._prm is not None else None))


def fit_few(learn, n_batches=3, epochs=1):
    "Fit a few training batches per epoch, quietly"
    class Stop(Callback):
        order = 100
        def after_batch(self):
            if self.training and self.iter >= n_batches - 1:
                from fastai.callback.core import CancelTrainException
                raise CancelTrainException()
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, 1e-2, cbs=Stop())


def weights(learn): return [p.detach().clone() for p in learn.model.parameters()]
def same(a, b): return all(torch.equal(u, v) for u, v in zip(a, b))
def hooks(model): return [(n, tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for n, m in model.named_modules()]


# ------------------------------------------------------------------------------------------------ tabular
@pytest.fixture(scope='module')
def wine(): return tabular_dls('wine', bs=32)


@pytest.mark.parametrize('cats', [True, False])
def test_tabular_classification_mixup_mixes_the_row_the_model_builds(cats):
    dls = tabular_dls('wine' if cats else 'breast_cancer', cats=cats, bs=32)
    set_seed(0)
    learn = tabular_learner(dls, metrics=accuracy).mixup(seed=0)
    spy = Spy(); learn.add_cb(spy)
    before = hooks(learn.model)
    fit_few(learn)
    eq(hooks(learn.model), before)
    r = spy.recs[0]
    eq(r['site'].name, 'layers'); assert r['site'].pre                           # the row as the model builds it
    (y,), prm = r['yb'], r['prm']
    eq(y.shape[1], 1)                                                            # fastai's (bs, 1) classes, kept
    ce = lambda t: F.cross_entropy(r['pred'], t.view(-1).long(), reduction='none')
    close(r['loss'], (prm.lam * ce(y) + (1 - prm.lam) * ce(y[prm.perm])).mean(), eps=1e-5)
    assert (prm.lam < 1).any()
    with learn.no_bar(): v = learn.validate()
    plain = tabular_learner(dls, metrics=accuracy); plain.model.load_state_dict(learn.model.state_dict())
    with plain.no_bar(): eq(plain.validate(), v)                                # validation: as without the plugin


def test_tabular_row_is_mixed_exactly():
    dls = tabular_dls('wine', bs=16)
    set_seed(0)
    learn = tabular_learner(dls, metrics=accuracy, layers=[20, 10])
    cb = MixUp(seed=1); learn.add_cb(cb)
    cats, conts, y = dls.one_batch()
    learn.training, learn.xb, learn.yb = True, (cats, conts), (y,)
    learn('before_fit'); learn('before_batch')
    m = learn.model; m.train()
    got = {}
    h = m.layers[0].register_forward_pre_hook(lambda mod, a: got.__setitem__('row', a[0].detach().clone()))
    learn.pred = m(cats, conts); h.remove(); learn('after_pred')
    with torch.no_grad(): row = torch.cat([m.embeds[0](cats[:, 0]), m.bn_cont(conts)], 1)   # the clean row (batch statistics)
    lam, perm = cb._prm.lam[:, None], cb._prm.perm
    close(got['row'], lam * row + (1 - lam) * row[perm], eps=1e-5)
    assert torch.equal(learn.xb[0], cats) and torch.equal(learn.xb[1], conts)   # the batch itself is not touched


def test_tabular_regression_mixes_targets_and_rows():
    dls = tabular_dls('diabetes', bs=32)
    set_seed(0)
    learn = tabular_learner(dls, y_range=(20, 350)).mixup(seed=2)
    spy = Spy(); learn.add_cb(spy)
    raw = []
    class Raw(Callback):
        order = -10
        def before_batch(self):
            if self.training: raw.append(self.yb[0].clone())
    learn.add_cb(Raw())
    fit_few(learn)
    r = spy.recs[0]; prm = r['prm']
    y0 = raw[0]; lam = prm.lam[:, None]
    close(r['yb'][0], lam * y0 + (1 - lam) * y0[prm.perm], eps=1e-4)
    close(r['loss'], F.mse_loss(r['pred'], r['yb'][0]), eps=1e-4)


def test_tabular_manifold_mixup_sites_and_training(wine):
    set_seed(0)
    learn = tabular_learner(wine, metrics=accuracy).manifold_mixup(seed=0)
    eq([(s.name, s.pre) for s in hidden_sites(learn.model)], [('layers', True), ('layers.0', False), ('layers.1', False)])
    spy = Spy(); learn.add_cb(spy)
    fit_few(learn, n_batches=4, epochs=2)
    assert {r['site'].name for r in spy.recs} >= {'layers', 'layers.0', 'layers.1'} - {None} or len(spy.recs) == 8
    assert all(torch.isfinite(r['loss']) for r in spy.recs)


@pytest.mark.parametrize('aug', ['cutmix', 'cutmixup', 'cutout', 'fmix', 'resizemix'])
def test_spatial_mixes_refuse_tabular_clearly_before_training(wine, aug):
    set_seed(0)
    learn = getattr(tabular_learner(wine), aug)()
    w = weights(learn)
    with pytest.raises(ValueError, match='spatial dimensions.*tabular'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert same(w, weights(learn))


def test_soft_labels_the_loss_cannot_take_fail_clearly(wine):
    set_seed(0)
    learn = tabular_learner(wine).mixup(mix_target='label')                     # CrossEntropyLossFlat takes class indices only
    w = weights(learn)
    with pytest.raises(TypeError, match="failed on the mixed targets.*mix_target='auto'"):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert same(w, weights(learn))
    learn = tabular_learner(wine, loss_func=nn.CrossEntropyLoss())             # a loss that takes probabilities: fine
    learn.loss_func = lambda p, y, **kw: F.cross_entropy(p, y if y.is_floating_point() else y.view(-1).long(), **kw)
    learn.mixup(mix_target='label', seed=0); fit_few(learn)


# ------------------------------------------------------------------------------------------------ text
@pytest.fixture(scope='module')
def text():
    return text_dls(bs=16)


def text_learner(dls):
    from fastai.text.learner import text_classifier_learner
    from fastai.text.models.awdlstm import AWD_LSTM
    set_seed(0)
    return text_classifier_learner(dls, AWD_LSTM, pretrained=False, seq_len=24, metrics=accuracy,
                                   config=dict(emb_sz=32, n_hid=64, n_layers=2))


def test_text_mixup_refuses_and_names_manifold_mixup(text):
    learn = text_learner(text).mixup()
    w = weights(learn)
    with pytest.raises(TypeError, match=r'token ids.*learn\.manifold_mixup\(\)'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert same(w, weights(learn))


def test_text_manifold_mixup_mixes_the_pooled_features(text):
    learn = text_learner(text).manifold_mixup(seed=0)
    eq([(s.name, s.pre) for s in hidden_sites(learn.model)], [('1.layers', True), ('1.layers.0', False)])
    spy = Spy(); learn.add_cb(spy)
    before = hooks(learn.model)
    fit_few(learn, n_batches=3)
    eq(hooks(learn.model), before)
    r = spy.recs[0]; prm = r['prm']
    (y,) = r['yb']
    ce = lambda t: F.cross_entropy(r['pred'], t, reduction='none')
    close(r['loss'], (prm.lam * ce(y) + (1 - prm.lam) * ce(y[prm.perm])).mean(), eps=1e-5)
    with learn.no_bar(): v = learn.validate()
    assert all(torch.isfinite(torch.tensor(x)) for x in v)


# ------------------------------------------------------------------------------------------------ collab
@pytest.fixture(scope='module')
def ratings(): return collab_dls(bs=64)


@pytest.mark.parametrize('aug', ['manifold_mixup', 'mixup'])
def test_collab_nn_mixes(ratings, aug):
    set_seed(0)
    learn = getattr(collab_learner(ratings, use_nn=True, layers=[16], y_range=(0.5, 5.5)), aug)(seed=0)
    spy = Spy(); learn.add_cb(spy)
    fit_few(learn)
    r = spy.recs[0]
    assert r['site'] is not None and torch.isfinite(r['loss'])
    close(r['loss'], F.mse_loss(r['pred'].view(-1), r['yb'][0].view(-1)), eps=1e-5)   # mixed ratings, plain MSE


@pytest.mark.parametrize('aug', ['manifold_mixup', 'mixup'])
def test_collab_dot_product_refuses_and_says_why(ratings, aug):
    set_seed(0)
    learn = getattr(collab_learner(ratings, y_range=(0.5, 5.5)), aug)()
    w = weights(learn)
    with pytest.raises(ValueError, match='EmbeddingDotBias.*use_nn=True'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert same(w, weights(learn))


# ------------------------------------------------------------------------------------------------ show_mix_batch everywhere
@pytest.mark.parametrize('app', ['tabular', 'text', 'collab'])
def test_show_mix_batch_draws_a_table_of_pairs(app, wine, text, ratings, tmp_path):
    plt.close('all')
    learn = {'tabular': lambda: tabular_learner(wine).mixup(seed=0),
             'text': lambda: text_learner(text).manifold_mixup(seed=0),
             'collab': lambda: collab_learner(ratings, use_nn=True, layers=[8]).manifold_mixup(seed=0)}[app]()
    before = hooks(learn.model)
    xb, yb = learn.show_mix_batch(n=5, save=tmp_path/'t.png')
    assert (tmp_path/'t.png').stat().st_size > 0
    (ax,) = plt.gcf().axes
    cells = {k: c.get_text().get_text() for k, c in ax.tables[0].get_celld().items()}
    eq(cells[0, 0], 'sample'); eq(cells[0, 2], 'λ (own share)'); eq(cells[0, 5], 'mixed')
    site = learn.cbs.filter(lambda c: hasattr(c, '_sites'))[0]._sites
    assert cells[1, 5] in {f"{'at the input of' if s.pre else 'after'} module {s.name!r} ({type(s.module).__name__})" for s in site}, cells[1, 5]
    if app == 'tabular': eq(cells[1, 5], "at the input of module 'layers' (Sequential)")   # the row as the model builds it, in words
    assert all(0.5 <= float(cells[i, 2]) <= 1 for i in range(1, 6))            # MixUp's λ = max(λ, 1-λ)
    eq(hooks(learn.model), before)
    plt.close('all')
