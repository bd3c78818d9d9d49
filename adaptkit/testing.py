"""The conformance kit, public: what a plugin author imports in the plugin's own tests.

``check_strategy`` proves a strategy keeps the architecture-preserving contract; ``check_task``
proves a task gives the engine what it relies on; each reports every failed check at once.
``strategy_checks`` and ``task_checks`` yield the same checks one by one, named, for a plugin's
tests to parametrize over (expected failures declared by the caller). Both run on tiny model families built from
configs (``register_family`` adds one). ``wrap_context``, ``sample_batch``, ``train_steps`` and
``perturb_trainable`` are the building blocks the checks use. The implementation lives in
``adaptkit.plugin.conformance``; this module is the stable name (as scikit-learn's
``check_estimator`` lives in ``sklearn.utils.estimator_checks``). Importing it imports torch.
"""
from adaptkit.plugin.conformance import (FAMILIES, NUM_LABELS, VOCAB, ConformanceCheck, ConformanceReport, ModelFamily,
                                         build_family, check_strategy, check_task, families, get_family,
                                         perturb_trainable, register_family, sample_batch, strategy_checks,
                                         task_checks, tiny_bert, tiny_gpt2, train_steps, unregister_family,
                                         word_tokenizer, wrap_context)

__all__ = ["FAMILIES", "NUM_LABELS", "VOCAB", "ConformanceCheck", "ConformanceReport", "ModelFamily", "build_family",
           "check_strategy", "check_task", "families", "get_family", "perturb_trainable", "register_family",
           "sample_batch", "strategy_checks", "task_checks", "tiny_bert", "tiny_gpt2", "train_steps",
           "unregister_family", "word_tokenizer", "wrap_context"]
