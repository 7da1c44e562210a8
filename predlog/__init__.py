"""The prediction log: every classified product and every confirmation or correction, in a SQL database.

The server writes through the `shopclip.predictions.PredictionLog` protocol and never imports this package;
`shopclip serve --prediction-log URL` plugs it in.
"""
