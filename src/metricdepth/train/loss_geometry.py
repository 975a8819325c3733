"""Geometric depth losses of Metric3D v2: virtual normals (VNL) and plane co-planarity (PWN).

Also holds ``depth_to_normal`` (surface normals of a depth map, used by the depth-normal
consistency loss of ``loss_normal``). Every loss runs under ``loss_guard.full_precision``
(float32 even inside bf16 autocast, which would otherwise see bf16 pixel coordinates).

Units: depth in canonical metres, intrinsics in pixels of the current (cropped) frame, points
in canonical metres. Every loss returns a scalar already multiplied by ``weight``.

``mode="official"`` reproduces Metric3D's training code value for value (the numbered quirks of
``shared/lossfix/README.md``); ``mode="corrected"`` (default) fixes the documented bugs. See
``docs/losses.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from metricdepth.train.loss_guard import check_mode, full_precision


def inverse_intrinsic(intrinsic: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B,3,3) K^-1 in ``dtype``, inverted in float64 and then rounded.

    The official code inverts a float32 K in float32; LAPACK builds differ there by an ulp
    (this machine's torch gets u0/fx one ulp off, the fixtures' machine did not), and the
    differences of neighbouring points amplify that ~300x in the gradients. The rounded
    float64 inverse is the correctly rounded one, the same on every machine, and reproduces
    the fixtures exactly.
    """
    return torch.linalg.inv(intrinsic.to(torch.float64)).to(dtype)


def _cosine_outliers(diff: torch.Tensor, delta_cos: float, eps: float) -> torch.Tensor:
    """Triplets whose difference vectors are nearly parallel.

    ``diff`` (N, C, 3): the C-dimensional differences p2-p1, p3-p1, p3-p2 of N triplets. Counts
    the entries of the 3x3 normalised Gram matrix (diagonal included) with |.| > delta_cos; more
    than 3 means some pair is near-collinear. Returns (N,) bool.
    """
    rows = diff.permute(0, 2, 1)  # (N, 3 differences, C)
    lengths = rows.norm(2, dim=2)  # (N, 3)
    outer = torch.bmm(lengths[:, :, None], lengths[:, None, :])
    gram = torch.bmm(rows, diff) / (outer + eps)
    return ((gram > delta_cos) | (gram < -delta_cos)).flatten(1).sum(1) > 3


# ----------------------------------------------------------------------------------------------
# Virtual normal loss
# ----------------------------------------------------------------------------------------------


