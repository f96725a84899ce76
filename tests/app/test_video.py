"""Video frames: the global shift between frames and the start carried over."""
import torch

from nst_fast.app import video


def _window(base, top, left, height=40, width=60):
    return base[..., top:top + height, left:left + width]


def test_global_shift_finds_a_pan():
    base = torch.rand(1, 3, 60, 80, generator=torch.Generator().manual_seed(0))
    before = _window(base, 5, 10)
    after = _window(base, 8, 6)  # after[y, x] = before[y + 3, x - 4]
    assert video.global_shift(before, after) == (-3, 4)
    assert video.global_shift(before, before) == (0, 0)


def test_a_pan_carries_the_painting_along_and_fills_new_ground_with_the_frame():
    gen = torch.Generator().manual_seed(1)
    base = torch.rand(1, 3, 60, 80, generator=gen) * 0.5 + 0.25
    before, after = _window(base, 5, 10), _window(base, 5, 14)  # the camera pans right by 4 px
    texture = (torch.rand(1, 3, 40, 60, generator=gen) - 0.5) * 0.2
    painted = before + texture
    start = video.carry_over(before, painted, after)
    # after[x] = before[x + 4]: the painting of that ground moved 4 px left with it.
    torch.testing.assert_close(start[..., :, :-4], after[..., :, :-4] + texture[..., :, 4:])
    torch.testing.assert_close(start[..., :, -4:], after[..., :, -4:])  # revealed on the right


def test_a_moving_object_leaves_no_ghost():
    gen = torch.Generator().manual_seed(2)
    background = torch.rand(1, 3, 40, 60, generator=gen) * 0.5
    before, after = background.clone(), background.clone()
    before[..., 10:20, 5:15] = 0.9  # a bright square moves right on a still background
    after[..., 10:20, 25:35] = 0.9
    texture = (torch.rand(1, 3, 40, 60, generator=gen) - 0.5) * 0.1
    start = video.carry_over(before, before + texture, after)
    assert video.global_shift(before, after) == (0, 0)
    # The style stays where it was painted; the square is where the new frame has it.
    torch.testing.assert_close(start, (after + texture).clamp(0, 1))
    assert start[..., 10:20, 5:15].mean() < 0.5 < start[..., 10:20, 25:35].mean()
