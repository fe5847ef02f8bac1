"Everything a user needs: `from fastai_mixaug.all import *`"
from .core import *
from .masks import *
from .hidden import *
from .callback import *
from .learner import *
from .show import *
