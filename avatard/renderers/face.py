"""The built-in avatar's look: a friendly cartoon face drawn from a :class:`Pose`.

Pure drawing: no I/O, no clocks, no randomness. ``draw(pose, width, height)`` returns a BGR image and is
called once per frame at 25 fps, so the work is split in two:

* everything that never moves (background, torso, neck) is painted once per frame size, and everything that
  moves only rigidly with the head (face shading, ears, hair, nose, blush) is painted once into a BGRA
  "head sprite". Both are cached per size (:func:`_rig`); these painters may be slow and pretty (float
  compositing, blurred shadows).
* per frame we copy the background, warp the head sprite by the head's affine motion (sub-pixel, so a
  two-pixel sway glides instead of stepping), and draw the parts that change shape -- eyes, lids, brows,
  mouth, hands, hearts -- as anti-aliased polygons with 1/16-pixel precision.

Geometry is authored in reference units on a 512x512 canvas (head centred at x=256, torso reaching the
bottom edge) and scaled by ``min(width, height) / 512``; the figure is centred horizontally and stands on
the bottom edge, so 320x240 or 1280x720 frames show the same avatar with more background.

Gestures are choreographed here, from ``(gesture, gesture_phase)`` alone, so a pose fully determines the
picture: the animator only decides *when* a gesture plays and how far along it is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import attrs
import cv2
import numpy as np

from ..constants import GESTURES

GESTURE_NAMES = frozenset(GESTURES)  # each has a drawing in _CHOREOGRAPHY (tests/test_face.py checks)

REF = 512.0  # side of the canvas the geometry below is authored on; every length scales by min(w, h)/REF
SHIFT = 4  # fractional bits for cv2 drawing: 1/16 px, so slow idle sway moves smoothly instead of jumping
_ONE = float(1 << SHIFT)
MAX_CACHED_SIZES = 4  # distinct frame sizes whose pre-rendered layers we keep (a daemon uses one or two)

# Resting expression: a pose at smile 0 would look stern, so the mouth always curves up a little and
# Pose's default smile adds a friendly resting smile on top.
RESTING_SMILE = 0.3

# -- layout, in reference units --------------------------------------------------------------------
HEAD = (256.0, 212.0)  # centre of the face oval
HEAD_RX = 88.0  # half width of the face at the cheeks
HEAD_RY_TOP = 104.0  # forehead height above centre (mostly under the hair)
HEAD_RY_BOTTOM = 114.0  # chin depth below centre
NECK_PIVOT = (256.0, 330.0)  # the head tilts and nods about the top of the neck, not its own centre
EYE_DX, EYE_Y = 37.0, 222.0  # eye centres at HEAD.x -/+ EYE_DX
EYE_RX, EYE_RY = 16.0, 12.5  # eye opening half-axes
IRIS_R, PUPIL_R = 10.0, 4.6
RESTING_LID = 0.16  # the upper lid covers the top of the iris at rest; fully open eyes look startled
BROW_Y = 192.0  # brow centre line at brow=0
MOUTH = (256.0, 289.0)
MOUTH_HALF_WIDTH = 21.0
MOUTH_MAX_OPEN = 24.0  # lower-lip drop at mouth=1
SPRITE_BOX = (128.0, 80.0, 384.0, 340.0)  # x0, y0, x1, y1 of everything that moves rigidly with the head

# -- palette (BGR) ---------------------------------------------------------------------------------
BG_TOP = (246, 226, 204)  # pale sky blue
BG_BOTTOM = (236, 206, 214)  # soft lavender
SKIN = (158, 192, 240)
SKIN_SHADOW = (118, 146, 206)
LID_DARKEN = 0.93  # eyelids read as lids, not as a hole in the face, when a touch darker than the skin
BLUSH = (150, 150, 246)
HAIR = (38, 50, 86)
HAIR_LIGHT = (72, 96, 150)
SHIRT = (96, 124, 236)  # coral
SHIRT_DARK = (70, 88, 190)
SCLERA = (246, 248, 250)
IRIS = (44, 92, 140)  # warm amber-brown
IRIS_DARK = (26, 52, 86)
PUPIL = (24, 24, 30)
LASH = (40, 38, 52)
BROW_COLOR = (40, 52, 84)
MOUTH_INSIDE = (48, 36, 104)
TEETH = (244, 246, 250)
TONGUE = (120, 112, 224)
LIP = (104, 110, 204)
LIP_LINE = (70, 70, 150)
LIP_HINT = (128, 150, 214)  # between lip and skin: suggests a lower lip without reading as a second mouth
HAND = SKIN
HAND_LINE = (80, 100, 160)
HEART = (82, 64, 232)
HEART_LINE = (52, 40, 170)


def _between(lo: float, hi: float) -> Callable[[object, attrs.Attribute, float], None]:
    def check(_instance: object, attribute: attrs.Attribute, value: float) -> None:
        if not lo <= value <= hi:  # also rejects NaN
            raise ValueError(f"Pose.{attribute.name}={value!r} is outside [{lo}, {hi}]")

    return check


def _finite(_instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"Pose.{attribute.name}={value!r} is not finite")


@attrs.frozen
class Pose:
    """One frame's expression. Distances are reference pixels (a 512-pixel-tall frame); draw() scales them.

    ``smile`` defaults to a friendly resting smile; ``gesture`` names one of :data:`GESTURE_NAMES` and
    ``gesture_phase`` says how far it has played (0 = just started, 1 = done).
    """

    mouth: float = attrs.field(default=0.0, converter=float, validator=_between(0.0, 1.0))
    blink: float = attrs.field(default=0.0, converter=float, validator=_between(0.0, 1.0))
    head_dx: float = attrs.field(default=0.0, converter=float, validator=_finite)
    head_dy: float = attrs.field(default=0.0, converter=float, validator=_finite)
    head_tilt: float = attrs.field(default=0.0, converter=float, validator=_finite)
    brow: float = attrs.field(default=0.0, converter=float, validator=_between(-1.0, 1.0))
    smile: float = attrs.field(default=RESTING_SMILE, converter=float, validator=_between(0.0, 1.0))
    gesture: str | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.in_(GESTURE_NAMES)))
    gesture_phase: float = attrs.field(default=0.0, converter=float, validator=_between(0.0, 1.0))


def draw(pose: Pose, width: int, height: int) -> np.ndarray:
    """Render ``pose`` as a new BGR uint8 image of shape (height, width, 3).

    The first call for a size paints and caches its static layers; later calls take ~1.4 ms at 512x512.
    The returned array belongs to the caller.
    """
    rig = _rig(int(width), int(height))
    look = _Look.of(pose)
    frame = rig.background.copy()
    head = rig.head_matrix(look)
    _blit(frame, rig.sprite_bgr, rig.sprite_alpha, head @ rig.sprite_to_ref)
    pen = _Pen(frame, head, rig.scale)
    for side in (-1.0, 1.0):
        _draw_eye(pen, rig, look, side)
        _draw_brow(pen, look, side)
    _draw_mouth(pen, look)
    body = _Pen(frame, rig.base, rig.scale)
    if look.props is not None:
        look.props(body)
    return frame


# ==================================================================================================
# Choreography: what each gesture does to the face, and what it adds in front of it.
# ==================================================================================================


@attrs.frozen
class _Look:
    """A pose with its gesture folded in: the numbers the painters actually use."""

    mouth: float
    blink: float
    wink: float  # extra closure of the eye on the image's right only
    squint: float  # 0..1 happy squint; from SQUINT_ARCS up the eyes become ^ ^ arcs
    dx: float
    dy: float
    tilt: float
    pitch: float  # 0..1 chin-down: squashes the head a little and lowers the features
    gaze: float  # iris offset downward, reference units (looking down while nodding)
    brow: float
    smile: float
    props: Callable[[_Pen], None] | None = None  # draws hands/hearts in body coordinates

    @classmethod
    def of(cls, pose: Pose) -> _Look:
        look = cls(mouth=pose.mouth, blink=pose.blink, wink=0.0, squint=0.0, dx=pose.head_dx, dy=pose.head_dy,
                   tilt=pose.head_tilt, pitch=0.0, gaze=0.0, brow=pose.brow, smile=pose.smile)
        if pose.gesture is None:
            return look
        look = _CHOREOGRAPHY[pose.gesture](look, pose.gesture_phase)
        # Gestures add to the pose's own expression; keep the sums in the range the painters expect.
        return attrs.evolve(look, mouth=min(1.0, look.mouth), wink=min(1.0, look.wink), squint=min(1.0, look.squint),
                            brow=max(-1.0, min(1.0, look.brow)), smile=min(1.0, look.smile))


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3.0 - 2.0 * x)


def _envelope(phase: float, rise: float, fall: float) -> float:
    """0 -> 1 over the first ``rise`` of the gesture, 1 -> 0 over the last ``fall``; eased both ways."""
    return _smoothstep(phase / rise) * _smoothstep((1.0 - phase) / fall)


def _pop(x: float) -> float:
    """Ease-out with a small overshoot (an object popping into place); 0 at 0, 1 at 1."""
    x = min(1.0, max(0.0, x))
    c = 1.7
    return 1.0 + (c + 1.0) * (x - 1.0) ** 3 + c * (x - 1.0) ** 2


def _wave(look: _Look, phase: float) -> _Look:
    env = _envelope(phase, 0.2, 0.2)

    def props(pen: _Pen) -> None:
        # The avatar's right hand (image left) comes up from below the frame beside the head and rocks
        # about the wrist three times; rising and lowering are a translation, so nothing has to bend.
        lift = 1.0 - _smoothstep(phase / 0.2) * _smoothstep((1.0 - phase) / 0.2)
        rock = 22.0 * math.sin(2.0 * math.pi * 3.0 * phase) * env
        wrist = (82.0 + 0.15 * rock, 300.0 + 340.0 * lift)
        _draw_arm(pen, wrist, 8.0 + 0.3 * rock)
        _draw_open_hand(pen, wrist, rock)

    return attrs.evolve(look, smile=look.smile + 0.5 * env, brow=look.brow + 0.5 * env, tilt=look.tilt - 4.0 * env,
                        dx=look.dx + 3.0 * env, props=props)


def _laugh(look: _Look, phase: float) -> _Look:
    env = _envelope(phase, 0.12, 0.2)
    bob = abs(math.sin(math.pi * 7.0 * phase))  # seven quick bobs: the "ha-ha-ha" rhythm
    return attrs.evolve(look, squint=env, mouth=max(look.mouth, env * (0.62 + 0.3 * bob)), smile=look.smile + env,
                        brow=look.brow + 0.6 * env, dy=look.dy + env * (3.0 + 7.0 * bob), tilt=look.tilt + 5.0 * env)


def _nod(look: _Look, phase: float) -> _Look:
    # Two dips whose raised-cosine windows overlap, so the head comes only half way up between them:
    # that reads as "yes, yes" rather than two separate bows.
    def dip(centre: float) -> float:
        d = abs(phase - centre) / 0.3
        return 0.5 * (1.0 + math.cos(math.pi * d)) if d < 1.0 else 0.0

    pitch = dip(0.3) + dip(0.7)
    env = _envelope(phase, 0.15, 0.2)
    return attrs.evolve(look, pitch=pitch, gaze=3.0 * pitch, dy=look.dy + 20.0 * pitch, smile=look.smile + 0.5 * env,
                        brow=look.brow + 0.4 * env)


def _heart(look: _Look, phase: float) -> _Look:
    env = _envelope(phase, 0.15, 0.15)

    def props(pen: _Pen) -> None:
        # A big heart grows and rises from the chest to just under the chin, beating twice; two small ones
        # drift up and out behind it. All sizes end at zero, so the gesture leaves nothing behind.
        grow = _pop(phase / 0.3) * _smoothstep((1.0 - phase) / 0.15)
        beat = 1.0 + 0.08 * max(0.0, math.sin(2.0 * math.pi * 2.5 * phase))
        rise = _smoothstep(phase / 0.5)
        for delay, x, size in ((0.25, 186.0, 14.0), (0.4, 330.0, 11.0)):
            t = (phase - delay) / (1.0 - delay)
            if 0.0 < t < 1.0:
                k = math.sin(math.pi * t)
                _draw_heart(pen, (x + 20.0 * t * (1 if x > 256 else -1), 420.0 - 120.0 * t), size * k)
        _draw_heart(pen, (256.0, 452.0 - 52.0 * rise), 44.0 * grow * beat)

    return attrs.evolve(look, smile=look.smile + 0.6 * env, brow=look.brow + 0.4 * env, squint=0.4 * env,
                        tilt=look.tilt + 5.0 * env, props=props)


def _thumbs(look: _Look, phase: float) -> _Look:
    env = _envelope(phase, 0.15, 0.2)
    wink = _smoothstep((phase - 0.35) / 0.1) * _smoothstep((0.75 - phase) / 0.1)  # a wink at the peak

    def props(pen: _Pen) -> None:
        # The avatar's left fist (image right) pops up in front of the chest, thumb up, with a small pump.
        up = _pop(phase / 0.25) * _smoothstep((1.0 - phase) / 0.2)
        pump = 4.0 * max(0.0, math.sin(2.0 * math.pi * 2.0 * phase)) * env
        wrist = (380.0, 452.0 + 200.0 * (1.0 - up) - pump)
        _draw_arm(pen, wrist, -10.0)
        _draw_thumbs_up(pen, wrist)

    return attrs.evolve(look, smile=look.smile + 0.6 * env, brow=look.brow + 0.5 * env, tilt=look.tilt + 3.0 * env,
                        wink=wink, props=props)


_CHOREOGRAPHY: dict[str, Callable[[_Look, float], _Look]] = {
    "mini_wave_hello": _wave,
    "laugh_react": _laugh,
    "nod_agree": _nod,
    "heart_gesture": _heart,
    "thumbs_up": _thumbs,
}


# ==================================================================================================
# Per-frame painting.
# ==================================================================================================

_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 48, endpoint=False)),
                    np.sin(np.linspace(0, 2 * np.pi, 48, endpoint=False))], axis=1)
_T = np.linspace(-1.0, 1.0, 21)  # parameter along eye and mouth curves, corner to corner
_ARCH = np.sqrt(1.0 - _T**2)  # the ellipse's height profile along _T


class _Pen:
    """Draws reference-unit shapes on a frame through a 2x3 affine (reference -> pixels)."""

    __slots__ = ("img", "m", "scale")

    def __init__(self, img: np.ndarray, m: np.ndarray, scale: float) -> None:
        self.img, self.m, self.scale = img, m, scale

    def _px(self, pts: np.ndarray) -> np.ndarray:
        return np.rint((pts @ self.m[:, :2].T + self.m[:, 2]) * _ONE).astype(np.int32)

    def fill(self, pts: np.ndarray, color: tuple[int, int, int]) -> None:
        cv2.fillPoly(self.img, [self._px(pts)], color, cv2.LINE_AA, SHIFT)

    def stroke(self, pts: np.ndarray, color: tuple[int, int, int], width: float, closed: bool = False) -> None:
        px = max(1, round(width * self.scale))
        cv2.polylines(self.img, [self._px(pts)], closed, color, px, cv2.LINE_AA, SHIFT)

    def fill_outlined(self, pts: np.ndarray, color: tuple[int, int, int], line: tuple[int, int, int], width: float) -> None:
        self.stroke(pts, line, 2.0 * width, closed=True)
        self.fill(pts, color)


def _ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return _CIRCLE * (rx, ry) + (cx, cy)


def _rotate(pts: np.ndarray, degrees: float, about: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    p = pts - about
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], axis=1) + about


def _clamp_to_eye(pts: np.ndarray) -> np.ndarray:
    """Clip a convex shape to the eye opening by clamping each point's y to the opening at its x.

    Exact for shapes that are convex and lie within the opening's width (iris, pupil, glints), and much
    cheaper than drawing into a masked scratch image.
    """
    x = np.clip(pts[:, 0], -EYE_RX, EYE_RX)
    h = EYE_RY * np.sqrt(1.0 - (x / EYE_RX) ** 2)
    return np.stack([x, np.clip(pts[:, 1], -h, h)], axis=1)


SQUINT_ARCS = 0.8  # squint above this draws the eye as a ^ arc (laughing); below, the lids narrow


def _draw_eye(pen: _Pen, rig: _Rig, look: _Look, side: float) -> None:
    centre = np.array([HEAD[0] + side * EYE_DX, EYE_Y + 5.0 * look.pitch])
    x = _T * EYE_RX
    if look.squint >= SQUINT_ARCS:
        arc = np.stack([x * 0.95, 4.0 - 9.0 * _ARCH], axis=1) + centre
        pen.stroke(arc, LASH, 3.6)
        return
    top, bottom = -EYE_RY * _ARCH, EYE_RY * _ARCH
    closure = look.blink if side < 0 else max(look.blink, look.wink)
    upper = RESTING_LID + (1.0 - RESTING_LID) * max(closure, 0.15 * look.squint)
    lower = 0.5 * look.squint * (1.0 - closure)
    lid = top + upper * (bottom - top)
    low = bottom - lower * (bottom - top)
    if upper < 0.97:
        pen.fill(np.concatenate([np.stack([x, top], 1), np.stack([x[::-1], bottom[::-1]], 1)]) + centre, SCLERA)
        g = 0.5 + look.gaze
        pen.fill(_clamp_to_eye(_ellipse(0.0, g, IRIS_R, IRIS_R)) + centre, IRIS_DARK)
        pen.fill(_clamp_to_eye(_ellipse(0.0, g, IRIS_R - 1.6, IRIS_R - 1.6)) + centre, IRIS)
        pen.fill(_clamp_to_eye(_ellipse(0.0, g + 0.3, PUPIL_R, PUPIL_R)) + centre, PUPIL)
        pen.fill(_clamp_to_eye(_ellipse(-3.2, g - 3.5, 2.6, 2.4)) + centre, (255, 255, 255))
        pen.fill(_clamp_to_eye(_ellipse(3.4, g + 3.1, 1.3, 1.2)) + centre, (235, 240, 245))
    # Upper lid: from just above the opening down to the lid line; its edge carries the lashes.
    pen.fill(np.concatenate([np.stack([x * 1.08, top * 1.1 - 1.0], 1), np.stack([x[::-1] * 1.08, lid[::-1]], 1)]) + centre,
             rig.lid_color)
    if lower > 0.01:
        pen.fill(np.concatenate([np.stack([x * 1.08, low], 1), np.stack([x[::-1] * 1.08, bottom[::-1] * 1.1 + 1.0], 1)])
                 + centre, rig.lid_color)
    lash = np.stack([x * 1.04, lid], 1)
    flick = np.array([[side * (EYE_RX + 3.0), lid[-1 if side > 0 else 0] - 2.5]])  # outer-corner wing
    lash = np.concatenate([lash, flick]) if side > 0 else np.concatenate([flick, lash])
    pen.stroke(lash + centre, LASH, 2.6)
    crease = np.stack([x[3:-3] * 1.05, top[3:-3] * 1.25 - 2.5], 1) + centre
    pen.stroke(crease, rig.crease_color, 1.0)


def _draw_brow(pen: _Pen, look: _Look, side: float) -> None:
    # A tapered arch: thick at the inner end, thin at the outer. Raising lifts it; a negative brow drops
    # and pulls the inner end down (a frown).
    x = _T * 17.0
    inner = np.clip(-side * _T, 0.0, 1.0)  # 1 at the end nearest the nose
    lift = 6.0 * look.brow + (2.5 * look.brow * inner if look.brow < 0 else 1.5 * look.brow * inner)
    mid = BROW_Y - 4.0 * _ARCH - lift + 4.0 * look.pitch
    half = 1.2 + 2.0 * (0.5 + 0.5 * -side * _T)
    pts = np.concatenate([np.stack([x, mid - half], 1), np.stack([x[::-1], (mid + half)[::-1]], 1)])
    pen.fill(pts + (HEAD[0] + side * EYE_DX, 0.0), BROW_COLOR)


def _draw_mouth(pen: _Pen, look: _Look) -> None:
    smile = look.smile
    m = look.mouth
    half = MOUTH_HALF_WIDTH * (1.0 + 0.25 * smile - 0.15 * m)
    x = _T * half
    corner = 2.0 + 7.0 * smile  # corners sit this far above the centre line: the smile curve
    base = -corner * _T**2
    cx, cy = MOUTH[0], MOUTH[1] + 2.0 * look.pitch
    if m < 0.04:
        pen.stroke(np.stack([x, base], 1) + (cx, cy), LIP_LINE, 2.4)
        pen.stroke(np.stack([x[7:-7] * 0.6, 6.5 + 1.0 * _ARCH[7:-7]], 1) + (cx, cy), LIP_HINT, 1.6)  # lower-lip shadow
        return
    # Open: the upper lip lifts a little, the lower drops a lot; a big smile flattens the upper lip so
    # a laugh makes a D shape. Teeth and tongue are clamped between the lips, so they never spill out.
    shape = _ARCH**0.8
    upper = base - (2.0 + 3.0 * m) * (1.0 - 0.6 * smile) * shape * min(1.0, m * 6.0)
    lower = base + (MOUTH_MAX_OPEN * m + 5.0 * smile * m) * shape
    inside = np.concatenate([np.stack([x, upper], 1), np.stack([x[::-1], lower[::-1]], 1)]) + (cx, cy)
    pen.fill(inside, MOUTH_INSIDE)
    gap = lower - upper
    teeth = np.minimum(upper + np.minimum(6.0, 0.4 * gap) * _ARCH**0.5, lower)
    pen.fill(np.concatenate([np.stack([x * 0.92, upper], 1), np.stack([x[::-1] * 0.92, teeth[::-1]], 1)]) + (cx, cy), TEETH)
    if gap.max() > 7.0:
        tongue = _ellipse(0.0, lower.max() - 0.15 * gap.max(), half * 0.55, 0.35 * gap.max())
        tx = tongue[:, 0]
        top = np.interp(tx, x, upper) + 0.5 * np.interp(tx, x, gap)
        bot = np.interp(tx, x, lower)
        tongue[:, 1] = np.clip(tongue[:, 1], top, bot)
        pen.fill(tongue + (cx, cy), TONGUE)
    pen.stroke(inside, LIP, 2.6, closed=True)
    pen.stroke(np.stack([x[7:-7] * 0.7, lower[7:-7] + 4.5], 1) + (cx, cy), LIP, 1.4)  # lower-lip fullness


# -- hands and hearts, in body coordinates ------------------------------------------------------------

_OUTLINE = 1.6  # outline half-width around hands and hearts, reference units
HAND_SCALE = 1.4  # cartoon hands are drawn oversized: at true scale a hand beside the head reads as a smudge


def _capsule(pen: _Pen, a: tuple[float, float], b: tuple[float, float], width: float, color, line) -> None:
    pts = np.array([a, b], dtype=np.float64)
    pen.stroke(pts, line, width + 2.0 * _OUTLINE)
    pen.stroke(pts, color, width)


def _draw_arm(pen: _Pen, wrist: tuple[float, float], lean: float) -> None:
    """A forearm and sleeve from below the frame up to ``wrist``, leaning ``lean`` units sideways at the bottom."""
    elbow = (wrist[0] - lean, wrist[1] + 200.0)
    cuff = (wrist[0] - lean * 0.3, wrist[1] + 60.0)
    _capsule(pen, wrist, cuff, 17.0 * HAND_SCALE, HAND, HAND_LINE)
    _capsule(pen, cuff, elbow, 28.0 * HAND_SCALE, SHIRT, SHIRT_DARK)


def _draw_open_hand(pen: _Pen, wrist: tuple[float, float], angle: float) -> None:
    """An open palm facing the viewer, fingers up, thumb toward the face, rotated ``angle`` about the wrist."""
    fingers = [((-11.0, -34.0), (-16.0, -58.0)), ((-3.5, -36.0), (-5.0, -64.0)),
               ((4.0, -36.0), (6.0, -62.0)), ((11.0, -34.0), (16.0, -54.0))]
    thumb = ((13.0, -14.0), (30.0, -33.0))
    palm = _ellipse(0.0, -22.0, 17.0, 19.0)

    def place(pts) -> np.ndarray:
        return _rotate(np.asarray(pts, dtype=np.float64) * HAND_SCALE, angle) + wrist

    parts = [(place(f), 9.0 * HAND_SCALE) for f in fingers] + [(place(thumb), 10.0 * HAND_SCALE)]
    for pts, width in parts:
        pen.stroke(pts, HAND_LINE, width + 2.0 * _OUTLINE)
    pen.fill_outlined(place(palm), HAND, HAND_LINE, _OUTLINE)
    for pts, width in parts:
        pen.stroke(pts, HAND, width)
    pen.stroke(place([(-8.0, -18.0), (-2.0, -10.0), (6.0, -8.0)]), HAND_LINE, 1.0)  # palm crease


def _draw_thumbs_up(pen: _Pen, wrist: tuple[float, float]) -> None:
    """A fist seen from the side with the thumb pointing up, thumb on the body's side."""
    w = np.asarray(wrist)
    k = HAND_SCALE
    fist = k * np.array([(-18.0, -8.0), (-20.0, -30.0), (-14.0, -42.0), (8.0, -44.0), (20.0, -36.0),
                     (22.0, -14.0), (14.0, -2.0), (-12.0, 0.0)])
    thumb = k * np.array([(-11.0, -40.0), (-13.0, -66.0)])
    pen.stroke(thumb + w, HAND_LINE, 12.0 * k + 2.0 * _OUTLINE)
    pen.fill_outlined(fist + w, HAND, HAND_LINE, _OUTLINE)
    pen.stroke(thumb + w, HAND, 12.0 * k)
    for y in (-34.0, -24.0, -14.0):  # curled fingers
        pen.stroke(k * np.array([(4.0, y), (21.0, y + 1.5)]) + w, HAND_LINE, 1.2)
    pen.stroke(k * np.array([(-15.0, -70.0), (-11.0, -68.0)]) + w, (190, 214, 246), 2.0)  # thumbnail glint


