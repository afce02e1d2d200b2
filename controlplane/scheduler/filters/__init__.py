"""Host filters: each removes hosts that cannot take a request, with a reason."""
