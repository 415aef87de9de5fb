"""Rotation conversions in pure PyTorch, written for the m3d-shim-pytorch3d-transforms shim.

Installed as `pytorch3d/transforms/rotation_conversions.py` by m3d-doctor where no pytorch3d exists (PyPI has
no pytorch3d wheel for torch >= 2.4). The function names, argument order and conventions follow
pytorch3d.transforms' documented API so callers need no change; the code is written here from the math:

* quaternions are real-first (w, x, y, z); every function is batched over any leading dimensions;
* `matrix_to_quaternion` returns the quaternion with a non-negative real part;
* Euler conventions are three letters of "XYZ", applied as R = R_c0(a0) @ R_c1(a1) @ R_c2(a2);
* gradients stay finite everywhere for the quaternion/matrix/axis-angle conversions (180-degree turns and the
  identity included): no square root or division is ever evaluated at a singular point, even on a branch
  that `torch.where` discards, because a discarded branch's NaN gradient still poisons the sum.

Differences from pytorch3d, both returning the same rotation: `quaternion_to_axis_angle` returns the shortest
rotation (angle in [0, pi]) rather than an angle up to 2*pi for quaternions with a negative real part, and
`matrix_to_euler_angles` resolves gimbal lock (the middle angle at +-90 degrees, or 0/180 degrees for proper
Euler conventions) by setting the third angle to zero, so the angles always reproduce the matrix.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "axis_angle_to_matrix",
    "axis_angle_to_quaternion",
    "euler_angles_to_matrix",
    "matrix_to_axis_angle",
    "matrix_to_euler_angles",
    "matrix_to_quaternion",
    "quaternion_apply",
    "quaternion_invert",
    "quaternion_multiply",
    "quaternion_raw_multiply",
    "quaternion_to_axis_angle",
    "quaternion_to_matrix",
    "standardize_quaternion",
]

_AXES = "XYZ"


def _check_last(t: torch.Tensor, shape: tuple, what: str) -> None:
    if t.dim() < len(shape) or tuple(t.shape[-len(shape):]) != shape:
        want = ", ".join(map(str, shape))
        raise ValueError("Invalid %s shape %s: expected (..., %s)." % (what, tuple(t.shape), want))


def standardize_quaternion(quaternions: torch.Tensor) -> torch.Tensor:
    """The same rotation with a non-negative real part (q and -q are one rotation)."""
    return torch.where(quaternions[..., :1] < 0, -quaternions, quaternions)


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """(..., 4) real-first quaternions -> (..., 3, 3) rotation matrices. Non-unit quaternions are scaled out."""
    _check_last(quaternions, (4,), "quaternion")
    w, x, y, z = torch.unbind(quaternions, -1)
    s = 2.0 / (quaternions * quaternions).sum(-1)
    xx, yy, zz = s * x * x, s * y * y, s * z * z
    xy, xz, yz = s * x * y, s * x * z, s * y * z
    wx, wy, wz = s * w * x, s * w * y, s * w * z
    rows = (
        1.0 - (yy + zz), xy - wz, xz + wy,
        xy + wz, 1.0 - (xx + zz), yz - wx,
        xz - wy, yz + wx, 1.0 - (xx + yy),
    )
    return torch.stack(rows, -1).reshape(quaternions.shape[:-1] + (3, 3))


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) real-first quaternions with a non-negative real part.

    Shepperd's method: 4w^2, 4x^2, 4y^2, 4z^2 are the four sums d_k below, which add up to 4 for any matrix,
    so the largest is >= 1. Only the component with the largest d_k is taken from a square root; the other
    three come from off-diagonal sums divided by it, which is well conditioned near 180 degrees (where w -> 0)
    and near the identity. The branch is chosen before any square root is taken, so no branch is evaluated
    at a singular point and the gradient is finite everywhere.
    """
    _check_last(matrix, (3, 3), "rotation matrix")
    m = matrix
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    d = torch.stack(
        (1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22), -1
    )  # 4w^2, 4x^2, 4y^2, 4z^2
    s_wx, s_wy, s_wz = m21 - m12, m02 - m20, m10 - m01  # 4wx, 4wy, 4wz
    s_xy, s_xz, s_yz = m01 + m10, m02 + m20, m12 + m21  # 4xy, 4xz, 4yz
    # Row k is 4 * q_k * q: the quaternion scaled by four times its k-th component.
    rows = torch.stack(
        (
            torch.stack((d[..., 0], s_wx, s_wy, s_wz), -1),
            torch.stack((s_wx, d[..., 1], s_xy, s_xz), -1),
            torch.stack((s_wy, s_xy, d[..., 2], s_yz), -1),
            torch.stack((s_wz, s_xz, s_yz, d[..., 3]), -1),
        ),
        -2,
    )
    k = d.argmax(-1, keepdim=True)
    d_k = torch.gather(d, -1, k)  # >= 1
    row = torch.gather(rows, -2, k.unsqueeze(-1).expand(k.shape[:-1] + (1, 4))).squeeze(-2)
    return standardize_quaternion(row / (2.0 * torch.sqrt(d_k)))


