"""What adaptkit knows of each model family (``config.model_type``), one table per concern.

Every per-family table lives here, so adding a family (or checking what one gets) means reading
one file: where its projections are (``PROJECTIONS``, ``CONV1D_FAMILIES``), where each block's
attention and feed-forward outputs are (``BLOCK_OUTPUTS``), which layers are the output head
(``OUTPUT_LAYERS``), and the defaults measured per family (``PROBE_LEARNING_RATES``,
``FREEZE_FRACTIONS``). A family absent from a table gets that table's fallback (named beside it)
or a structural guess made by the code that reads it. Strategies read these through
``adaptkit.families``; the core names no strategy here.

No torch import: plugins read this while recipes are validated.
"""
from __future__ import annotations


# ---------------------------------------------------------------------------- architecture

# Attention and feed-forward projections per family: what a low-rank adapter (LoRA, QLoRA)
# adapts when the recipe names no target_modules (absent: peft's "all-linear").
PROJECTIONS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "xlm-roberta": ["query", "key", "value", "dense"],
    "electra": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    # transformers 5 names ViT's projections q_proj/k_proj/v_proj/o_proj, fc1/fc2; 4.x query/key/value/dense.
    "vit": ["query", "key", "value", "dense", "q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"],
    # Encoder-decoders: self- and cross-attention (T5's EncDecAttention has the same q/k/v/o names) and
    # the feed-forward (wi, or gated wi_0/wi_1 in T5 v1.1 and mT5). peft's own table adapts q and v only.
    "t5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "mt5": ["q", "k", "v", "o", "wi", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "mbart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    # BLIP's captioner: the vision blocks' fused qkv, projection and MLP; the text decoder's (cross-)attention
    # and feed-forward. Not a bare "dense": it would adapt the LM head's transform (cls.predictions.transform),
    # and peft's "all-linear" its tied output layer (BLIP declares no output embeddings).
    "blip": ["qkv", "projection", "fc1", "fc2", "query", "key", "value", "output.dense", "intermediate.dense"],
}

# Families whose projections are transformers' Conv1D (weights stored input-major).
CONV1D_FAMILIES: set[str] = {"gpt2"}

# Within one block: (attention output projection, feed-forward output projection), relative to
# the block: where bottleneck adapters hook. Absent families (or names a transformers version
# moved) are found by a structural guess (``adaptkit_adapters.model.find_sites``).
BLOCK_OUTPUTS: dict[str, tuple[str, str]] = {
    "bert": ("attention.output.dense", "output.dense"),
    "roberta": ("attention.output.dense", "output.dense"),
    "xlm-roberta": ("attention.output.dense", "output.dense"),
    "electra": ("attention.output.dense", "output.dense"),
    "vit": ("attention.output.dense", "output.dense"),
    "distilbert": ("attention.out_lin", "ffn.lin2"),
    "gpt2": ("attn.c_proj", "mlp.c_proj"),
    "llama": ("self_attn.o_proj", "mlp.down_proj"),
    "mistral": ("self_attn.o_proj", "mlp.down_proj"),
    "qwen2": ("self_attn.o_proj", "mlp.down_proj"),
    # The same names in encoder and decoder layers (a decoder layer's cross-attention output is
    # encoder_attn.out_proj). T5's feed-forward sits at layer.1 in the encoder and layer.2 in the
    # decoder: no one pair serves both, so T5 is left to the structural guess.
    "bart": ("self_attn.out_proj", "fc2"),
    "mbart": ("self_attn.out_proj", "fc2"),
}

# Encoder-decoder models whose config does not say so (``is_encoder_decoder`` False) and whose
# ``get_encoder`` returns the model itself: the modules holding the (image) encoder and the (text)
# decoder, each with its own block stack (``adaptkit.find_block_list(part=...)``).
SIDES: dict[str, tuple[str, str]] = {
    "blip": ("vision_model", "text_decoder"),
}

# Module names of the task head or output layer across families: a 4-bit base keeps them in
# full precision, and the plan's memory estimate counts them so.
OUTPUT_LAYERS: tuple[str, ...] = ("lm_head", "classifier", "score", "head", "embed_out")

# ---------------------------------------------------------------------------- measured defaults

# A linear probe (frozen backbone, trained head) moves few weights from a poor start: it wants a
# much larger step than fine-tuning, scaled to its features. Encoder heads now read the pooling the
# checkpoint was trained for (task.pooling auto): all-MiniLM-L6-v2's mean-pooled last hidden states
# have a per-dimension std of ~0.25 across rows (its untrained tanh pooler's: ~0.03). Measured on the
# shipped SST-2 (benchmarks/pooling.py: 800 train rows, 200 validation, 3 epochs at batch 16):
# validation 0.810 / 0.815 / 0.820 at 2e-3 / 5e-3 / 1e-2 (dev 0.771 / 0.781 / 0.795); the old
# 2e-2 was tuned for the pooler's tiny features (dev 0.635 there). Decoder hidden states are
# large in norm (no final tanh): smaller steps. Families absent here use PROBE_LEARNING_RATE.
PROBE_LEARNING_RATE = 1e-2
PROBE_LEARNING_RATES: dict[str, float] = {
    "bert": 1e-2, "roberta": 1e-2, "xlm-roberta": 1e-2, "distilbert": 1e-2, "electra": 1e-2,
    "vit": 5e-3,
    "gpt2": 1e-3, "llama": 5e-4, "mistral": 5e-4, "qwen2": 5e-4,
}

# Share of the blocks frozen (from the bottom) when partial freezing is given no setting.
# Encoders of 6-12 blocks: half is the usual sweet spot. Deep decoders keep most of their
# lower stack generic, and freezing more saves the most memory where models are largest.
# Families absent here use FREEZE_FRACTION.
FREEZE_FRACTION = 0.5
FREEZE_FRACTIONS: dict[str, float] = {
    "bert": 0.5, "roberta": 0.5, "xlm-roberta": 0.5, "distilbert": 0.5, "electra": 0.5,
    "deberta-v2": 0.5, "vit": 0.5,
    "gpt2": 0.5, "llama": 0.75, "mistral": 0.75, "qwen2": 0.75,
}
