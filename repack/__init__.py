"""flashinfer-repack: ship FlashInfer's BMM export headers where flashinfer-python looks for them."""

__version__ = "0.1.0"
