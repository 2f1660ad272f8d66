"""The copy's path to disk: capture beside the relay, the recorder process, the store."""
