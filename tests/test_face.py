"""The built-in avatar: face drawing (avatard.renderers.face) and frame-by-frame animation (avatard.renderers.animator)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from avatard.constants import GESTURES
from avatard.errors import UnknownGesture
from avatard.renderers import face
from avatard.renderers.animator import Animator
from avatard.renderers.face import Pose

FPS = 25
SAMPLES = 16000 // FPS
SILENCE = np.zeros(SAMPLES, np.int16)


def tone(freq: float = 440.0, amplitude: float = 0.5, n: int = SAMPLES) -> np.ndarray:
    t = np.arange(n) / 16000.0
    return np.rint(amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def render(pose: Pose, width: int = 512, height: int = 512) -> np.ndarray:
    return face.draw(pose, width, height).astype(np.int16)


def box(centre: tuple[float, float], half_w: float, half_h: float) -> tuple[slice, slice]:
    """Pixel rows/cols of a reference-unit box; at 512x512 reference units are pixels."""
    (x, y) = centre
    return slice(int(y - half_h), int(y + half_h)), slice(int(x - half_w), int(x + half_w))


def split_diff(a: np.ndarray, b: np.ndarray, region: tuple[slice, slice]) -> tuple[float, float]:
    """Mean absolute difference inside ``region`` and outside it."""
    diff = np.abs(a - b).sum(axis=2).astype(np.float64)
    inside = np.zeros(diff.shape, bool)
    inside[region] = True
    return diff[inside].mean() / 3, diff[~inside].mean() / 3


# The mouth opens downward from its corners, so its box sits a little below the closed mouth's line.
MOUTH_BOX = box((face.MOUTH[0], face.MOUTH[1] + 8), 30, 22)


@pytest.fixture(scope="module")
def idle() -> np.ndarray:
    return render(Pose())


# -- drawing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(512, 512), (320, 240), (240, 320)])
def test_draw_returns_bgr_image_of_requested_size(width: int, height: int) -> None:
    image = face.draw(Pose(), width, height)
    assert image.shape == (height, width, 3)
    assert image.dtype == np.uint8
    # Row-major, as cv2 and the encoders take it without a conversion (a planar background once made every
    # frame a strided copy).
    assert image.flags.c_contiguous
    assert image.std() > 10  # a picture, not a blank fill


def test_draw_returns_a_fresh_image_each_time() -> None:
    a = face.draw(Pose(), 128, 128)
    a[:] = 0  # a consumer scribbling on its frame must not corrupt the cached background
    assert face.draw(Pose(), 128, 128).any()


def test_open_mouth_changes_the_mouth_region_and_nothing_else(idle: np.ndarray) -> None:
    inside, outside = split_diff(idle, render(Pose(mouth=1.0)), MOUTH_BOX)
    assert inside > 20  # dark inner mouth, teeth and tongue where skin was: ~30 grey levels on average
    assert outside < 0.05


def test_mouth_opening_grows_with_openness(idle: np.ndarray) -> None:
    diffs = [split_diff(idle, render(Pose(mouth=m)), MOUTH_BOX)[0] for m in (0.25, 0.5, 1.0)]
    assert diffs == sorted(diffs)


def test_blink_changes_the_eyes_and_nothing_else(idle: np.ndarray) -> None:
    for side in (-1, 1):
        eye = (face.HEAD[0] + side * face.EYE_DX, face.EYE_Y)
        inside, _ = split_diff(idle, render(Pose(blink=1.0)), box(eye, 22, 16))
        assert inside > 25
    both_eyes = box((face.HEAD[0], face.EYE_Y), face.EYE_DX + 22, 16)
    assert split_diff(idle, render(Pose(blink=1.0)), both_eyes)[1] < 0.05


def test_pose_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="mouth"):
        Pose(mouth=1.5)
    with pytest.raises(ValueError, match="brow"):
        Pose(brow=-2.0)
    with pytest.raises(ValueError, match="head_dx"):
        Pose(head_dx=math.nan)
    with pytest.raises(ValueError):
        Pose(gesture="moonwalk")


# A gesture must change the picture far more than the biggest feature change an idle face makes. The
# blink is that change (a few hundred pixels around the eyes, ~0.8 mean grey levels over 512x512), so a
# gesture at its peak has to differ from the same idle pose by at least 3 blinks' worth -- and by 2 grey
# levels in any case, about 2% of the frame changing completely. Measured values are 5-8.
GESTURE_VS_BLINK = 3.0
GESTURE_MIN_DIFF = 2.0


@pytest.mark.parametrize("name", sorted(face.GESTURE_NAMES))
def test_every_gesture_is_clearly_visible_at_its_midpoint(idle: np.ndarray, name: str) -> None:
    blink = np.abs(render(Pose(blink=1.0)) - idle).mean()
    diff = np.abs(render(Pose(gesture=name, gesture_phase=0.5)) - idle).mean()
    assert diff > max(GESTURE_VS_BLINK * blink, GESTURE_MIN_DIFF)


def test_gestures_differ_from_each_other() -> None:
    images = {name: render(Pose(gesture=name, gesture_phase=0.5)) for name in face.GESTURE_NAMES}
    names = sorted(images)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(images[a] - images[b]).mean() > GESTURE_MIN_DIFF, (a, b)


@pytest.mark.parametrize("name", sorted(face.GESTURE_NAMES))
def test_gestures_start_and_end_at_idle(idle: np.ndarray, name: str) -> None:
    # No pop at either end: the first and last frames look (almost) like no gesture at all.
    for phase in (0.0, 1.0):
        assert np.abs(render(Pose(gesture=name, gesture_phase=phase)) - idle).mean() < 0.1


def test_head_motion_moves_the_head(idle: np.ndarray) -> None:
    moved = render(Pose(head_dx=3.0, head_dy=-2.0, head_tilt=2.0))
    assert np.abs(moved - idle).mean() > 1.0
    # The bottom rows are torso only, which stays put.
    assert np.array_equal(moved[-40:], idle[-40:])


# -- animation ----------------------------------------------------------------------------------------


def test_gesture_table_matches_the_drawings() -> None:
    assert GESTURES.keys() == face.GESTURE_NAMES == face._CHOREOGRAPHY.keys()
    assert all(1.2 <= seconds <= 2.5 for seconds in GESTURES.values())


def test_silence_keeps_the_mouth_shut() -> None:
    animator = Animator(FPS)
    assert all(animator.next_pose(SILENCE).mouth == 0.0 for _ in range(3 * FPS))
    assert animator.next_pose(np.zeros(0, np.int16)).mouth == 0.0


def test_loud_tone_opens_the_mouth_in_one_frame_and_silence_closes_it_within_two() -> None:
    animator = Animator(FPS)
    assert animator.next_pose(tone()).mouth > 0.5
    for _ in range(5):
        animator.next_pose(tone())
    closing = [animator.next_pose(SILENCE).mouth for _ in range(2)]
    assert closing[0] < 1.0 and closing[1] == 0.0


def test_quiet_speech_opens_the_mouth_less_than_loud_speech() -> None:
    levels = []
    for amplitude in (0.01, 0.05, 0.5):
        animator = Animator(FPS)
        levels.append([animator.next_pose(tone(amplitude=amplitude)) for _ in range(4)][-1].mouth)
    assert 0.0 < levels[0] < levels[1] < levels[2]


def test_interrupt_shuts_the_mouth_on_the_next_frame() -> None:
    animator = Animator(FPS)
    for _ in range(3):
        animator.next_pose(tone())
    animator.interrupt()
    assert animator.next_pose(tone()).mouth == 0.0  # even if that frame still carried speech
    assert animator.next_pose(tone()).mouth > 0.5  # and the next turn speaks normally


@pytest.mark.parametrize("name", sorted(GESTURES))
def test_gesture_plays_for_its_duration_then_ends(name: str) -> None:
    animator = Animator(FPS)
    animator.start_gesture(name)
    frames = round(GESTURES[name] * FPS)
    poses = [animator.next_pose(SILENCE) for _ in range(frames + 2)]
    assert [p.gesture for p in poses] == [name] * frames + [None, None]
    phases = [p.gesture_phase for p in poses[:frames]]
    assert phases[0] == 0.0
    assert np.allclose(np.diff(phases), 1.0 / (GESTURES[name] * FPS))


def test_starting_a_gesture_again_restarts_it() -> None:
    animator = Animator(FPS)
    animator.start_gesture("nod_agree")
    for _ in range(10):
        animator.next_pose(SILENCE)
    animator.start_gesture("nod_agree")
    assert animator.next_pose(SILENCE).gesture_phase == 0.0


def test_unknown_gesture_names_the_known_ones() -> None:
    animator = Animator(FPS)
    with pytest.raises(UnknownGesture) as info:
        animator.start_gesture("moonwalk")
    assert isinstance(info.value, ValueError)
    assert str(info.value) == ("unknown gesture 'moonwalk'; known: heart_gesture, laugh_react, mini_wave_hello, "
                               "nod_agree, thumbs_up")
    assert animator.next_pose(SILENCE).gesture is None


def blinks(seed: int, seconds: float = 60.0) -> list[float]:
    animator = Animator(FPS, seed=seed)
    return [animator.next_pose(SILENCE).blink for _ in range(int(seconds * FPS))]


def test_blink_schedule_is_seeded() -> None:
    assert blinks(7) == blinks(7)
    assert blinks(7) != blinks(8)


def test_blinks_come_every_two_to_six_seconds_and_close_fully() -> None:
    series = np.array(blinks(3))
    starts = np.flatnonzero((series[1:] > 0) & (series[:-1] == 0)) + 1
    assert len(starts) >= 60 / 6 - 1
    gaps = np.diff(starts) / FPS
    assert gaps.min() >= 2.0 and gaps.max() <= 6.0 + 0.2  # interval is counted from the end of a blink
    lengths = [np.argmax(series[s:] == 0) for s in starts[:-1]]
    assert set(lengths) == {round(0.15 * FPS)}
    assert all(series[s:s + 4].max() == 1.0 for s in starts)


def test_blinks_do_not_depend_on_audio_or_gestures() -> None:
    animator = Animator(FPS, seed=7)
    animator.start_gesture("laugh_react")
    noisy = [animator.next_pose(tone() if i % 3 else SILENCE).blink for i in range(60 * FPS)]
    assert noisy == blinks(7)


def test_idle_sway_is_subtle_and_driven_by_the_frame_counter() -> None:
    a, b = Animator(FPS, seed=1), Animator(FPS, seed=2)
    poses_a = [a.next_pose(SILENCE) for _ in range(10 * FPS)]
    poses_b = [b.next_pose(SILENCE) for _ in range(10 * FPS)]
    assert [(p.head_dx, p.head_dy, p.head_tilt) for p in poses_a] == [(p.head_dx, p.head_dy, p.head_tilt) for p in poses_b]
    dx = np.array([p.head_dx for p in poses_a])
    dy = np.array([p.head_dy for p in poses_a])
    assert 0.5 < np.ptp(dx) < 8.0 and 0.5 < np.ptp(dy) < 6.0
    assert np.abs(np.diff(dx)).max() < 1.0  # smooth: under a pixel per frame
    assert all(abs(p.head_tilt) < 3.5 for p in poses_a)


def test_animator_poses_render() -> None:
    animator = Animator(FPS)
    animator.start_gesture("mini_wave_hello")
    for i in range(2 * FPS):
        face.draw(animator.next_pose(tone() if i % 2 else SILENCE), 160, 120)
