"""shopclip: prdtypecode classification and similar-product search for the Rakuten France catalogue.

Subpackages live in the design card's top-level folders (see pyproject.toml `package-dir`):
`shopclip.model` -> model/, `shopclip.training` -> training/, `shopclip.indexer` -> indexer/,
`shopclip.server` -> server/, `shopclip.client` -> client/, `shopclip.v1` -> proto/shopclip/v1 (generated stubs).
"""

__version__ = "0.1.0"
