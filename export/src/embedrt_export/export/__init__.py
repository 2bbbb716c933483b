"""The ``embedrt export`` stage: a Hugging Face checkpoint -> a validated, self-describing ONNX artefact.

``exporter`` runs it: ``source`` finds the checkpoint, ``task`` decides embedder or reranker, ``spec``
(with ``rerank_spec`` for rerankers) describes it as data, ``reference`` (``rerank_reference``) loads
the PyTorch model parity is measured against, ``wrapper`` (``rerank_wrapper``) is the computation that
is traced, ``onnx_export`` traces and saves it, ``fused`` rewrites the fused opset-23 graph, ``parity``
(``rerank_parity``) gates each graph, ``artefact`` writes the directory atomically.
"""
