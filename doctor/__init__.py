"""m3d-doctor: diagnose a GPU pod for Matrix-3D without importing the stack it diagnoses."""

__version__ = "0.1.0"
