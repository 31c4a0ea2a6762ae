import pytest
import torch
import torch.nn.functional as F

from pipeline.crops import crop_faces, square_regions


def _coordinate_frames(count: int = 2, height: int = 60, width: int = 80) -> torch.Tensor:
    """Frames whose pixels encode where they are: R = x, G = y, B = frame number * 50 + 1."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    frames = torch.empty((count, height, width, 3), dtype=torch.uint8)
    for n in range(count):
        frames[n, ..., 0] = xs
        frames[n, ..., 1] = ys
        frames[n, ..., 2] = n * 50 + 1
    return frames


def test_square_regions_center_and_side() -> None:
    boxes = torch.tensor([[10.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 40.0]])
    regions = square_regions(boxes, margin=0.5)
    # longer side 20 * 1.5 = 30, centred on (20, 25); longer side 40 * 1.5 = 60 centred on (5, 20)
    assert regions.tolist() == [[5, 10, 35, 40], [-25, -10, 35, 50]]


def test_crop_without_resize_copies_exact_pixels() -> None:
    frames = _coordinate_frames()
    boxes = torch.tensor([[20.0, 10.0, 36.0, 26.0]])  # 16x16 square, margin 0 keeps it
    crops = crop_faces(frames, torch.tensor([1]), boxes, size=16, margin=0.0)
    assert crops.shape == (1, 3, 16, 16) and crops.dtype == torch.float32
    expected = frames[1, 10:26, 20:36].permute(2, 0, 1).float() / 255
    assert torch.equal(crops[0], expected)


def test_crop_at_border_is_zero_padded_not_shifted() -> None:
    frames = _coordinate_frames()
    boxes = torch.tensor([[-4.0, -6.0, 6.0, 4.0]])  # 10x10 square hanging over the top-left corner
    crops = crop_faces(frames, torch.tensor([0]), boxes, size=10, margin=0.0)[0]
    assert torch.all(crops[:, :6, :] == 0) and torch.all(crops[:, :, :4] == 0)
    inside = crops[:, 6:, 4:]
    assert torch.equal(inside, frames[0, 0:4, 0:6].permute(2, 0, 1).float() / 255)


def test_crop_outside_frame_is_black() -> None:
    frames = _coordinate_frames()
    crops = crop_faces(frames, torch.tensor([0]), torch.tensor([[200.0, 200.0, 220.0, 220.0]]), size=8)
    assert torch.all(crops == 0)


def test_crop_resize_matches_interpolating_the_region() -> None:
    frames = _coordinate_frames()
    boxes = torch.tensor([[30.0, 20.0, 46.0, 36.0]])  # margin 0.5 -> 24x24 square at (26, 16)
    crops = crop_faces(frames, torch.tensor([0]), boxes, size=12, margin=0.5)
    region = frames[0, 16:40, 26:50].permute(2, 0, 1).float()[None] / 255
    expected = F.interpolate(region, size=(12, 12), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(crops[0], expected)
    # The centre of the crop is the centre of the box (R = x, G = y).
    centre = crops[0, :, 5:7, 5:7].mean(dim=(1, 2)) * 255
    torch.testing.assert_close(centre[:2], torch.tensor([37.5, 27.5]), atol=0.01, rtol=0)


def test_crops_take_the_right_frame_and_order() -> None:
    frames = _coordinate_frames(count=3)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]] * 3)
    crops = crop_faces(frames, torch.tensor([2, 0, 1]), boxes, size=4, margin=0.0)
    assert [round(float(c[2, 0, 0]) * 255) for c in crops] == [101, 1, 51]


def test_no_boxes_gives_empty_batch() -> None:
    crops = crop_faces(_coordinate_frames(), torch.zeros(0, dtype=torch.long), torch.zeros(0, 4), size=32)
    assert crops.shape == (0, 3, 32, 32)


def test_bad_arguments_are_rejected() -> None:
    frames = _coordinate_frames()
    with pytest.raises(ValueError, match="frame_indices"):
        crop_faces(frames, torch.tensor([5]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), size=4)
    with pytest.raises(ValueError, match="uint8"):
        crop_faces(frames.float(), torch.tensor([0]), torch.tensor([[0.0, 0.0, 4.0, 4.0]]), size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_crops_match_cpu() -> None:
    frames = _coordinate_frames()
    boxes = torch.tensor([[30.0, 20.0, 46.0, 36.0], [-5.0, -5.0, 20.0, 30.0]])
    indices = torch.tensor([0, 1])
    on_gpu = crop_faces(frames.cuda(), indices.cuda(), boxes.cuda(), size=24)
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), crop_faces(frames, indices, boxes, size=24), atol=1e-5, rtol=0)
