"""`shopclip monitor`: drift and quality of what the server classified, from the prediction log."""
