"""The ``embedrt quantize`` stage: INT8 graphs added to an artefact behind a quality gate.

``pipeline`` runs it and ``report`` words what it finds. ``calibration`` reads the texts (shipped in
``data/``), ``plan`` chooses the layers, ``smoothquant`` optionally moves outliers into the weights,
``cpu_int8`` writes the CPU graph, ``quality`` gates both graphs against FP32, and ``autoexclude``
searches for layer groups to keep float when a graph misses the gate.
"""
