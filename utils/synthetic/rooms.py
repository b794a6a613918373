"""The random furnished rooms of the synthetic data set (`utils/synthetic/generate.py` renders them).

A room is a box (x right, y up, z forward, one corner at the origin) with doors, windows and
pictures on its walls and furniture built from axis-aligned boxes: bed with pillows, sofa, table,
chairs, cabinet, lamp, plus a few unlabelled clutter boxes. Colours are drawn per scene from
overlapping per-class ranges (e.g. cabinets, tables, doors and chairs share wood tones; walls and
ceilings are pale), so colour alone is not enough to tell the classes apart.
"""
import colorsys

import numpy as np

ROOM_FACES = ("wall", "wall", "floor", "ceiling", "wall", "wall")  # x-, x+, y-, y+, z-, z+


def hsv(rng, hue, sat, val):
    """An RGB colour (floats in 0..1) drawn uniformly from hue/saturation/value ranges."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(*hue) % 1.0, rng.uniform(*sat), rng.uniform(*val)))


def wood(rng):
    """Wood, or a painted white/grey/black finish: shared by cabinets, tables, doors and chairs."""
    if rng.random() < 0.65:
        return hsv(rng, (0.04, 0.11), (0.35, 0.75), (0.25, 0.8))
    return hsv(rng, (0, 1), (0, 0.08), rng.choice([(0.1, 0.25), (0.45, 0.6), (0.8, 0.95)]))


def any_colour(rng, sat=(0.1, 0.7), val=(0.25, 0.9)):
    """A colour of any hue."""
    return hsv(rng, (0, 1), sat, val)


class Scene:
    """A room (x right, y up, z forward, one corner at the origin) and its labelled primitives.

    Primitives are boxes `(lo, hi)` or wall decals (a flat rectangle on a room face). Each has a
    class name (None = unlabelled) and a material: base colour plus texture name and parameters.
    """

    def __init__(self, size, face_materials):
        self.size = np.asarray(size, np.float64)
        self.face_materials = face_materials  # one material per ROOM_FACES entry
        self.boxes, self.decals = [], []  # (label, lo, hi, material) / (label, face, lo, hi, material)
        self.footprints = []  # (x0, x1, z0, z1) of floor-standing furniture

    def add_box(self, label, lo, hi, material):
        self.boxes.append((label, np.asarray(lo, np.float64), np.asarray(hi, np.float64), material))

    def add_decal(self, label, face, lo, hi, material):
        """A rectangle on room face `face` (index into ROOM_FACES) spanning `lo`..`hi`."""
        self.decals.append((label, face, np.asarray(lo, np.float64), np.asarray(hi, np.float64), material))

    def free_spot(self, rng, width, depth, x_range, z_range, tries=12):
        """A floor footprint of `width` x `depth` inside the ranges not overlapping earlier ones."""
        for _ in range(tries):
            x0, z0 = rng.uniform(*x_range), rng.uniform(*z_range)
            box = (x0, x0 + width, z0, z0 + depth)
            if all(box[1] < f[0] or box[0] > f[1] or box[3] < f[2] or box[2] > f[3] for f in self.footprints):
                self.footprints.append(box)
                return box
        return None


def add_legs(scene, label, x0, x1, z0, z1, height, thickness, material):
    """Four legs under a rectangle."""
    for x in (x0, x1 - thickness):
        for z in (z0, z1 - thickness):
            scene.add_box(label, (x, 0, z), (x + thickness, height, z + thickness), material)


def add_bed(scene, rng):
    """Mattress, headboard against the front wall, and 1-2 pillows."""
    w, d = rng.uniform(1.2, 1.8), rng.uniform(1.9, 2.1)
    W, _, D = scene.size
    spot = scene.free_spot(rng, w, d, (0.1, W - w - 0.1), (D - d - 0.02, D - d - 0.01))
    if spot is None:
        return
    x0, x1, z0, z1 = spot
    h = rng.uniform(0.4, 0.6)
    sheet = dict(colour=any_colour(rng, (0.05, 0.5), (0.55, 0.95)), texture="fabric")
    scene.add_box("bed", (x0, 0, z0), (x1, h, z1), sheet)
    headboard = dict(colour=wood(rng), texture="wood")
    scene.add_box("bed", (x0, 0, z1 - 0.08), (x1, h + rng.uniform(0.4, 0.7), z1), headboard)
    pillow = dict(colour=any_colour(rng, (0.0, 0.6), (0.5, 0.95)), texture="fabric")
    count = int(rng.integers(1, 3))
    for i in range(count):
        px0 = x0 + 0.08 + i * (w - 0.16) / count
        scene.add_box("pillow", (px0, h, z1 - 0.5), (px0 + (w - 0.16) / count - 0.06, h + 0.15, z1 - 0.12), pillow)


def add_sofa(scene, rng):
    """Seat, back and arms against the front wall or a side wall, maybe with cushions."""
    W, _, D = scene.size
    length, depth = rng.uniform(1.6, 2.4), rng.uniform(0.8, 0.95)
    material = dict(colour=any_colour(rng, (0.15, 0.7), (0.2, 0.8)), texture="fabric")
    seat, back, arm = rng.uniform(0.38, 0.48), rng.uniform(0.75, 0.9), rng.uniform(0.55, 0.65)
    wall = int(rng.integers(3))  # 0 left, 1 right, 2 front
    if wall == 2:
        spot = scene.free_spot(rng, length, depth, (0.1, W - length - 0.1), (D - depth - 0.02, D - depth - 0.01))
    else:
        x0 = 0.01 if wall == 0 else W - depth - 0.01
        spot = scene.free_spot(rng, depth, length, (x0, x0 + 0.005), (1.5, D - length - 0.1))
    if spot is None:
        return
    x0, x1, z0, z1 = spot
    scene.add_box("sofa", (x0, 0, z0), (x1, seat, z1), material)
    if wall == 2:
        scene.add_box("sofa", (x0, 0, z1 - 0.2), (x1, back, z1), material)
        arms = [((x0, 0, z0), (x0 + 0.2, arm, z1)), ((x1 - 0.2, 0, z0), (x1, arm, z1))]
        starts = rng.uniform(x0 + 0.3, x1 - 0.7, 2)
        cushions = [((c, seat, z1 - 0.35), (c + 0.4, seat + 0.35, z1 - 0.2)) for c in starts]
    else:
        bx0 = x0 if wall == 0 else x1 - 0.2
        cx0 = x0 + 0.2 if wall == 0 else x1 - 0.35
        scene.add_box("sofa", (bx0, 0, z0), (bx0 + 0.2, back, z1), material)
        arms = [((x0, 0, z0), (x1, arm, z0 + 0.2)), ((x0, 0, z1 - 0.2), (x1, arm, z1))]
        starts = rng.uniform(z0 + 0.3, z1 - 0.7, 2)
        cushions = [((cx0, seat, c), (cx0 + 0.15, seat + 0.35, c + 0.4)) for c in starts]
    for lo, hi in arms:
        scene.add_box("sofa", lo, hi, material)
    cushion = dict(colour=any_colour(rng, (0.2, 0.8), (0.4, 0.95)), texture="fabric")
    for lo, hi in cushions[: int(rng.integers(0, 3))]:
        scene.add_box("pillow", lo, hi, cushion)


def add_table_and_chairs(scene, rng):
    """A table (top + legs) with 0-4 chairs around it; or a lone chair."""
    W, _, D = scene.size
    chair_material = dict(colour=wood(rng) if rng.random() < 0.6 else any_colour(rng), texture="wood")
    if rng.random() < 0.85:
        w, d = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0)
        spot = scene.free_spot(rng, w, d, (0.6, W - w - 0.6), (1.6, D - d - 0.6))
        if spot is None:
            return
        x0, x1, z0, z1 = spot
        h = rng.uniform(0.7, 0.78)
        material = dict(colour=wood(rng), texture="wood")
        scene.add_box("table", (x0, h - 0.04, z0), (x1, h, z1), material)
        add_legs(scene, "table", x0 + 0.03, x1 - 0.03, z0 + 0.03, z1 - 0.03, h - 0.04, 0.05, material)
        if rng.random() < 0.35:
            add_lamp(scene, rng, ((x0 + x1) / 2 + rng.uniform(-0.2, 0.2), h, (z0 + z1) / 2), small=True)
        sides = [s for s in ("left", "right", "front", "back") if rng.random() < 0.6]
        for side in sides:
            cx = {"left": x0 - 0.3, "right": x1 + 0.3}.get(side, (x0 + x1) / 2 + rng.uniform(-0.2, 0.2))
            cz = {"front": z0 - 0.3, "back": z1 + 0.3}.get(side, (z0 + z1) / 2 + rng.uniform(-0.15, 0.15))
            add_chair(scene, rng, cx, cz, {"left": 0, "right": 1, "front": 2, "back": 3}[side], chair_material)
    else:
        spot = scene.free_spot(rng, 0.5, 0.5, (0.6, W - 1.1), (1.5, D - 1.0))
        if spot is not None:
            add_chair(scene, rng, spot[0] + 0.25, spot[2] + 0.25, int(rng.integers(4)), chair_material)


def add_chair(scene, rng, cx, cz, back_side, material):
    """Seat, legs and a backrest on side 0 (x-), 1 (x+), 2 (z-) or 3 (z+) of a 0.45 m seat."""
    s, seat = 0.225, rng.uniform(0.42, 0.48)
    x0, x1, z0, z1 = cx - s, cx + s, cz - s, cz + s
    scene.add_box("chair", (x0, seat - 0.05, z0), (x1, seat, z1), material)
    add_legs(scene, "chair", x0, x1, z0, z1, seat - 0.05, 0.04, material)
    top = seat + rng.uniform(0.35, 0.5)
    back = {
        0: ((x0, seat, z0), (x0 + 0.05, top, z1)),
        1: ((x1 - 0.05, seat, z0), (x1, top, z1)),
        2: ((x0, seat, z0), (x1, top, z0 + 0.05)),
        3: ((x0, seat, z1 - 0.05), (x1, top, z1)),
    }[back_side]
    scene.add_box("chair", *back, material)


def add_cabinet(scene, rng):
    """A tall or low cabinet against a side wall or the front wall."""
    W, _, D = scene.size
    w, h, d = rng.uniform(0.5, 1.2), rng.uniform(0.7, 2.0), rng.uniform(0.4, 0.6)
    material = dict(colour=wood(rng), texture="cabinet", drawer=rng.uniform(0.6, 0.85))
    wall = rng.integers(3)
    if wall == 2:
        spot = scene.free_spot(rng, w, d, (0.05, W - w - 0.05), (D - d - 0.02, D - d - 0.01))
    else:
        x0 = 0.01 if wall == 0 else W - d - 0.01
        spot = scene.free_spot(rng, d, w, (x0, x0 + 0.005), (1.2, D - w - 0.05))
    if spot is not None:
        x0, x1, z0, z1 = spot
        scene.add_box("cabinet", (x0, 0, z0), (x1, h, z1), material)


def add_lamp(scene, rng, base=None, small=False):
    """A floor lamp (pole and shade) or, with `small`, a table lamp standing at `base`."""
    W, _, D = scene.size
    if base is None:
        spot = scene.free_spot(rng, 0.4, 0.4, (0.1, W - 0.5), (2.0, D - 0.45))
        if spot is None:
            return
        base = (spot[0] + 0.2, 0.0, spot[2] + 0.2)
    x, y, z = base
    if small:
        pole_h, shade = rng.uniform(0.2, 0.3), rng.uniform(0.2, 0.28)
    else:
        pole_h, shade = rng.uniform(1.2, 1.6), rng.uniform(0.3, 0.45)
    metal = dict(colour=hsv(rng, (0, 1), (0, 0.1), (0.1, 0.6)), texture="plain")
    scene.add_box("lamp", (x - 0.1, y, z - 0.1), (x + 0.1, y + 0.03, z + 0.1), metal)
    scene.add_box("lamp", (x - 0.015, y, z - 0.015), (x + 0.015, y + pole_h, z + 0.015), metal)
    glow = dict(colour=hsv(rng, (0.08, 0.15), (0.05, 0.4), (0.85, 1.0)), texture="glow")
    r = shade / 2
    scene.add_box("lamp", (x - r, y + pole_h, z - r), (x + r, y + pole_h + shade * 0.8, z + r), glow)


def add_wall_items(scene, rng):
    """Door, windows and pictures on the side walls and the front wall."""
    W, H, D = scene.size
    taken = {1: [], 0: [], 5: []}  # face -> occupied horizontal intervals

    def place(face, width, margin=0.15):
        extent = D if face in (0, 1) else W
        lo_range = (1.0 if face in (0, 1) else margin, extent - width - margin)
        for _ in range(10):
            a = rng.uniform(*lo_range)
            if all(a + width < b0 - 0.1 or a > b1 + 0.1 for b0, b1 in taken[face]):
                taken[face].append((a, a + width))
                return a
        return None

    def decal(label, face, a, width, y0, y1, material):
        axis = 2 if face in (0, 1) else 0  # the horizontal axis along the wall
        wall_coord = {0: 0.0, 1: W, 5: D}[face]
        lo, hi = np.zeros(3), np.zeros(3)
        lo[axis], hi[axis] = a, a + width
        lo[1], hi[1] = y0, y1
        normal_axis = 0 if face in (0, 1) else 2
        lo[normal_axis] = hi[normal_axis] = wall_coord
        scene.add_decal(label, face, lo, hi, material)

    faces = [0, 1, 5]
    if rng.random() < 0.75:
        face, width = faces[rng.integers(3)], rng.uniform(0.8, 1.0)
        a = place(face, width)
        if a is not None:
            material = dict(colour=wood(rng), texture="door", handle_left=bool(rng.random() < 0.5))
            decal("door", face, a, width, 0.0, rng.uniform(2.0, min(2.2, H - 0.1)), material)
    for _ in range(int(rng.integers(0, 3)) + (rng.random() < 0.6)):
        face, width = faces[rng.integers(3)], rng.uniform(0.8, 1.8)
        a = place(face, width)
        if a is not None:
            frame = hsv(rng, (0, 1), (0, 0.1), (0.75, 0.95)) if rng.random() < 0.7 else wood(rng)
            sky = (hsv(rng, (0.52, 0.62), (0.15, 0.5), (0.85, 1.0)), hsv(rng, (0, 1), (0, 0.1), (0.9, 1.0)))
            material = dict(colour=frame, texture="window", sky=sky, bars=int(rng.integers(0, 3)))
            decal("window", face, a, width, rng.uniform(0.7, 1.0), rng.uniform(1.9, min(2.3, H - 0.1)), material)
    for _ in range(int(rng.integers(0, 3))):
        face, width = faces[rng.integers(3)], rng.uniform(0.35, 1.0)
        a = place(face, width)
        if a is not None:
            y0 = rng.uniform(1.1, 1.5)
            material = dict(
                colour=wood(rng) if rng.random() < 0.5 else any_colour(rng, (0, 0.3), (0.05, 0.9)),
                texture="picture", colours=[any_colour(rng, (0.2, 1.0), (0.2, 1.0)) for _ in range(3)],
                freqs=rng.uniform(2, 9, size=(3, 2)), phases=rng.uniform(0, 2 * np.pi, size=3),
            )
            decal("picture", face, a, width, y0, y0 + width * rng.uniform(0.6, 1.0), material)


def add_clutter(scene, rng):
    """0-2 small unlabelled boxes on the floor (the "unlabelled" pixels of real data)."""
    W, _, D = scene.size
    for _ in range(int(rng.integers(0, 3))):
        w, d = rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5)
        spot = scene.free_spot(rng, w, d, (0.1, W - w - 0.1), (1.2, D - d - 0.1))
        if spot is not None:
            material = dict(colour=any_colour(rng, (0, 0.8), (0.2, 0.9)), texture="plain")
            scene.add_box(None, (spot[0], 0, spot[2]), (spot[1], rng.uniform(0.15, 0.6), spot[3]), material)


def room_materials(rng):
    """Materials of the six room faces: one wall colour (sometimes an accent wall), floor, ceiling."""
    wall_colour = hsv(rng, (0, 1), (0.03, 0.3), (0.6, 0.92))
    wall = dict(colour=wall_colour, texture="stripes" if rng.random() < 0.2 else "plain")
    accent = dict(wall, colour=any_colour(rng, (0.2, 0.6), (0.35, 0.85))) if rng.random() < 0.3 else wall
    floor_kind = rng.choice(["wood", "tiles", "carpet"])
    floor_colour = {
        "wood": lambda: hsv(rng, (0.04, 0.11), (0.35, 0.75), (0.3, 0.75)),
        "tiles": lambda: hsv(rng, (0, 1), (0, 0.15), (0.4, 0.9)),
        "carpet": lambda: any_colour(rng, (0.1, 0.5), (0.2, 0.7)),
    }[floor_kind]()
    floor = dict(colour=floor_colour, texture=floor_kind, tile=rng.uniform(0.3, 0.6))
    ceiling = dict(colour=hsv(rng, (0, 1), (0, 0.06), (0.82, 0.97)), texture="plain")
    walls = [wall, wall, wall, wall]
    walls[rng.integers(4)] = accent
    return [walls[0], walls[1], floor, ceiling, walls[2], walls[3]]


def random_scene(rng):
    """A furnished room."""
    scene = Scene((rng.uniform(3.5, 6.0), rng.uniform(2.5, 3.0), rng.uniform(4.0, 7.0)), room_materials(rng))
    if rng.random() < 0.55:
        add_bed(scene, rng)
    if rng.random() < 0.55:
        add_sofa(scene, rng)
    add_table_and_chairs(scene, rng)
    for _ in range(int(rng.random() < 0.7) + int(rng.random() < 0.3)):
        add_cabinet(scene, rng)
    if rng.random() < 0.5:
        add_lamp(scene, rng)
    add_wall_items(scene, rng)
    add_clutter(scene, rng)
    return scene
