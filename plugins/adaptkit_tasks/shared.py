"""The old home of ``end_token``, ``start_tokens`` (now ``special_tokens``) and ``macro_f1`` (now
``metrics``), kept so that code importing ``adaptkit_tasks.shared`` keeps working."""
from adaptkit_tasks.metrics import macro_f1
from adaptkit_tasks.special_tokens import end_token, start_tokens

__all__ = ["end_token", "macro_f1", "start_tokens"]
