"""The algorithm container: detect, locate, label and segment vertebrae on a spine CT (numpy/scipy, no torch)."""