def quaternion_raw_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a * b of real-first quaternions (broadcast), without standardizing the sign."""
    aw, ax, ay, az = torch.unbind(a, -1)
    bw, bx, by, bz = torch.unbind(b, -1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        -1,
    )


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rotation a after b, as a quaternion with a non-negative real part."""
    return standardize_quaternion(quaternion_raw_multiply(a, b))


def quaternion_invert(quaternion: torch.Tensor) -> torch.Tensor:
    """The conjugate: the inverse rotation of a unit quaternion."""
    return quaternion * quaternion.new_tensor([1.0, -1.0, -1.0, -1.0])


def quaternion_apply(quaternion: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Rotate (..., 3) points by (..., 4) unit quaternions: q * (0, p) * q^-1."""
    _check_last(point, (3,), "point")
    pure = torch.cat((torch.zeros_like(point[..., :1]), point), -1)
    return quaternion_raw_multiply(quaternion_raw_multiply(quaternion, pure), quaternion_invert(quaternion))[..., 1:]


_SMALL = 1e-6  # squared angles below this use the Taylor series (its next term is ~1e-18 there)


def axis_angle_to_quaternion(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis * angle (radians) -> (..., 4) unit quaternions (cos(t/2), sin(t/2) * axis)."""
    _check_last(axis_angle, (3,), "axis-angle")
    t2 = (axis_angle * axis_angle).sum(-1, keepdim=True)
    small = t2 < _SMALL
    t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))  # never sqrt(0): its gradient is infinite
    half_sin_over_t = torch.where(small, 0.5 - t2 / 48.0 + t2 * t2 / 3840.0, torch.sin(0.5 * t) / t)
    half_cos = torch.where(small, 1.0 - t2 / 8.0 + t2 * t2 / 384.0, torch.cos(0.5 * t))
    return torch.cat((half_cos, axis_angle * half_sin_over_t), -1)


def quaternion_to_axis_angle(quaternions: torch.Tensor) -> torch.Tensor:
    """(..., 4) real-first quaternions -> (..., 3) axis * angle, angle in [0, pi] (the shortest rotation)."""
    _check_last(quaternions, (4,), "quaternion")
    q = standardize_quaternion(quaternions)
    v = q[..., 1:]
    n2 = (v * v).sum(-1, keepdim=True)
    n = torch.sqrt(torch.clamp(n2, min=torch.finfo(q.dtype).tiny))  # no infinite gradient at the identity
    half = torch.atan2(n, q[..., :1])  # in [0, pi/2] since w >= 0
    # angle / sin(half) = 2 * half / sin(half) = 1 / (0.5 * sinc(half / pi)); sinc(x) >= 2/pi here
    return v / (0.5 * torch.sinc(half / math.pi))


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis * angle -> (..., 3, 3) rotation matrices."""
    return quaternion_to_matrix(axis_angle_to_quaternion(axis_angle))


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis * angle, angle in [0, pi]."""
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def _axis_index(convention: str) -> list:
    if len(convention) != 3:
        raise ValueError("Convention must have 3 letters.")
    for letter in convention:
        if letter not in _AXES:
            raise ValueError("Invalid letter %s in convention string." % letter)
    if convention[1] in (convention[0], convention[2]):
        raise ValueError("Invalid convention %s." % convention)
    return [_AXES.index(c) for c in convention]


