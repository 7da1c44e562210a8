"""`shopclip monitor`: drift and quality of what the server classified, from the prediction log.

`window` reads a time window of the log in chunks, `reference` gives what it is compared with (the previous
window or a labelled catalogue folder), `statistics` the measures and thresholds (PSI, KS, chi-square, abstain
rate, confidence, centroid shift, live accuracy), `report` builds and stores a report, `html` renders it as one
self-contained page, `metrics` exports it as Prometheus gauges and `cli` is the command. Nothing heavy is
imported here: `shopclip.monitor.cli` is imported by the root CLI to declare the command.
"""
