"""Model export side of verse-gc: data readers, synthetic phantoms, (later) training and ONNX export.

Needs the ``export`` extra (torch, scipy, tqdm); the algorithm image does not import it.
"""
