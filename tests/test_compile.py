"""torch.compile'd models: every callback trains on one exactly as on the plain model, ManifoldMixUp finds its places
through the compiled module's original (`_orig_mod`), its hooks fire under compile and are gone after the fit, and
batches of the shape already seen compile nothing new.

On the CPU with `backend='eager'`: dynamo traces, guards and recompiles as it does for inductor (the recompiles are
what is checked), without inductor's C++ build (about 15 s per graph here), and runs the same ops as the plain model."""
import pytest, torch, torch.nn as nn
from torch._dynamo.utils import counters
from fastcore.test import test_eq as eq
from fastai.layers import ConvLayer, ResBlock
from fastai.torch_core import set_seed
from fastai.callback.core import Callback
from fastai_mixaug.all import MixUp, CutMix, CutMixUp, Cutout, FMix, ResizeMix, ManifoldMixUp, hidden_sites, find_sites
from helpers import one_thread, seeded, image_dls, make_learner, quiet_fit, params, same_params, N_CLASSES  # noqa: F401 (autouse fixtures)


def res_net():
    "Three stages of one residual block each: `hidden_sites` mixes after stages '1' and '2'"
    return nn.Sequential(ConvLayer(3, 8), nn.Sequential(ResBlock(1, 8, 8)), nn.Sequential(ResBlock(1, 8, 8, stride=2)),
                         nn.Sequential(ResBlock(1, 8, 8)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, N_CLASSES))


def hooks(model): return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_sites_through_compile():
    "hidden_sites and find_sites look through torch.compile: the same places, named as in the plain model; '_orig_mod.' names work too"
    model = res_net()
    cm = torch.compile(model, backend='eager')
    eq([(s.name, s.module) for s in hidden_sites(cm)], [(s.name, s.module) for s in hidden_sites(model)])
    eq([s.name for s in hidden_sites(cm)], ['1', '2'])
    eq(find_sites(cm, ['_orig_mod.2', '1']), find_sites(model, ['2', '1']))
    with pytest.raises(ValueError, match="`modules`: 'nope' is not a module"): find_sites(cm, ['nope'])


CBS = [lambda: MixUp(seed=1), lambda: CutMix(seed=1), lambda: CutMixUp(seed=1), lambda: Cutout(seed=1, length=3),
       lambda: FMix(seed=1), lambda: ResizeMix(seed=1), lambda: ManifoldMixUp(seed=1)]
IDS = ['mixup', 'cutmix', 'cutmixup', 'cutout', 'fmix', 'resizemix', 'manifold_mixup']


class Graphs(Callback):
    "How many graphs dynamo has compiled, after each epoch"
    def before_fit(self): self.n = []
    def after_epoch(self): self.n.append(counters['stats']['unique_graphs'])


def model():
    set_seed(0); return res_net()


@pytest.mark.parametrize('make_cb', CBS, ids=IDS)
def test_each_callback_on_a_compiled_model(make_cb):
    "Two epochs of 4 batches: the same weights as the plain model's; the second epoch compiles nothing; no hook left after"
    dls = image_dls(n_train=32, n_valid=8, bs=8)
    plain = make_learner(dls, model(), cbs=make_cb())
    quiet_fit(plain, 2)
    torch._dynamo.reset(); counters.clear()
    m, graphs = model(), Graphs()                              # the same initial weights
    learn = make_learner(dls, torch.compile(m, backend='eager'), cbs=[make_cb(), graphs])
    quiet_fit(learn, 2)
    assert graphs.n[0] >= 1                                    # it did run compiled
    eq(graphs.n[1], graphs.n[0])                               # no recompilation: batches of the shapes seen reuse the graphs
    assert same_params(params(m), params(plain.model))         # mixed exactly as the plain model was (hooks fired, where they should)
    eq(hooks(m), 0)


def test_manifold_on_a_model_compiled_before():
    "A model compiled and trained without hooks, then with ManifoldMixUp: dynamo traces it again with the hooks, which fire"
    dls = image_dls(n_train=32, n_valid=8, bs=8)
    plain = make_learner(dls, model())
    quiet_fit(plain, 1)
    plain.add_cb(ManifoldMixUp(seed=1, modules=['0.2', '2']))  # a leaf module (ReLU) and a stage
    quiet_fit(plain, 2)
    torch._dynamo.reset(); counters.clear()
    m, graphs = model(), Graphs()
    learn = make_learner(dls, torch.compile(m, backend='eager'))
    quiet_fit(learn, 1)
    learn.add_cb(ManifoldMixUp(seed=1, modules=['_orig_mod.0.2', '2'])).add_cb(graphs)   # names through the wrapper, or not
    quiet_fit(learn, 2)
    eq(graphs.n[1], graphs.n[0])
    assert same_params(params(m), params(plain.model))
    eq(hooks(m), 0)