_HEART_T = np.linspace(0.0, 2.0 * np.pi, 56, endpoint=False)
_HEART = np.stack([16.0 * np.sin(_HEART_T) ** 3,
                   -(13.0 * np.cos(_HEART_T) - 5.0 * np.cos(2 * _HEART_T) - 2.0 * np.cos(3 * _HEART_T) - np.cos(4 * _HEART_T))],
                  axis=1) / 16.0  # the classic heart curve, unit half-width


def _draw_heart(pen: _Pen, centre: tuple[float, float], size: float) -> None:
    if size < 1.0:
        return
    pen.fill_outlined(_HEART * size + centre, HEART, HEART_LINE, _OUTLINE)
    pen.fill(_ellipse(-0.45 * size, -0.45 * size, 0.16 * size, 0.1 * size) + centre, (200, 190, 255))


# -- compositing the head sprite ---------------------------------------------------------------------


def _blit(frame: np.ndarray, bgr: np.ndarray, alpha: np.ndarray, m: np.ndarray) -> None:
    """Alpha-composite a sprite onto ``frame`` through the 2x3 affine ``m`` (sprite -> frame).

    Only the destination rectangle the sprite can reach is warped and blended. Colour and alpha are kept
    as separate arrays (uint8 BGR, float32 alpha) because cv2.blendLinear wants exactly that: splitting a
    warped BGRA image per frame cost more than the second warp.
    """
    h, w = alpha.shape
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=np.float64) @ m[:, :2].T + m[:, 2]
    x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 1
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
    if x1 <= x0 or y1 <= y0:
        return
    local = m.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    # The colour's border is irrelevant (alpha is 0 there); replicating it avoids a dark fringe.
    color = cv2.warpAffine(bgr, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    a = cv2.warpAffine(alpha, local, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    roi = frame[y0:y1, x0:x1]
    roi[:] = cv2.blendLinear(roi, color, 1.0 - a, a)


# ==================================================================================================
# The per-size rig: pre-rendered layers and transforms.
# ==================================================================================================


@attrs.frozen(eq=False)
class _Rig:
    """Everything about a frame size that does not change between frames."""

    scale: float
    base: np.ndarray  # 2x3 reference -> frame pixels
    background: np.ndarray  # BGR, H x W x 3: gradient, torso, neck
    sprite_bgr: np.ndarray  # head sprite colour, bled past the edges for clean bilinear warping
    sprite_alpha: np.ndarray  # head sprite coverage, float32 0..1
    sprite_to_ref: np.ndarray  # 3x3 sprite pixel -> reference units
    lid_color: tuple[int, int, int]
    crease_color: tuple[int, int, int]

    def head_matrix(self, look: _Look) -> np.ndarray:
        """2x3 reference -> frame pixels for things on the head: tilt and nod about the neck, then sway."""
        px, py = NECK_PIVOT
        a = math.radians(look.tilt)
        c, s = math.cos(a), math.sin(a)
        squash = 1.0 - 0.05 * look.pitch  # chin-down foreshortens the face
        # translate(-pivot) -> scale y -> rotate -> translate(pivot + sway)
        lin = np.array([[c, -s * squash], [s, c * squash]])
        off = np.array([px + look.dx, py + look.dy]) - lin @ (px, py)
        head = np.vstack([np.column_stack([lin, off]), (0.0, 0.0, 1.0)])
        return self.base @ head


@functools.lru_cache(maxsize=MAX_CACHED_SIZES)
def _rig(width: int, height: int) -> _Rig:
    """Paint the static layers for one frame size (~70 ms at 512x512, once; cached per size)."""
    if width < 16 or height < 16:
        raise ValueError(f"frame size {width}x{height} is too small; need at least 16x16")
    scale = min(width, height) / REF
    base = np.array([[scale, 0.0, width / 2.0 - 256.0 * scale], [0.0, scale, height - REF * scale]])
    background = _paint_background(width, height, base, scale)
    sprite_bgr, sprite_alpha, sprite_to_ref = _paint_head(scale)
    # Lid colour: the sprite's own skin just above the eye, a touch darker, so a blink looks like a lid.
    probe = np.linalg.inv(sprite_to_ref) @ (HEAD[0] - EYE_DX, EYE_Y - EYE_RY - 3.0, 1.0)
    px, py = int(probe[0]), int(probe[1])
    patch = sprite_bgr[max(py - 1, 0):py + 2, max(px - 1, 0):px + 2].reshape(-1, 3).mean(axis=0)
    lid = tuple(int(c * LID_DARKEN) for c in patch)
    crease = tuple(int(c * 0.8) for c in patch)
    for layer in (background, sprite_bgr, sprite_alpha):
        layer.flags.writeable = False  # shared by every frame of this size
    return _Rig(scale=scale, base=base, background=background, sprite_bgr=sprite_bgr, sprite_alpha=sprite_alpha,
                sprite_to_ref=sprite_to_ref, lid_color=lid, crease_color=crease)


class _Canvas:
    """Float premultiplied-alpha canvas for the one-off painters: shapes composite with soft masks."""

    def __init__(self, h: int, w: int, m: np.ndarray, scale: float, opaque: np.ndarray | None = None) -> None:
        self.h, self.w, self.m, self.scale = h, w, m, scale
        # order="C": ``opaque`` is often a broadcast view, and astype's default keeps its odd strides. A
        # background whose rows are not contiguous made every frame's copy of it a strided copy (1.1 ms of
        # a 2.7 ms draw at 512x512; contiguous: 0.02 ms) and every later cv2 call on the frame convert it.
        self.rgb = np.zeros((h, w, 3), np.float32) if opaque is None else opaque.astype(np.float32, order="C")
        self.alpha = np.zeros((h, w), np.float32) if opaque is None else np.ones((h, w), np.float32)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        inv = np.linalg.inv(np.vstack([m, (0, 0, 1)]))
        self.x = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]  # reference coordinates of every pixel
        self.y = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]

    def mask(self, *polys: np.ndarray, blur: float = 0.0) -> np.ndarray:
        img = np.zeros((self.h, self.w), np.uint8)
        px = [np.rint((p @ self.m[:, :2].T + self.m[:, 2]) * _ONE).astype(np.int32) for p in polys]
        cv2.fillPoly(img, px, 255, cv2.LINE_AA, SHIFT)
        out = img.astype(np.float32) / 255.0
        if blur > 0:
            sigma = max(0.5, blur * self.scale)
            out = cv2.GaussianBlur(out, (0, 0), sigma)
        return out

    def over(self, mask: np.ndarray, color, opacity: float = 1.0) -> None:
        a = (mask * opacity)[:, :, None]
        c = np.asarray(color, np.float32)
        self.rgb = self.rgb * (1.0 - a) + c * a
        self.alpha = self.alpha * (1.0 - a[:, :, 0]) + a[:, :, 0]

    def shade(self, mask: np.ndarray, factor: np.ndarray | float) -> None:
        """Multiply colour inside ``mask`` by ``factor`` (light < 1 darkens), keeping alpha."""
        f = 1.0 + (np.asarray(factor, np.float32) - 1.0) * mask
        self.rgb *= f[:, :, None] if np.ndim(f) == 2 else f


