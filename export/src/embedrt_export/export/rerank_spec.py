"""What kind of reranker a checkpoint is, as data: the manifest's ``rerank`` section and graph inputs.

Two kinds, told apart by ``model_type``:

- Qwen3-Reranker (``qwen3``, a ``Qwen3ForCausalLM``): its model card's chat prompt around
  ``<Instruct>: ... <Query>: ... <Document>: ...`` (only that middle is truncated), scored as
  softmax([logit("no"), logit("yes")])[yes] at the last token = sigmoid(logit("yes") - logit("no")).
  The "yes" / "no" ids come from the tokenizer and are recorded.
- cross-encoders (BERT family, ``*ForSequenceClassification`` with one label): query and document
  go to the tokenizer as a text pair; the score is the logit through the activation that
  sentence-transformers' ``CrossEncoder`` applies (config.json says which; Sigmoid by default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedrt.manifest import EndOfText, Prompts, RerankSpec
from embedrt.prompts import PairPrompt

from ..errors import ExportError

QWEN3_RERANK_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_RERANK_TEMPLATE = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
QWEN3_RERANK_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_RERANK_PROMPT = PairPrompt(encoding="template", prefix=QWEN3_RERANK_PREFIX, template=QWEN3_RERANK_TEMPLATE,
                                 suffix=QWEN3_RERANK_SUFFIX, default_instruction=QWEN3_RERANK_INSTRUCTION)
LABELS = ("yes", "no")
# sentence-transformers' CrossEncoder activation (a dotted class path in config.json) -> ours.
_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "none"}


def rerank_fields(model_dir: Path, config: dict[str, Any], model_type: str, architecture: str) -> dict[str, Any]:
    """The ``ModelSpec`` fields that make a reranker of a checkpoint (see the module docstring)."""
    common: dict[str, Any] = {"task": "rerank", "normalize": False, "prompts": Prompts(), "matryoshka": None,
                              "end_of_text": EndOfText()}
    if model_type == "qwen3":
        if not architecture.endswith("ForCausalLM"):
            raise ExportError(f"a Qwen3 reranker is a Qwen3ForCausalLM checkpoint (as Qwen3-Reranker); {model_dir} "
                              f"is a {architecture}, which has no language-model head to read yes / no from")
        _check_nothing_appended(model_dir)
        rerank = RerankSpec(prompt=QWEN3_RERANK_PROMPT, activation="sigmoid", label_token_ids=_label_ids(model_dir))
        return {**common, "rerank": rerank, "pooling": "last_token", "inputs": ("input_ids", "attention_mask")}
    if not architecture.endswith("ForSequenceClassification"):
        raise ExportError(f"--task rerank needs a cross-encoder (a *ForSequenceClassification checkpoint with one "
                          f"label) or a Qwen3-Reranker; {model_dir} is a {architecture}")
    labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))  # transformers' default: 2
    if labels != 1:
        raise ExportError(f"{model_dir} is a classifier with {labels} labels; a cross-encoder reranker has one "
                          "(its relevance logit), so this one cannot be exported as a reranker")
    inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    if int(config.get("type_vocab_size", 0)) > 1:  # BERT: the document is segment 1
        inputs += ("token_type_ids",)
    rerank = RerankSpec(prompt=PairPrompt(encoding="text_pair"), activation=_activation(config))
    return {**common, "rerank": rerank, "pooling": "cls", "inputs": inputs}


def _activation(config: dict[str, Any]) -> str:
    """As sentence-transformers' ``CrossEncoder.get_default_activation_fn``: config.json's
    ``sentence_transformers.activation_fn``, else the older ``sbert_ce_default_activation_function``,
    else Sigmoid (one label)."""
    st = config.get("sentence_transformers")
    path = (st.get("activation_fn") if isinstance(st, dict) else None) or config.get(
        "sbert_ce_default_activation_function")
    if not path:
        return "sigmoid"
    name = str(path).rsplit(".", 1)[-1]
    if name not in _ACTIVATIONS:
        raise ExportError(f"the cross-encoder's activation {path!r} is not supported (supported: "
                          f"{', '.join(f'torch.nn.{n}' for n in _ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def _tokenizer(model_dir: Path):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def _label_ids(model_dir: Path) -> dict[str, int]:
    """The ids of "yes" and "no", each of which must be one token (as in Qwen3's vocabulary)."""
    tok = _tokenizer(model_dir)
    ids: dict[str, int] = {}
    for label in LABELS:
        token_id = tok.token_to_id(label)
        if token_id is None or tok.encode(label, add_special_tokens=False).ids != [token_id]:
            raise ExportError(f"the tokenizer in {model_dir} has no single token {label!r}; a Qwen3-Reranker "
                              "reads its score from the yes / no tokens. Use the tokenizer that ships with it")
        ids[label] = token_id
    return ids


def _check_nothing_appended(model_dir: Path) -> None:
    """The card builds prefix + middle + suffix from ids; a tokenizer that adds tokens of its own (as
    Qwen3-Embedding's appends <|endoftext|>) would put them inside that prompt."""
    tok = _tokenizer(model_dir)
    if tok.encode("a").ids != tok.encode("a", add_special_tokens=False).ids:
        raise ExportError(f"the tokenizer in {model_dir} adds special tokens of its own (as Qwen3-Embedding's "
                          "does); Qwen3-Reranker's prompt is built without them. Use the tokenizer that ships with "
                          "the reranker checkpoint")
