"""Synthetic RGB-D indoor scenes written in the NYUDepthv2 layout.

Each sample is a ray-cast view of a random furnished room (`utils/synthetic/rooms.py`) seen by a
pinhole camera (NYU-like focal length, slight yaw and downward pitch). Depth comes from the same
geometry (camera z), so labels, depth and RGB agree. Surfaces are textured, Lambert-shaded by a
ceiling light and given sensor noise.

Files, as the official NYUDepthv2 package: `RGB/<name>.jpg`, `Depth/<name>.png` (8-bit,
`depth_to_uint8`: per-image min-max, 0 nearest .. 255 farthest), `Label/<name>.png` (0 unlabelled,
1 + index into the config's `class_names`), `train.txt` / `test.txt` (lines `RGB/<name>.jpg`).
Every image has its own random stream derived from (seed, split, index), so the output does not
depend on the number of images generated or on the machine. The folder also gets `synthetic.json`,
the settings it was made with (`manifest.py`).
"""
import json
import os
import shutil

import cv2
import numpy as np

from local_configs._base_ import SYNTHETIC_CLASSES
from utils.dataloader.transforms import depth_to_uint8

from .manifest import SETTINGS_FILE, config_settings, stale_settings
from .rooms import ROOM_FACES, random_scene

FOCAL = 0.81  # focal length / image width, as NYUDepthv2's Kinect (518.8 px at 640 px)
JPEG_QUALITY = 90
SURFACE_AXES = ((2, 1), (0, 2), (0, 1))  # texture (u, v) world axes of a face whose normal is x, y, z


def camera_rays(rng, scene, height, width):
    """Origin and per-pixel world ray directions, scaled so that the ray parameter is camera z."""
    W, H, _ = scene.size
    origin = np.array([W / 2 + rng.uniform(-0.4, 0.4) * W / 2, rng.uniform(1.2, 1.7), rng.uniform(0.2, 0.6)])
    yaw, pitch = rng.uniform(-0.35, 0.35), rng.uniform(-0.4, -0.08)
    f = FOCAL * width
    v, u = np.mgrid[0:height, 0:width]
    dirs = np.stack([(u + 0.5 - width / 2) / f, -(v + 0.5 - height / 2) / f, np.ones((height, width))], -1)
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    pitch_m = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
    yaw_m = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return origin, dirs.reshape(-1, 3) @ (yaw_m @ pitch_m).T


def cast(scene, origin, dirs):
    """Per-ray hit distance, primitive id (0-5 room faces, 6+ boxes) and the hit face's normal axis.

    Slab tests on axis-major (3, N) arrays; the 3-way min/max are written out because numpy's
    reductions over a length-3 axis are several times slower.
    """
    d = np.ascontiguousarray(dirs.T)
    with np.errstate(divide="ignore"):
        inv = 1.0 / d
    o_inv = origin[:, None] * inv
    exits = np.where(d > 0, scene.size[:, None] * inv - o_inv, -o_inv)  # leaving the room per axis
    axis = exits.argmin(0)
    rows = np.arange(d.shape[1])
    t = exits[axis, rows]
    prim = axis * 2 + (d[axis, rows] > 0)
    for k, (_, lo, hi, _) in enumerate(scene.boxes):
        t1, t2 = lo[:, None] * inv - o_inv, hi[:, None] * inv - o_inv
        near, far = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
        t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
        hit = (t_near <= t_far) & (t_near > 1e-6) & (t_near < t)
        if hit.any():
            t[hit], prim[hit], axis[hit] = t_near[hit], 6 + k, near[:, hit].argmax(0)
    return t, prim, axis


def apply_decals(scene, prim, points):
    """Re-assign wall pixels inside a decal rectangle to the decal (ids after the boxes)."""
    first = 6 + len(scene.boxes)
    for k, (_, face, lo, hi, _) in enumerate(scene.decals):
        inside = (prim == face) & np.all((points >= lo - 1e-9) & (points <= hi + 1e-9), axis=1)
        prim[inside] = first + k
    return prim