def draw_vnl_triplets(
    mask: torch.Tensor, sample_ratio: float = 0.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw the VNL triplets as the official loss does.

    ``mask`` (B,1,H,W) bool. For each sample, three independent permutations of the row-major
    list of valid pixels, each cut to Ns = int(sample_ratio*H*W); with fewer valid pixels the
    tail is padded with index 0. Returns (B, 3, Ns) int64 flat indices ``y*W + x``.
    """
    b, _, h, w = mask.shape
    n_s = int(h * w * sample_ratio)
    out = torch.zeros((b, 3, n_s), dtype=torch.int64, device=mask.device)
    for i in range(b):
        valid = torch.nonzero(mask[i].reshape(-1) > 1e-6).flatten()
        take = min(n_s, valid.numel())
        for k in range(3):
            perm = torch.randperm(valid.numel(), generator=generator).to(mask.device)
            out[i, k, :take] = valid[perm[:take]]
    return out


class FirstBatchPrincipalPoint:
    """The official VNL's grid cache (quirk 4), for ``vnl_loss(mode="official")``.

    ``cache(intrinsic, shape)`` returns the intrinsic of the first call, until a call with
    another (B, C, H, W) shape replaces it, as the official buffer does.
    """

    def __init__(self) -> None:
        self._shape: tuple[int, ...] | None = None
        self._intrinsic: torch.Tensor | None = None

    def __call__(self, intrinsic: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if self._intrinsic is None or self._shape != shape:
            self._shape = shape
            self._intrinsic = intrinsic.detach().clone()
        return self._intrinsic


def _vnl_points(
    depth: torch.Tensor, intrinsic: torch.Tensor, centre_from: torch.Tensor, official: bool
) -> torch.Tensor:
    """(B,3,H,W) points ``((u-u0) d/fx, (v-v0) d/f_y, d)``; official: f_y = fx, float32 grid."""
    b, _, h, w = depth.shape
    grid_dtype = torch.float32 if official else depth.dtype
    k = intrinsic.to(grid_dtype)
    centre = centre_from.to(grid_dtype)
    y, x = torch.meshgrid(
        torch.arange(h, dtype=grid_dtype, device=depth.device),
        torch.arange(w, dtype=grid_dtype, device=depth.device),
        indexing="ij",
    )
    u_m_u0 = x[None, None] - centre[:, 0, 2][:, None, None, None]
    v_m_v0 = y[None, None] - centre[:, 1, 2][:, None, None, None]
    fx = k[:, 0, 0][:, None, None, None]
    fy = fx if official else k[:, 1, 1][:, None, None, None]
    return torch.cat([u_m_u0 * depth / fx, v_m_v0 * depth / fy, depth], 1)


def _gather_triplets(points: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) points, (B,3,N) flat indices -> (B, N, 3 coords, 3 points)."""
    b, c = points.shape[:2]
    flat = points.reshape(b, c, -1)
    idx = triplets.to(device=points.device, dtype=torch.long)
    per_point = [torch.gather(flat, 2, idx[:, k][:, None, :].expand(b, c, -1)) for k in range(3)]
    return torch.stack(per_point, dim=3).permute(0, 2, 1, 3)


def _unit_normals(groups: torch.Tensor, eps: float) -> torch.Tensor:
    """(N, 3, 3 points) -> (N, 3) unit normals of (p2-p1) x (p3-p1); a zero norm gets +eps."""
    n = torch.linalg.cross(groups[:, :, 1] - groups[:, :, 0], groups[:, :, 2] - groups[:, :, 0])
    norm = n.norm(2, dim=1, keepdim=True)
    return n / (norm + (norm == 0).to(norm.dtype) * eps)


@full_precision
def vnl_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    intrinsic: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    triplets: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sample_ratio: float = 0.2,
    weight: float = 1.0,
    delta_cos: float = 0.867,
    delta_diff: float = 0.005,
    delta_z: float = 1e-5,
    trim_ratio: float = 0.25,
    mode: str = "corrected",
    principal_point_from: torch.Tensor | None = None,
) -> torch.Tensor:
    """Virtual normal loss (Yin et al. 2019), as in Metric3D v2.

    Args:
        prediction, target: (B,1,H,W) depth in canonical metres; target <= delta_z is invalid.
        intrinsic: (B,3,3) canonical K of this batch.
        mask: (B,1,H,W) bool, pixels the triplets are drawn from (default ``target > 1e-8``).
        triplets: (B,3,Ns) flat indices ``y*W+x`` (``draw_vnl_triplets``); drawn with
            ``generator`` when None.
        mode: ``"official"`` back-projects with fx for both axes, a float32 pixel grid, and the
            principal point of ``principal_point_from`` ((B,3,3), default this ``intrinsic``; see
            ``FirstBatchPrincipalPoint``). ``"corrected"`` uses this batch's fx, fy, u0, v0.

    Triplets are dropped when a GT point is invalid, when two GT difference vectors are
    near-parallel (|cos| > delta_cos) or when all three coordinates have a difference below
    delta_diff. Per triplet: L1 between the GT and predicted unit normals; the pooled batch is
    sorted, its lowest ``trim_ratio`` dropped and the rest averaged. Returns a scalar.
    """
    check_mode(mode)
    official = mode == "official"
    if principal_point_from is not None and not official:
        raise ValueError("principal_point_from reproduces quirk 4 and needs mode='official'")
    eps = 1e-6
    if mask is None:
        mask = target > 1e-8
    if triplets is None:
        triplets = draw_vnl_triplets(mask, sample_ratio, generator)
    centre = intrinsic if principal_point_from is None else principal_point_from
    gt = _gather_triplets(_vnl_points(target, intrinsic, centre, official), triplets)
    pred = _gather_triplets(_vnl_points(prediction, intrinsic, centre, official), triplets)
    b, n = gt.shape[:2]
    gt = gt.reshape(b * n, 3, 3)
    pred = pred.reshape(b * n, 3, 3)

    diff = torch.stack(
        [gt[:, :, 1] - gt[:, :, 0], gt[:, :, 2] - gt[:, :, 0], gt[:, :, 2] - gt[:, :, 1]], dim=2
    )  # (BN, 3 coords, 3 differences)
    collinear = _cosine_outliers(diff, delta_cos, eps)
    near = ((diff.abs() < delta_diff).sum(2) > 0).all(1)
    valid_z = (gt[:, 2, :] > delta_z).sum(1) == 3
    keep = valid_z & ~(near | collinear)

    per_triplet = (_unit_normals(gt[keep], eps) - _unit_normals(pred[keep], eps)).abs().sum(1)
    ordered, _ = torch.sort(per_triplet)
    kept = ordered[int(ordered.numel() * trim_ratio) :]
    loss = kept.sum() / (kept.numel() + eps)
    if not torch.isfinite(loss):
        loss = prediction.sum() * 0.0
    return loss * weight


