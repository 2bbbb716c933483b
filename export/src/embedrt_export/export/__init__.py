"""The ``embedrt export`` stage: a Hugging Face checkpoint -> a validated, self-describing ONNX artefact.

``exporter`` runs it: ``source`` finds the checkpoint, ``spec`` describes it as data, ``reference``
loads the PyTorch model parity is measured against, ``wrapper`` is the computation that is traced,
``onnx_export`` traces and saves it, ``fused`` rewrites the fused opset-23 graph, ``parity`` gates
each graph, ``artefact`` writes the directory atomically.
"""
