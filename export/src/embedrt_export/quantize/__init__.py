"""The ``embedrt quantize`` stage: INT8 graphs added to an artefact behind a quality gate.

``pipeline`` runs it and ``report`` words what it finds. ``calibration`` reads the texts and query
lists (shipped in ``data/``), ``plan`` chooses the layers, ``smoothquant`` optionally moves outliers
into the weights, ``cpu_int8`` writes the CPU graph, ``judge`` says what each task supplies: the
judge that gates both graphs against FP32 (``quality`` for embedding models, ``ranking`` for
rerankers), and ``autoexclude`` searches for layer groups to keep float when a graph misses the gate.
"""