def texture(material, u, v, s, t, rng):
    """(multiplier of the base colour (n,) or colours (n, 3), emissive mask) for pixels of a face.

    `u`, `v` are relative (0..1 across the primitive's face), `s`, `t` are metres.
    """
    kind, n = material["texture"], len(u)
    ones, dark = np.ones(n), np.zeros(n, bool)
    if kind == "plain":
        return ones + rng.normal(0, 0.02, n), dark
    if kind == "stripes":
        return 1 + 0.08 * (np.sin(s * 2 * np.pi * 4) > 0), dark
    if kind == "fabric":
        return 1 + 0.06 * np.sin(s * 90) * np.sin(t * 90) + rng.normal(0, 0.04, n), dark
    if kind == "wood":
        plank = np.floor(s * 6)
        return 1 + 0.1 * np.sin(t * 25 + 3 * np.sin(plank * 12.9)) - 0.15 * (s * 6 - plank < 0.06), dark
    if kind == "carpet":
        return 1 + rng.normal(0, 0.08, n), dark
    if kind == "tiles":
        size = material["tile"]
        grout = ((s / size) % 1 < 0.05) | ((t / size) % 1 < 0.05)
        return np.where(grout, 0.65, 1.0) + rng.normal(0, 0.02, n), dark
    if kind == "cabinet":
        line = (np.abs(u - 0.5) < 0.01) | (np.abs(v - material["drawer"]) < 0.012)
        handle = (np.abs(u - 0.5) < 0.06) & (np.abs(u - 0.5) > 0.025) & (np.abs(v - material["drawer"] + 0.06) < 0.03)
        return np.where(line | handle, 0.45, 1.0) + 0.05 * np.sin(t * 30), dark
    if kind == "door":
        near_v = (np.abs(v - 0.1) < 0.01) | (np.abs(v - 0.5) < 0.01) | (np.abs(v - 0.9) < 0.01)
        panel = ((np.abs(u - 0.15) < 0.015) | (np.abs(u - 0.85) < 0.015)) & (v > 0.1) & (v < 0.9)
        panel |= near_v & (u > 0.15) & (u < 0.85)
        hx = 0.1 if material["handle_left"] else 0.9
        handle = (np.abs(u - hx) < 0.035) & (np.abs(v - 0.47) < 0.02)
        return np.where(handle, 0.3, np.where(panel, 0.7, 1.0)) + 0.04 * np.sin(t * 40), dark
    if kind == "glow":
        return ones * 1.15, ~dark
    if kind == "window":
        bars = material["bars"]
        frame = (u < 0.05) | (u > 0.95) | (v < 0.06) | (v > 0.94)
        for b in range(1, bars + 1):
            frame |= np.abs(u - b / (bars + 1)) < 0.02
        frame |= np.abs(v - 0.6) < 0.02
        top, bottom = material["sky"]
        sky = bottom[None] + (top - bottom)[None] * v[:, None]
        return np.where(frame[:, None], material["colour"][None], sky), ~frame
    if kind == "picture":
        frame = (u < 0.06) | (u > 0.94) | (v < 0.06) | (v > 0.94)
        mix = np.zeros((n, 3))
        for colour, (fu, fv), phase in zip(material["colours"], material["freqs"], material["phases"]):
            mix += colour[None] * (0.5 + 0.5 * np.sin(fu * u * np.pi + fv * v * np.pi + phase))[:, None]
        return np.where(frame[:, None], material["colour"][None], np.clip(mix / 1.5, 0, 1)), dark
    raise ValueError(f"unknown texture {kind!r}")


def primitive_table(scene):
    """Per primitive id: (label, material, lo, hi) in cast id order: faces, boxes, decals."""
    zero, size = np.zeros(3), scene.size
    table = [(name, scene.face_materials[i], zero, size) for i, name in enumerate(ROOM_FACES)]
    table += [(label, material, lo, hi) for label, lo, hi, material in scene.boxes]
    table += [(label, material, lo, hi) for label, _, lo, hi, material in scene.decals]
    return table


def shade(points, normals, light):
    """Ambient plus Lambert light from a ceiling lamp with distance fall-off."""
    to_light = light - points
    dist = np.linalg.norm(to_light, axis=1)
    lambert = np.clip((normals * to_light).sum(1) / dist, 0, 1)
    return 0.4 + 0.8 * lambert / (1 + 0.04 * dist**2)


