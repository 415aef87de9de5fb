"""The pytorch3d-transforms shim: package `pytorch3d` with only `pytorch3d.transforms`' rotation conversions.

The rotation code is `sources/rotations.py` (pure PyTorch, written from the math, tested against SciPy); it is
installed as `pytorch3d/transforms/rotation_conversions.py`, pytorch3d's own module name, so both import
paths Matrix-3D-style code uses work. Any other pytorch3d name fails loudly, naming the shim.
"""

from __future__ import annotations

from ._source import source

PACKAGE_INIT = '''"""Not pytorch3d: the m3d-shim-pytorch3d-transforms distribution, installed by m3d-doctor.

It provides only pytorch3d.transforms' rotation conversions, in pure PyTorch, because no pytorch3d wheel exists
for torch >= 2.4 and Matrix-3D calls only matrix_to_quaternion. Everything else of pytorch3d is absent.
Remove with `python -m pip uninstall m3d-shim-pytorch3d-transforms` (or `m3d-doctor fix --undo shims`).
"""

__m3d_shim__ = "pytorch3d-transforms"
'''

TRANSFORMS_INIT = '''"""Rotation conversions only: the m3d-shim-pytorch3d-transforms shim (see pytorch3d/__init__)."""

from .rotation_conversions import (
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    euler_angles_to_matrix,
    matrix_to_axis_angle,
    matrix_to_euler_angles,
    matrix_to_quaternion,
    quaternion_apply,
    quaternion_invert,
    quaternion_multiply,
    quaternion_raw_multiply,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
    standardize_quaternion,
)
from .rotation_conversions import __all__

__m3d_shim__ = "pytorch3d-transforms"


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise AttributeError(
        "pytorch3d.transforms.%s is not provided: this pytorch3d is the m3d-shim-pytorch3d-transforms shim, which "
        "has only the rotation conversions (%s). Install a real pytorch3d for the rest." % (name, ", ".join(__all__))
    )
'''


def files() -> dict[str, str]:
    return {
        "pytorch3d/__init__.py": PACKAGE_INIT,
        "pytorch3d/transforms/__init__.py": TRANSFORMS_INIT,
        "pytorch3d/transforms/rotation_conversions.py": source("rotations.py"),
    }


VERIFY = """
import torch
from pytorch3d.transforms import matrix_to_quaternion, quaternion_to_matrix
half_turn_z = torch.tensor([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]])
q = matrix_to_quaternion(half_turn_z)
assert torch.allclose(q, torch.tensor([0.0, 0.0, 0.0, 1.0]), atol=1e-6), q
assert torch.allclose(quaternion_to_matrix(q), half_turn_z, atol=1e-6)
"""
