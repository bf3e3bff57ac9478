"""Shared core of verse-gc: vertebra labels, image geometry and I/O, VerSe and Grand Challenge formats.

Light on purpose (NumPy and SimpleITK only) so that the algorithm image, the evaluation
image and the training code all share it.
"""

__version__ = "0.1.0"
