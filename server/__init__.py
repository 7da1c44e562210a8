"""shopclip.server: the grpc.aio front door (Classify, SearchSimilar, Embed, GetInfo).

`app.create_server(config) -> (server, port)` assembles it; `config.ServerConfig` is read from flags and
`SHOPCLIP_*` env (`cli.py`: `shopclip serve`). Requests flow servicer.py (the only protobuf code, limits from
validation.py) -> batching.py (micro-batches) -> engine.py (embed, head + k-NN vote, search; no grpc);
errors.py maps domain errors to status codes, auth.py checks bearer tokens, index_watch.py hot-swaps newly
published indexes, metrics.py exports Prometheus metrics. Nothing heavy is imported here: the root CLI
imports `shopclip.server.cli` to declare `serve`.

Threads: the event loop runs gRPC, validation and response building; the forward worker thread(s) own the
model (loaded there, so torch keeps one OpenMP team) and form, run and hand back micro-batches by themselves,
so the next forward never waits for the loop; index loading and SearchSimilar lookups use short-lived threads.
"""
