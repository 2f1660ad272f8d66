"""One module per wire API: what a request and its reply mean."""
