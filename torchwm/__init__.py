"""`torchwm`: the seed document's package name, an alias of `jepa`'s public API.

    import torchwm
    agent = torchwm.create_model("jepa", dataset="imagenet", batch_size=64, epochs=100)

The objects are `jepa`'s own (`torchwm.JEPAConfig is jepa.JEPAConfig`); there is no
second implementation.
"""

from jepa.api import JEPAAgent, create_model
from jepa.config import ConfigError, JEPAConfig

__all__ = ["ConfigError", "JEPAAgent", "JEPAConfig", "create_model"]
