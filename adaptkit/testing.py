"""The conformance kit, public: what a plugin author imports in the plugin's own tests.

``check_strategy`` proves a strategy keeps the architecture-preserving contract; ``check_task``
proves a task gives the engine what it relies on. Both run on tiny model families built from
configs (``register_family`` adds one). ``wrap_context``, ``sample_batch``, ``train_steps`` and
``perturb_trainable`` are the building blocks the checks use. The implementation lives in
``adaptkit.plugin.conformance``; this module is the stable name (as scikit-learn's
``check_estimator`` lives in ``sklearn.utils.estimator_checks``). Importing it imports torch.
"""
from adaptkit.plugin.conformance import (FAMILIES, NUM_LABELS, VOCAB, ConformanceReport, ModelFamily, build_family,
                                         check_strategy, check_task, families, get_family, perturb_trainable,
                                         register_family, sample_batch, tiny_bert, tiny_gpt2, train_steps,
                                         unregister_family, word_tokenizer, wrap_context)

__all__ = ["FAMILIES", "NUM_LABELS", "VOCAB", "ConformanceReport", "ModelFamily", "build_family", "check_strategy",
           "check_task", "families", "get_family", "perturb_trainable", "register_family", "sample_batch",
           "tiny_bert", "tiny_gpt2", "train_steps", "unregister_family", "word_tokenizer", "wrap_context"]