def render(rng, height, width, class_names):
    """One scene: (RGB uint8 HxWx3 in RGB order, depth float64 metres HxW, label uint8 HxW)."""
    scene = random_scene(rng)
    origin, dirs = camera_rays(rng, scene, height, width)
    t, prim, axis = cast(scene, origin, dirs)
    rows = np.arange(len(t))
    points = origin + t[:, None] * dirs
    prim = apply_decals(scene, prim, points)
    normals = np.zeros_like(points)
    normals[rows, axis] = -np.sign(dirs[rows, axis])
    W, H, D = scene.size
    light = np.array([W * rng.uniform(0.3, 0.7), H - 0.05, D * rng.uniform(0.3, 0.7)])
    lighting = shade(points, normals, light)
    colour = np.zeros_like(points)
    label = np.zeros(len(t), np.uint8)
    for pid, (name, material, lo, hi) in enumerate(primitive_table(scene)):
        idx = np.flatnonzero(prim == pid)
        if idx.size == 0:
            continue
        s_axis, t_axis = np.array(SURFACE_AXES)[axis[idx]].T
        s, tt = points[idx, s_axis], points[idx, t_axis]
        u = (s - lo[s_axis]) / np.maximum(hi[s_axis] - lo[s_axis], 1e-6)
        v = (tt - lo[t_axis]) / np.maximum(hi[t_axis] - lo[t_axis], 1e-6)
        albedo, emissive = texture(material, u, v, s, tt, rng)
        if albedo.ndim == 1:
            albedo = material["colour"][None] * albedo[:, None]
        colour[idx] = albedo * np.where(emissive, 1.0, lighting[idx])[:, None]
        label[idx] = 0 if name is None else class_names.index(name) + 1
    colour *= rng.uniform(0.85, 1.15) * rng.uniform(0.92, 1.08, 3)  # exposure and white balance
    colour += rng.normal(0, rng.uniform(0.01, 0.035), colour.shape)
    rgb = np.clip(colour * 255 + 0.5, 0, 255).astype(np.uint8).reshape(height, width, 3)
    return rgb, t.reshape(height, width), label.reshape(height, width)


def sample_rng(seed, split, index):
    """The random stream of one image: independent of the other images and of their count."""
    return np.random.default_rng([seed, {"train": 0, "test": 1}[split], index])


def write_sample(out, name, rgb, depth, label):
    """RGB/<name>.jpg, Depth/<name>.png (official 8-bit convention), Label/<name>.png."""
    cv2.imwrite(os.path.join(out, "RGB", f"{name}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    cv2.imwrite(os.path.join(out, "Depth", f"{name}.png"), depth_to_uint8(depth))
    cv2.imwrite(os.path.join(out, "Label", f"{name}.png"), label)


def generate_dataset(out, num_train, num_test, height, width, seed, class_names=SYNTHETIC_CLASSES):
    """Write the data set and its `synthetic.json` into folder `out` (created; files are overwritten).

    Label values are 1 + the index in `class_names`, which must contain every class drawn here.
    """
    absent = sorted(set(SYNTHETIC_CLASSES) - set(class_names))
    if absent:
        raise ValueError(f"class_names lacks {absent}, which the synthetic scenes contain")
    for folder in ("RGB", "Depth", "Label"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    for split, count in (("train", num_train), ("test", num_test)):
        names = [f"{split}_{i:05d}" for i in range(count)]
        for i, name in enumerate(names):
            write_sample(out, name, *render(sample_rng(seed, split, i), height, width, class_names))
        with open(os.path.join(out, f"{split}.txt"), "w") as f:
            f.writelines(f"RGB/{name}.jpg\n" for name in names)
    settings = dict(num_train=num_train, num_test=num_test, height=height, width=width, seed=seed,
                    class_names=list(class_names))
    with open(os.path.join(out, SETTINGS_FILE), "w") as f:
        json.dump(settings, f, indent=1)


def ensure_synthetic_dataset(C):
    """Generate (or regenerate) the synthetic data set of config `C` at `C.dataset_path` if needed.

    Generation goes to a temporary folder that replaces the old one at the end, so an interrupted
    run or several processes starting at once never leave a half-written data set behind.
    """
    problem = stale_settings(C)
    if not problem:
        return
    print(f"Generating the synthetic data set in {C.dataset_path} ({C.num_train_imgs} train / "
          f"{C.num_eval_imgs} test images of {C.image_height}x{C.image_width}; {problem}) ...", flush=True)
    tmp, old = f"{C.dataset_path}.tmp-{os.getpid()}", f"{C.dataset_path}.old-{os.getpid()}"
    try:
        generate_dataset(tmp, **config_settings(C))
        if os.path.exists(C.dataset_path):
            os.rename(C.dataset_path, old)
        os.rename(tmp, C.dataset_path)
    except OSError:
        # The rename fails when another process finished first; its copy is complete, so use it.
        if stale_settings(C):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
