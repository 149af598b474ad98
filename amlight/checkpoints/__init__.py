"""Every checkpoint kind amlight reads, in one place below the stages.

- :mod:`~amlight.checkpoints.files`: opening a torch or safetensors file safely (``weights_only``)
  with one-line errors, and the ``amlight`` record every stage writes;
- :mod:`~amlight.checkpoints.stage1`: a stage-1 (generation) checkpoint as a frozen, shared model;
- :mod:`~amlight.checkpoints.adapter_files`: a stage-2 checkpoint or exported ``.safetensors``
  adapter, checked against the stage-1 model it meets.

No names are re-exported here: ``files`` is imported by the CLI at start-up and must stay free of
torch, which the other two need.
"""