def _spline(points, n: int = 12, closed: bool = False) -> np.ndarray:
    """Catmull-Rom through ``points``: smooth hair and body outlines from a handful of knots."""
    p = np.asarray(points, np.float64)
    if closed:
        p = np.concatenate([p[-1:], p, p[:2]])
    else:
        p = np.concatenate([p[:1], p, p[-1:]])
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3))
    if not closed:
        out.append(p[-2][None, :])
    return np.concatenate(out)


def _face_outline() -> np.ndarray:
    """The face oval: round cheeks narrowing to a soft chin."""
    t = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    below = np.clip(s, 0.0, 1.0)
    x = HEAD_RX * c * (1.0 - 0.22 * below**2.2)
    y = np.where(s > 0, HEAD_RY_BOTTOM, HEAD_RY_TOP) * s
    return np.stack([x + HEAD[0], y + HEAD[1]], axis=1)


def _paint_background(width: int, height: int, base: np.ndarray, scale: float) -> np.ndarray:
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    grad = np.asarray(BG_TOP, np.float32) * (1.0 - ys) + np.asarray(BG_BOTTOM, np.float32) * ys
    img = np.broadcast_to(grad, (height, width, 3))
    cv = _Canvas(height, width, base, scale, opaque=img)
    # A soft light behind the head separates it from the background, like a portrait backdrop.
    glow = np.exp(-(((cv.x - 256.0) / 190.0) ** 2 + ((cv.y - 200.0) / 170.0) ** 2))
    cv.rgb += (glow * 22.0)[:, :, None]
    vignette = np.clip(np.hypot((cv.x - 256.0) / 420.0, (cv.y - 240.0) / 400.0), 0.0, 1.0)
    cv.shade(np.ones_like(vignette), 1.0 - 0.1 * vignette**2)

    # Soft shadow the figure casts on the backdrop.
    body = _spline([(26, 560), (40, 456), (84, 406), (168, 378), (218, 364), (294, 364), (344, 378),
                    (428, 406), (472, 456), (486, 560)], 10)
    cv.over(cv.mask(body + (6, 4), _ellipse(262, 222, 112, 130), blur=14.0), (120, 90, 110), 0.22)

    neck = np.array([(222, 270), (290, 270), (294, 350), (308, 380), (204, 380), (218, 350)], np.float64)
    cv.over(cv.mask(neck), SKIN)
    # The chin shadows the top of the neck; its sides curve away from the light.
    shadow = 0.75 + 0.2 * np.clip((cv.y - 320.0) / 40.0, 0.0, 1.0) - 0.12 * np.clip(np.abs(cv.x - 256) / 30.0, 0, 1) ** 2
    cv.shade(cv.mask(neck), shadow)

    cv.over(cv.mask(body), SHIRT)
    light = 1.04 - 0.16 * np.clip(np.abs(cv.x - 256.0) / 200.0, 0, 1) ** 2 - 0.05 * np.clip((cv.y - 400) / 110, 0, 1)
    cv.shade(cv.mask(body), light)
    # Crew-neck collar: a darker band hugging the neck, with the neck's skin showing inside it.
    collar = _spline([(204, 368), (228, 388), (256, 394), (284, 388), (308, 368)], 8)
    cv.over(cv.mask(np.concatenate([collar, collar[::-1] + (0, 12)])), SHIRT_DARK, 0.9)
    inner = _spline([(212, 366), (232, 383), (256, 388), (280, 383), (300, 366), (256, 358)], 8, closed=True)
    cv.over(cv.mask(inner), SKIN_SHADOW)
    # Folds: two faint creases from the armpits make the torso read as cloth.
    for pts in ([(118, 470), (150, 500), (160, 530)], [(394, 470), (362, 500), (352, 530)]):
        cv.over(cv.mask(np.concatenate([_spline(pts, 8), _spline(pts, 8)[::-1] + (4, 0)]), blur=2.0), SHIRT_DARK, 0.35)
    return np.clip(cv.rgb, 0, 255).astype(np.uint8)


