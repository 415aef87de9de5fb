"""Numerical checks of the pytorch3d-transforms shim's rotation code against SciPy, run inside a venv that has
torch and SciPy (the test venv has neither). Usage: python rotation_checks.py ROTATIONS_PY -> one JSON document:

  {"errors": {name: [max_abs_error, tolerance]}, "finite": {name: bool}, "gradcheck": {name: bool},
   "dtypes": {name: dtype}}
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings

import numpy as np
import torch
from scipy.spatial.transform import Rotation

spec = importlib.util.spec_from_file_location("rotations", sys.argv[1])
rot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rot)

TOL = {torch.float64: 1e-12, torch.float32: 2e-6}
CONVENTIONS = ["XYZ", "XZY", "YXZ", "YZX", "ZXY", "ZYX", "XYX", "XZX", "YXY", "YZY", "ZXZ", "ZYZ"]
errors: dict = {}
finite: dict = {}
gradcheck: dict = {}
dtypes: dict = {}


def err(name: str, got: torch.Tensor, want, dtype: torch.dtype, tol: float | None = None) -> None:
    want_t = torch.as_tensor(np.asarray(want), dtype=torch.float64)
    e = float((got.double() - want_t).abs().max())
    key = f"{name}[{str(dtype).split('.')[-1]}]"
    errors[key] = [e, tol if tol is not None else TOL[dtype]]


def wxyz(r: Rotation) -> np.ndarray:
    q = r.as_quat()  # scalar-last
    q = np.concatenate([q[..., 3:], q[..., :3]], -1)
    return np.where(q[..., :1] < 0, -q, q)


def up_to_sign(q: torch.Tensor, ref: np.ndarray) -> np.ndarray:
    """ref with the sign that matches q (a 180-degree turn has w = 0: both signs are one rotation)."""
    refs = np.asarray(ref)
    flip = (q.double().numpy() * refs).sum(-1, keepdims=True) < 0
    return np.where(flip, -refs, refs)


def grads_finite(name: str, fn, x: torch.Tensor) -> None:
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    (out * torch.linspace(0.5, 1.5, out.shape[-1], dtype=out.dtype)).sum().backward()
    finite[name] = bool(torch.isfinite(out).all() and torch.isfinite(x.grad).all())


rng = np.random.default_rng(20261126)
shape = (4, 5)
r = Rotation.random(20, random_state=1)
axes180 = rng.normal(size=(50, 3))
axes180 /= np.linalg.norm(axes180, axis=1, keepdims=True)
r180 = Rotation.from_rotvec(np.concatenate([np.pi * np.eye(3), np.pi * axes180]))
tiny = rng.normal(size=(40, 3))
tiny *= (10.0 ** rng.uniform(-12, -3, size=(40, 1))) / np.linalg.norm(tiny, axis=1, keepdims=True)
r_tiny = Rotation.from_rotvec(tiny)

for dt in (torch.float64, torch.float32):
    m = torch.tensor(r.as_matrix().reshape(*shape, 3, 3), dtype=dt)
    q = rot.matrix_to_quaternion(m)
    dtypes[f"matrix_to_quaternion[{dt}]"] = str(q.dtype)
    err("matrix_to_quaternion batched (4,5)", q, wxyz(r).reshape(*shape, 4), dt)
    err("quaternion_to_matrix batched (4,5)", rot.quaternion_to_matrix(torch.tensor(wxyz(r).reshape(*shape, 4),
                                                                                       dtype=dt)), m, dt)
    err("round trip q2m(m2q(m))", rot.quaternion_to_matrix(q), m, dt)
    aa = torch.tensor(r.as_rotvec().reshape(*shape, 3), dtype=dt)
    err("matrix_to_axis_angle batched", rot.matrix_to_axis_angle(m), aa, dt, TOL[dt] * 10)
    err("axis_angle_to_matrix batched", rot.axis_angle_to_matrix(aa), m, dt)
    err("axis_angle_to_quaternion batched", rot.axis_angle_to_quaternion(aa), wxyz(r).reshape(*shape, 4), dt)
    err("quaternion_to_axis_angle batched", rot.quaternion_to_axis_angle(q), aa, dt, TOL[dt] * 10)
    err("round trip m2aa(aa2m(aa))", rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(aa)), aa, dt, TOL[dt] * 10)

    # 180-degree turns about x, y, z and random axes: trace = -1, w = 0
    m180 = torch.tensor(r180.as_matrix(), dtype=dt)
    q180 = rot.matrix_to_quaternion(m180)
    err("matrix_to_quaternion 180deg (up to sign)", q180, up_to_sign(q180, wxyz(r180)), dt)
    err("round trip at 180deg", rot.quaternion_to_matrix(q180), m180, dt)
    errors[f"real part >= 0 at 180deg[{str(dt).split('.')[-1]}]"] = [float(max(0.0, -q180[..., 0].min())), 0.0]
    aa180 = rot.matrix_to_axis_angle(m180)
    err("axis angle magnitude at 180deg", aa180.norm(dim=-1), np.full(len(r180), np.pi), dt, TOL[dt] * 10)
    err("axis_angle_to_matrix at 180deg", rot.axis_angle_to_matrix(aa180), m180, dt)

    # near the identity: angles from 1e-12 to 1e-3 rad
    mt = torch.tensor(r_tiny.as_matrix(), dtype=dt)
    err("matrix_to_quaternion near identity", rot.matrix_to_quaternion(mt), wxyz(r_tiny), dt)
    at = torch.tensor(tiny, dtype=dt)
    err("axis_angle_to_quaternion near identity", rot.axis_angle_to_quaternion(at), wxyz(r_tiny), dt)
    qt = torch.tensor(wxyz(r_tiny), dtype=dt)
    # relative to the angle: the small-angle path must keep the axis, not only be close to zero
    rel = ((rot.quaternion_to_axis_angle(qt).double() - torch.tensor(tiny)).norm(dim=-1)
           / torch.tensor(tiny).norm(dim=-1)).max()
    errors[f"quaternion_to_axis_angle near identity, relative[{str(dt).split('.')[-1]}]"] = [
        float(rel), 1e-9 if dt == torch.float64 else 1e-5]
    err("axis_angle_to_matrix near identity", rot.axis_angle_to_matrix(at), r_tiny.as_matrix(), dt)

    # quaternion algebra against SciPy's composition, inverse and apply
    r2 = Rotation.random(20, random_state=2)
    qa, qb = torch.tensor(wxyz(r), dtype=dt), torch.tensor(wxyz(r2), dtype=dt)
    err("quaternion_multiply vs composition", rot.quaternion_multiply(qa, qb), wxyz(r * r2), dt)
    err("quaternion_raw_multiply vs composition (up to sign)", rot.quaternion_raw_multiply(qa, qb),
        up_to_sign(rot.quaternion_raw_multiply(qa, qb), wxyz(r * r2)), dt)
    err("quaternion_invert vs inverse", rot.standardize_quaternion(rot.quaternion_invert(qa)), wxyz(r.inv()), dt)
    pts = rng.normal(size=(20, 3))
    err("quaternion_apply vs apply", rot.quaternion_apply(qa, torch.tensor(pts, dtype=dt)), r.apply(pts), dt,
        TOL[dt] * 10)
    err("standardize_quaternion", rot.standardize_quaternion(-qa), wxyz(r), dt)

    # Euler angles, all twelve conventions (upper case = intrinsic in SciPy = R_c0 @ R_c1 @ R_c2)
    for conv in CONVENTIONS:
        ang = r.as_euler(conv)
        e = torch.tensor(ang, dtype=dt)
        mm = torch.tensor(r.as_matrix(), dtype=dt)
        err(f"euler_angles_to_matrix {conv}", rot.euler_angles_to_matrix(e, conv), r.as_matrix(), dt)
        err(f"matrix_to_euler_angles {conv}", rot.matrix_to_euler_angles(mm, conv), ang, dt, TOL[dt] * 10)
        # gimbal lock: middle angle at +-90 deg (Tait-Bryan) or 0/180 deg (proper); the angles must still
        # reproduce the matrix
        locked_mid = [np.pi / 2, -np.pi / 2] if conv[0] != conv[2] else [0.0, np.pi]
        lock = np.array([[0.3, mid, 0.7] for mid in locked_mid])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lm = torch.tensor(Rotation.from_euler(conv, lock).as_matrix(), dtype=dt)
        back = rot.euler_angles_to_matrix(rot.matrix_to_euler_angles(lm, conv), conv)
        err(f"gimbal lock round trip {conv}", back, lm, dt, TOL[dt] * 10)

# gradients: finite everywhere, including where a naive formula divides by zero
m180 = torch.tensor(r180.as_matrix())
grads_finite("matrix_to_quaternion at 180deg (x, y, z, random axes)", rot.matrix_to_quaternion, m180)
grads_finite("matrix_to_quaternion at identity", rot.matrix_to_quaternion, torch.eye(3, dtype=torch.float64))
grads_finite("matrix_to_quaternion near identity", rot.matrix_to_quaternion, torch.tensor(r_tiny.as_matrix()))
grads_finite("matrix_to_quaternion at 180deg float32", rot.matrix_to_quaternion, m180.float())
grads_finite("matrix_to_axis_angle at 180deg and identity", rot.matrix_to_axis_angle,
             torch.cat([m180, torch.eye(3, dtype=torch.float64)[None]]))
grads_finite("axis_angle_to_quaternion at zero", rot.axis_angle_to_quaternion, torch.zeros(2, 3, dtype=torch.float64))
grads_finite("axis_angle_to_matrix at zero", rot.axis_angle_to_matrix, torch.zeros(2, 3, dtype=torch.float64))
grads_finite("quaternion_to_axis_angle at identity (w = 1 and w = -1)", rot.quaternion_to_axis_angle,
             torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]], dtype=torch.float64))
grads_finite("quaternion_to_axis_angle at 180deg (w = 0)", rot.quaternion_to_axis_angle,
             torch.tensor(wxyz(r180)))
for conv in ("XYZ", "ZYZ"):
    mid = [np.pi / 2, -np.pi / 2] if conv == "XYZ" else [0.0, np.pi]
    lm = torch.tensor(Rotation.from_euler(conv, [[0.3, x, 0.7] for x in mid]).as_matrix())
    grads_finite(f"matrix_to_euler_angles {conv} at gimbal lock", lambda x, c=conv: rot.matrix_to_euler_angles(x, c),
                 lm)

# gradcheck (float64, generic points)
g = torch.tensor(r.as_matrix()[:3])
qg = torch.tensor(rng.normal(size=(3, 4)))
ag = torch.tensor(rng.normal(size=(3, 3)))
cases = {
    "matrix_to_quaternion": (rot.matrix_to_quaternion, g),
    "quaternion_to_matrix": (rot.quaternion_to_matrix, qg),
    "axis_angle_to_quaternion": (rot.axis_angle_to_quaternion, ag),
    "quaternion_to_axis_angle": (rot.quaternion_to_axis_angle, qg),
    "matrix_to_axis_angle": (rot.matrix_to_axis_angle, g),
    "euler_angles_to_matrix XYZ": (lambda x: rot.euler_angles_to_matrix(x, "XYZ"), ag),
    "matrix_to_euler_angles ZYX": (lambda x: rot.matrix_to_euler_angles(x, "ZYX"), g),
    "matrix_to_euler_angles ZXZ": (lambda x: rot.matrix_to_euler_angles(x, "ZXZ"), g),
    "quaternion_raw_multiply": (lambda x: rot.quaternion_raw_multiply(x, qg.flip(0)), qg),
}
for name, (fn, x) in cases.items():
    gradcheck[name] = bool(torch.autograd.gradcheck(fn, (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-6))

print(json.dumps({"errors": errors, "finite": finite, "gradcheck": gradcheck, "dtypes": dtypes}))
