"""A conversation as data: canonical messages, the thread tree, housekeeping rules, renderings."""
