"""Experiments: which data decision helped, with seeds and paired intervals."""
