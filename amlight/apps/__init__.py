"""The applications around the inference core (amlight.pipeline): file inputs and outputs
(generate_files: ``python -m amlight generate`` as one typed call), the predict LightningModule,
retrieval of exemplars, attention probes, notebook helpers and the applications of
docs/method.md#part-9-applications (one-to-one mapping, appearance strength, regional editing)."""
