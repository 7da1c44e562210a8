"""Test support, one place for each piece the test modules share (issue 10, point 7):

- `support.catalogue`: the one fake bundle spec (`FAKE_BUNDLE`) and the tiny catalogue the server tests index;
- `support.index`: that catalogue through the indexer's real ingest, build and publish into an index root
  (production manifests, production `LoadedIndex`), and a second publish to flip the served version; the drop
  writers (`write_drop`, the indexer tests' `synthetic_drop`, `write_csv`);
- `support.server`: the one running server (`create_server` on a free port), for async and sync callers;
- `support.certs`: the one self-signed TLS certificate helper (`tests/conftest.py` wraps it as a fixture);
- `support.images`: the one JPEG maker and the crafted images (PNG headers, CMYK, 16-bit, animations, bombs);
- `support.embedders`: the fake embedder slowed down or made to fail, for batching and error tests;
- `support.bundles`: a small real model bundle (random weights) whose preprocessing decodes images;
- `support.fakes`: fake shopclip servicers for client tests (no model, no index).

Modules import what they need lazily where it is heavy, so a client test does not load the server.
"""
