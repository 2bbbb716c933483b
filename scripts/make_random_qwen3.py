"""Write a random-weight Qwen3 checkpoint (real architecture, offline tokenizer) for tests and benchmarks.

    python scripts/make_random_qwen3.py OUT [--shape tiny|0.6b] [--layers N]

`--shape 0.6b` has the geometry of Qwen/Qwen3-Embedding-0.6B (hidden 1024, 16 heads / 8 KV heads,
head dim 128, MLP 3072, vocab 151669, 28 layers unless --layers says otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from embedrt_export.testing.synthetic import QWEN3_06B_SHAPE, RandomQwen3Config, make_random_qwen3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--shape", choices=("tiny", "0.6b"), default="tiny")
    parser.add_argument("--layers", type=int, help="number of decoder layers (default: the shape's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = QWEN3_06B_SHAPE if args.shape == "0.6b" else RandomQwen3Config()
    config = dataclasses.replace(config, seed=args.seed)
    if args.layers:
        config = dataclasses.replace(config, num_hidden_layers=args.layers)
    path = make_random_qwen3(args.out, config)
    print(f"wrote {path} ({config.num_hidden_layers} layers, hidden {config.hidden_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
