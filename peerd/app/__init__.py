"""The daemon: start every part in order, stop them cleanly."""
