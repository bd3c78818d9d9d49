"""The conformance kit, public: ``check_strategy`` and the tiny model families it runs on.

It lives in ``adaptkit.plugin.conformance``; this module is the stable name plugin authors import
in their own tests (as scikit-learn's ``check_estimator`` lives in ``sklearn.utils.estimator_checks``).
"""
from adaptkit.plugin.conformance import *  # noqa: F401,F403
from adaptkit.plugin.conformance import (FAMILIES, ConformanceReport, _batch, _context,  # noqa: F401
                                         _perturb_trainable, _train_steps, check_strategy, tiny_bert, tiny_gpt2)