def _paint_head(scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the rigid part of the head into a sprite: (BGR uint8, alpha float32, sprite -> reference 3x3)."""
    x0, y0, x1, y1 = SPRITE_BOX
    w, h = int(math.ceil((x1 - x0) * scale)), int(math.ceil((y1 - y0) * scale))
    m = np.array([[scale, 0.0, -x0 * scale], [0.0, scale, -y0 * scale]])
    cv = _Canvas(h, w, m, scale)
    hx, hy = HEAD

    back_hair = _spline([(hx - 98, 300), (hx - 106, 240), (hx - 104, 170), (hx - 76, 112), (hx, 90),
                         (hx + 78, 110), (hx + 106, 168), (hx + 108, 240), (hx + 100, 300), (hx + 70, 306),
                         (hx, 280), (hx - 70, 306)], 10, closed=True)
    cv.over(cv.mask(back_hair), HAIR)
    cv.shade(cv.mask(back_hair), 0.8 + 0.2 * np.clip((300.0 - cv.y) / 120.0, 0, 1))

    face = _face_outline()
    ears = [_ellipse(hx - side * (HEAD_RX - 2.0), 234.0, 12.0, 20.0) for side in (-1, 1)]
    for ear in ears:
        cv.over(cv.mask(ear), SKIN)
        cv.over(cv.mask(_ellipse(ear[:, 0].mean(), 236.0, 6.0, 11.0), blur=1.5), SKIN_SHADOW, 0.6)
    cv.over(cv.mask(face), SKIN)
    # Shading: light from the upper left, falling off toward the rim and under the jaw.
    r = np.hypot((cv.x - hx + 12.0) / HEAD_RX, (cv.y - hy + 14.0) / HEAD_RY_BOTTOM)
    light = 1.05 - 0.2 * np.clip(r, 0, 1.3) ** 3 - 0.04 * np.clip((cv.x - hx) / HEAD_RX, -1, 1)
    cv.shade(cv.mask(face), light)
    cheeks = [_ellipse(hx + side * 52.0, 262.0, 17.0, 10.0) for side in (-1, 1)]
    cv.over(cv.mask(*cheeks, blur=6.0), BLUSH, 0.45)
    # Nose: a soft shadow down its right side and under the tip, a highlight on the bridge, and a
    # small curved line for the tip -- enough for the eye to fill in the rest.
    cv.over(cv.mask(_ellipse(hx + 6.0, 252.0, 5.0, 14.0), blur=4.0), SKIN_SHADOW, 0.55)
    cv.over(cv.mask(_ellipse(hx + 1.0, 266.0, 10.0, 3.5), blur=3.0), SKIN_SHADOW, 0.5)
    cv.over(cv.mask(_ellipse(hx - 3.0, 248.0, 2.5, 9.0), blur=2.5), (200, 225, 252), 0.5)
    tip = _spline([(hx - 7, 262), (hx - 3, 266), (hx + 3, 266), (hx + 7, 262)], 6)
    cv.over(cv.mask(np.concatenate([tip, tip[::-1] + (0, 1.6)]), blur=0.6), SKIN_SHADOW, 0.8)

    bangs = _spline([(hx - 92, 250), (hx - 96, 196), (hx - 84, 140), (hx - 40, 104), (hx + 20, 98),
                     (hx + 72, 118), (hx + 98, 170), (hx + 96, 250), (hx + 86, 212), (hx + 76, 178),
                     (hx + 50, 164), (hx + 10, 162), (hx - 30, 154), (hx - 58, 160), (hx - 78, 190),
                     (hx - 86, 222)], 10, closed=True)
    # The hair's shadow on the forehead, cast down and right.
    cv.shade(cv.mask(face) * cv.mask(bangs + (3.0, 6.0), blur=5.0), 0.78)
    cv.over(cv.mask(bangs), HAIR)
    cv.shade(cv.mask(bangs), 0.85 + 0.25 * np.clip((cv.y - 100.0) / 80.0, 0, 1))
    sheen = _spline([(hx - 70, 146), (hx - 40, 118), (hx + 4, 108), (hx + 40, 114)], 8)
    cv.over(cv.mask(np.concatenate([sheen, sheen[::-1] + (2, 7)]), blur=3.0), HAIR_LIGHT, 0.7)
    strands = [[(hx - 30, 112), (hx - 48, 134), (hx - 60, 156)], [(hx + 30, 108), (hx + 46, 130), (hx + 60, 162)]]
    for pts in strands:
        s = _spline(pts, 8)
        cv.over(cv.mask(np.concatenate([s, s[::-1] + (1.5, 0)]), blur=0.8), (28, 36, 64), 0.6)

    return (*_finish_sprite(cv), np.linalg.inv(np.vstack([m, (0, 0, 1)])))


def _finish_sprite(cv: _Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Un-premultiply the canvas to (BGR uint8, alpha float32), bleeding edge colours into the margin.

    Bilinear warping mixes a transparent pixel's colour into its opaque neighbours; if that colour were
    black the head would get a dark fringe. Filling the margin with nearby edge colours avoids it.
    """
    a = cv.alpha
    straight = cv.rgb / np.maximum(a, 1e-4)[:, :, None]
    bled = cv2.GaussianBlur(cv.rgb, (0, 0), 2.0) / np.maximum(cv2.GaussianBlur(a, (0, 0), 2.0), 1e-4)[:, :, None]
    rgb = np.where((a > 0.02)[:, :, None], straight, bled)
    return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8), np.clip(a, 0.0, 1.0).astype(np.float32)
