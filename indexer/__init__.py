"""shopclip.indexer: catalogue files -> LanceDB catalogue -> embeddings -> FAISS index -> atomic publish.

Modules, in the order data flows:
`sources` (read and validate a catalogue folder, both layouts), `catalogue` (the LanceDB product table),
`ingest` (idempotent upsert + rejects file), `build` (incremental embedding, index, recall check),
`ann` (FAISS flat / IVF / HNSW and recall measurement), `publish` (versions, CURRENT pointer, lock),
`published` (read side for the server: `open_current`, `current_version`), `job` (periodic reindexing),
`cli` (`shopclip index ...`). `api` is the read contract the server codes against. No grpc here.
"""
