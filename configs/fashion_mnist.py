"""The Fashion-MNIST quickstart recipe, kept at this path for older commands: it is `clipforge.recipes.fashion_mnist`.

`clipforge train fashion_mnist` and `clipforge train configs/fashion_mnist.py` run the same recipe.
"""

from clipforge.recipes.fashion_mnist import MODEL, get_config

__all__ = ["MODEL", "get_config"]
