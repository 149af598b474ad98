"""Speed and memory benchmarks, run by ``python -m amlight benchmark``.

Kept out of ``amlight``'s import path: a benchmark imports Lightning, diffusers and both stages, and
nothing else needs them loaded for it.
"""
