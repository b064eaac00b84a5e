"""The benchmarks' small model: a 12-layer, hidden-128 BERT built from a config (random weights), so timings of
the code paths need no download. With `vocab_size` of a real tokenizer it can read real text."""

from __future__ import annotations

import torch
from transformers import BertConfig, BertModel


def tiny_encoder(vocab_size: int = 200, layers: int = 12, hidden: int = 128) -> torch.nn.Module:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=2 * hidden, max_position_embeddings=512, pad_token_id=0,
                        attn_implementation="sdpa")
    return BertModel(config, add_pooling_layer=False).eval()
