"""geoml: geo-distributed machine learning over an emulated WAN message bus."""

__version__ = "0.1.0"
