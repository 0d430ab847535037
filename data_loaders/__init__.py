"""Bytes on disk -> validated arrays: LOBSTER files, the synthetic market, image datasets, run directories."""