# ----------------------------------------------------------------------------------------------
# Plane co-planarity loss (PWN planes)
# ----------------------------------------------------------------------------------------------

PLANE_DATASETS = ("Taskonomy",)


def draw_pwn_triplets(
    plane_ids: torch.Tensor, sample_groups: int = 5000, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw the PWN triplets of one sample's planes as the official loss does.

    ``plane_ids`` (H,W) int, 0 = no plane. For each non-zero id in ascending order: its pixels
    (row-major), padded to 3*sample_groups by a random subset of repeats when it has at least
    60% of that, shuffled, and dealt round-robin into p1, p2, p3. Planes below 60% get zeros
    (the loss ignores them; the official code samples other pixels and can raise, quirk 5).
    Returns (P, 3, sample_groups, 2) int64 ``[y, x]``.
    """
    ids = [int(v) for v in torch.unique(plane_ids) if int(v) != 0]
    size = 3 * sample_groups
    out = torch.zeros((len(ids), 3, sample_groups, 2), dtype=torch.int64, device=plane_ids.device)
    for j, pid in enumerate(ids):
        pts = torch.nonzero(plane_ids == pid)
        count = pts.shape[0]
        if count < 0.6 * size:
            continue
        if count < size:
            extra = torch.randperm(count, generator=generator)[: size - count]
            pts = torch.cat([pts, pts[extra.to(pts.device)]], 0)
        order = torch.randperm(pts.shape[0], generator=generator).to(pts.device)[:size]
        for k in range(3):
            out[j, k] = pts[order[k::3]]
    return out


def _plane_cloud(depth: torch.Tensor, intrinsic: torch.Tensor, official: bool) -> torch.Tensor:
    """(B,3,H,W) points ``d * K^-1 (a, b, 1)``; official: (a, b) = (row, col) in float32."""
    b, _, h, w = depth.shape
    dtype = torch.float32 if official else depth.dtype
    rows = torch.arange(h, dtype=dtype, device=depth.device).view(h, 1).expand(h, w)
    cols = torch.arange(w, dtype=dtype, device=depth.device).view(1, w).expand(h, w)
    first, second = (rows, cols) if official else (cols, rows)
    pix = torch.stack([first, second, torch.ones_like(rows)], 0).reshape(1, 3, h * w)
    rays = inverse_intrinsic(intrinsic, dtype) @ pix.expand(b, 3, h * w).contiguous()
    return depth * rays.reshape(b, 3, h, w)


def _plane_term(
    groups: torch.Tensor, delta_cos: float, delta_diff: float
) -> tuple[torch.Tensor, int]:
    """Sum of (1 - n.a) over the kept triplets of one plane, and their number.

    ``groups`` (N, 3 coords, 3 points) predicted points.
    """
    xy = groups[:, 0:2]
    diff = torch.stack(
        [xy[:, :, 1] - xy[:, :, 0], xy[:, :, 2] - xy[:, :, 0], xy[:, :, 2] - xy[:, :, 1]], 2
    )
    collinear = _cosine_outliers(diff, delta_cos, 1e-8)
    near = ((diff[:, 0].abs() < delta_diff).sum(1) > 0) & (
        (diff[:, 1].abs() < delta_diff).sum(1) > 0
    )
    keep = ~(collinear | near)
    if int(keep.sum()) < 2:
        return groups.sum() * 0.0, 0
    g = groups[keep]
    n = torch.linalg.cross(g[:, :, 1] - g[:, :, 0], g[:, :, 2] - g[:, :, 0])
    n = n / (n.norm(2, dim=1, keepdim=True) + 1e-8)
    n = torch.where(((n * g[:, :, 0]).sum(1) > 0)[:, None], -n, n)
    mean_dir = n.sum(0)
    mean_dir = mean_dir / (mean_dir.norm(2, dim=0, keepdim=True) + 1e-5)
    return (1.0 - (n * mean_dir).sum(1)).sum(0), int(n.shape[0])


@full_precision
def pwn_planes_loss(
    prediction: torch.Tensor,
    intrinsic: torch.Tensor,
    plane_ids: torch.Tensor,
    dataset: Sequence[str],
    *,
    triplets: Sequence[torch.Tensor | None] | None = None,
    generator: torch.Generator | None = None,
    plane_datasets: Sequence[str] = PLANE_DATASETS,
    sample_groups: int = 5000,
    delta_cos: float = 0.867,
    delta_diff: float = 0.007,
    weight: float = 1.0,
    mode: str = "corrected",
) -> torch.Tensor:
    """Plane co-planarity loss: virtual normals of triplets on one labelled plane should agree.

    Args:
        prediction: (B,1,H,W) depth in canonical metres.
        intrinsic: (B,3,3) canonical K.
        plane_ids: (B,1,H,W) int plane-instance ids (0 = none); read for samples whose
            ``dataset`` name is in ``plane_datasets`` (Taskonomy's ``sem_mask``).
        triplets: per sample, None or (P,3,N,2) ``[y, x]`` for its ascending non-zero ids
            (``draw_pwn_triplets``); drawn with ``generator`` when missing.
        mode: ``"official"`` back-projects (row, col, 1) (swapped axes) with a float32 grid and
            accumulates the sum in float32; ``"corrected"`` uses (col, row, 1) and the input dtype.

    Planes with fewer than 0.6*3*sample_groups pixels are skipped (never raises, unlike the
    official code on small images). Triplets whose xy differences are near-collinear or all
    short are dropped; each kept normal is oriented towards the camera; per plane the loss is
    sum(1 - n.a) with a their mean direction. Total / (triplets + 1e-6) * weight.
    """
    check_mode(mode)
    official = mode == "official"
    used = [i for i, name in enumerate(dataset) if name in plane_datasets]
    if not used:
        return prediction.sum() * 0.0
    cloud = _plane_cloud(prediction[used], intrinsic[used], official)
    acc_dtype = torch.float32 if official else prediction.dtype
    total = torch.zeros((), dtype=acc_dtype, device=prediction.device)
    count = 0
    min_px = 0.6 * 3 * sample_groups
    for c, b in enumerate(used):
        ids_map = plane_ids[b, 0]
        ids = [int(v) for v in torch.unique(ids_map) if int(v) != 0]
        if not ids:
            continue
        yx = triplets[b] if triplets is not None else None
        if yx is None:
            yx = draw_pwn_triplets(ids_map, sample_groups, generator)
        yx = yx.to(device=cloud.device, dtype=torch.long)
        for j, pid in enumerate(ids):
            if int((ids_map == pid).sum()) < min_px:
                continue
            pts = cloud[c][:, yx[j, :, :, 0], yx[j, :, :, 1]]  # (3 coords, 3 points, N)
            term, n = _plane_term(pts.permute(2, 0, 1), delta_cos, delta_diff)
            total = (total.to(term.dtype) + term).to(acc_dtype)
            count += n
    loss = total / (count + 1e-6) * weight
    if not torch.isfinite(loss):
        loss = total * 0.0
    return loss + prediction.sum() * 0.0


# ----------------------------------------------------------------------------------------------
# Normals from depth
# ----------------------------------------------------------------------------------------------


def _face_camera(n: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    return torch.where((n * xyz).sum(1, keepdim=True) > 0, -n, n)


def _soft_unit(n: torch.Tensor) -> torch.Tensor:
    return n / (torch.sqrt((n**2).sum(1, keepdim=True) + 1e-4) + 1e-8)


def depth_to_normal(
    depth: torch.Tensor,
    intrinsic: torch.Tensor,
    valid: torch.Tensor,
    *,
    z_scale: torch.Tensor | None = None,
    ray_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Surface normals of a depth map (Metric3D's ``Depth2Normal``).

    Points ``X = d K^-1 (u, v, 1)`` with Z divided by ``z_scale`` (B,). With zero padding of 2
    px, two cross products of horizontal x vertical differences are summed: an inner,
    asymmetric pair (X(u-1)-X(u+2)) x (X(v-1)-X(v+2)) and the outer pair at +-2; each is turned
    towards the camera and normalised by sqrt(|n|^2+1e-4)+1e-8, and so is their sum.

    Args:
        depth: (B,1,H,W) depth (canonical metres); intrinsic (B,3,3); valid (B,1,H,W) bool.
        ray_dtype: dtype of K^-1 and the pixel grid (float32 reproduces the official code);
            default: ``depth.dtype``.

    Returns:
        normal (B,3,H,W), zero where a neighbour at distance 2 is invalid, and its validity
        (B,1,H,W) bool (those four neighbours and the pixel itself).
    """
    b, _, h, w = depth.shape
    dtype = ray_dtype or depth.dtype
    y, x = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=depth.device),
        torch.arange(w, dtype=dtype, device=depth.device),
        indexing="ij",
    )
    pix = torch.stack(
        [x.reshape(-1), y.reshape(-1), torch.ones(h * w, dtype=dtype, device=x.device)]
    )
    rays = torch.matmul(inverse_intrinsic(intrinsic[:, :3, :3], dtype), pix[None])
    pts = depth.reshape(b, 1, -1) * rays
    if z_scale is not None:
        pts = torch.cat([pts[:, 0:2], pts[:, 2:3] / z_scale.reshape(b, 1, 1)], 1)
    xyz = pts.reshape(b, 3, h, w)

    xp = torch.nn.functional.pad(xyz, (2, 2, 2, 2))
    mp = torch.nn.functional.pad(valid.reshape(b, 1, h, w), (2, 2, 2, 2))

    def at(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        return t[:, :, 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w]

    inner = torch.linalg.cross(at(xp, 0, -1) - at(xp, 0, 2), at(xp, -1, 0) - at(xp, 2, 0), dim=1)
    outer = torch.linalg.cross(at(xp, 0, -2) - at(xp, 0, 2), at(xp, -2, 0) - at(xp, 2, 0), dim=1)
    inner = _soft_unit(_face_camera(inner, xyz))
    outer = _soft_unit(_face_camera(outer, xyz))
    normal = _face_camera(_soft_unit(inner + outer), xyz)
    ok = at(mp, 0, -2) & at(mp, 0, 2) & at(mp, -2, 0) & at(mp, 2, 0)
    normal = torch.where(ok, normal, torch.zeros_like(normal))
    return normal, ok & valid.reshape(b, 1, h, w)