def _elementary(axis: int, angle: torch.Tensor) -> torch.Tensor:
    """Rotation by `angle` about coordinate axis 0, 1 or 2 (right-handed, active)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == 0:
        flat = (one, zero, zero, zero, c, -s, zero, s, c)
    elif axis == 1:
        flat = (c, zero, s, zero, one, zero, -s, zero, c)
    else:
        flat = (c, -s, zero, s, c, zero, zero, zero, one)
    return torch.stack(flat, -1).reshape(angle.shape + (3, 3))


def euler_angles_to_matrix(euler_angles: torch.Tensor, convention: str) -> torch.Tensor:
    """(..., 3) angles (radians) -> (..., 3, 3): R = R_c0(a0) @ R_c1(a1) @ R_c2(a2) for convention c0 c1 c2."""
    if euler_angles.dim() == 0 or euler_angles.shape[-1] != 3:
        raise ValueError("Invalid input euler angles.")
    axes = _axis_index(convention)
    r = [_elementary(a, e) for a, e in zip(axes, torch.unbind(euler_angles, -1))]
    return r[0] @ r[1] @ r[2]


def _parity(i: int, j: int) -> float:
    """+1 if (i, j, third axis) is a cyclic order of (0, 1, 2), else -1."""
    return 1.0 if (j - i) % 3 == 1 else -1.0


def _safe_hypot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.clamp(x * x + y * y, min=torch.finfo(x.dtype).tiny))


def matrix_to_euler_angles(matrix: torch.Tensor, convention: str) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) angles for `convention`, the inverse of euler_angles_to_matrix.

    Middle angle in [-pi/2, pi/2] for Tait-Bryan conventions (three different axes), in [0, pi] for proper
    Euler ones (first axis == last axis); the others in (-pi, pi]. Angles come from atan2 of matrix entries
    (accurate over the whole range, unlike asin/acos near +-1). At gimbal lock only a sum of the first and third
    angles is determined: the third is set to zero and the first taken from R @ R_c1(a1)^T.
    """
    _check_last(matrix, (3, 3), "rotation matrix")
    a, b, c = _axis_index(convention)
    k = 3 - a - b  # the axis that is neither the first nor the middle one
    e = _parity(a, b)
    r = matrix
    if a != c:  # Tait-Bryan
        cos_mid = _safe_hypot(r[..., a, a], r[..., a, b])
        mid = torch.atan2(e * r[..., a, k], cos_mid)
        y1, x1 = -e * r[..., b, k], r[..., k, k]
        y3, x3 = -e * r[..., a, b], r[..., a, a]
        lock_measure = cos_mid
    else:  # proper Euler
        sin_mid = _safe_hypot(r[..., a, b], r[..., a, k])
        mid = torch.atan2(sin_mid, r[..., a, a])
        y1, x1 = r[..., b, a], -e * r[..., k, a]
        y3, x3 = r[..., a, b], e * r[..., a, k]
        lock_measure = sin_mid
    lock = lock_measure < torch.finfo(r.dtype).eps ** 0.5
    # Off lock: atan2 of the entries (fed a harmless (0, 1) where locked, so no 0/0 gradient leaks through).
    first = torch.atan2(torch.where(lock, torch.zeros_like(y1), y1), torch.where(lock, torch.ones_like(x1), x1))
    third = torch.atan2(torch.where(lock, torch.zeros_like(y3), y3), torch.where(lock, torch.ones_like(x3), x3))
    # At lock: third = 0 and R = R_a(first) @ R_b(mid), so R_a(first) = R @ R_b(mid)^T.
    m = r @ _elementary(b, mid).transpose(-1, -2)
    first_locked = torch.atan2(e * m[..., k, b], m[..., b, b])
    first = torch.where(lock, first_locked, first)
    third = torch.where(lock, torch.zeros_like(third), third)
    return torch.stack((first, mid, third), -1)
