"""The catalogue administrators' console: `shopclip ui`, a Streamlit app over the gRPC API (through the python
client), the prediction log, the model registry and the catalogue, each through its read API. No model is loaded
in the UI process: every prediction comes from the server. A part that is not configured (no prediction log, no
registry) gets a page that says so instead of failing.
"""
