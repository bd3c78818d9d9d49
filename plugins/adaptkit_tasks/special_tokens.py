"""The special tokens that start and end a text, as the language-model tasks (``causal_lm``, ``instruct``) add them."""
from __future__ import annotations

from typing import Any, Optional


def end_token(tokenizer: Any) -> Optional[int]:
    """The id that ends a text: eos for decoders' tokenizers, [SEP] for BERT-style ones."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return None


def start_tokens(tokenizer: Any) -> list[int]:
    """A BOS prefix where the tokenizer has a distinct one (llama); none where BOS is EOS (gpt2)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None and bos != getattr(tokenizer, "eos_token_id", None) else []
