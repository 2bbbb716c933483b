"""Small models for tests, the demo and the benchmarks, built locally (nothing is downloaded).

``synthetic``: random-weight Qwen3 checkpoints with an offline tokenizer that behaves like the real one.
"""
