"""Built-in datasets; importing a module registers it with :mod:`amlight.data.registry`.

Imported by ``amlight/data/__init__.py``. Datasets outside the package need no line here: name them
``my_pkg.my_module:NAME`` or declare an ``amlight.datasets`` entry point (README, "Adding a dataset").
"""
from amlight.data.datasets import ade20k, bdd100k, cityscapes, folder, synthetic  # noqa: F401
