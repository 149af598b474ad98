"""Built-in datasets; importing a module registers it with :mod:`amlight.data.registry`."""
from amlight.data.datasets import ade20k, bdd100k, cityscapes, folder, synthetic  # noqa: F401
