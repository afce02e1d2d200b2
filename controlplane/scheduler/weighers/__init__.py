"""Host weighers: each scores hosts; the pipeline normalises and multiplies by a factor."""
