"""Small models for tests, the demo and the benchmarks, built locally (nothing is downloaded).

``synthetic``: random-weight Qwen3 checkpoints with an offline tokenizer that behaves like the real one.
``rerankers``: a random Qwen3-Reranker (``make_qwen3_reranker``) and a BERT cross-encoder (``make_cross_encoder``).
"""
