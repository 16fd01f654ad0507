import pytest
import torch

from ls_video.shift import temporal_shift, temporal_shift_


def clip(frames: int, channels: int) -> torch.Tensor:
    """x[f, c] = 10 * f + c: the value names its frame and channel."""
    f = torch.arange(frames, dtype=torch.float32)[:, None]
    c = torch.arange(channels, dtype=torch.float32)[None, :]
    return (10 * f + c)[:, :, None, None].expand(frames, channels, 2, 2).contiguous()


def test_exact_values_both_directions_and_boundaries():
    x = clip(3, 8)  # one clip of 3 frames, 8 channels: 1 channel each way with fraction 1/8
    y = temporal_shift(x, num_frames=3, fraction=1 / 8)[:, :, 0, 0]
    # channel 0 comes from the previous frame (zeros at frame 0)
    assert y[:, 0].tolist() == [0.0, 0.0, 10.0]
    # channel 1 comes from the next frame (zeros at the last frame)
    assert y[:, 1].tolist() == [11.0, 21.0, 0.0]
    # other channels unchanged
    assert torch.equal(y[:, 2:], x[:, 2:, 0, 0])


def test_clips_in_a_batch_never_mix():
    x = torch.cat([clip(3, 8), clip(3, 8) + 100])
    y = temporal_shift(x, num_frames=3, fraction=1 / 8)[:, :, 0, 0]
    assert y[3, 0] == 0 and y[2, 1] == 0  # no wrap from clip 1 into clip 2 or back
    assert y[4, 0] == 100 and y[3, 1] == 111


def test_single_frame_is_identity():
    x = torch.randn(4, 16, 3, 3)
    assert torch.equal(temporal_shift(x, num_frames=1), x)


@pytest.mark.parametrize("fraction,expected", [(0.25, 2), (0.125, 1), (0.0, 0)])
def test_fraction_sets_channel_count(fraction, expected):
    x = clip(2, 8)
    y = temporal_shift(x, 2, fraction)
    changed = (y != x).flatten(2).any(-1).any(0)
    assert int(changed.sum()) == 2 * expected


def test_gradient_is_opposite_shift():
    x = torch.randn(2 * 4, 8, 3, 3, requires_grad=True)
    g = torch.randn(8, 8, 3, 3)
    temporal_shift(x, 4, 0.25).backward(g)
    gv, xg = g.view(2, 4, 8, 3, 3), x.grad.view(2, 4, 8, 3, 3)
    # forward-shifted channels [0, 2): grad of frame t is g of frame t+1 (0 at the end)
    assert torch.equal(xg[:, :-1, :2], gv[:, 1:, :2]) and (xg[:, -1, :2] == 0).all()
    # backward-shifted channels [2, 4): grad of frame t is g of frame t-1 (0 at the start)
    assert torch.equal(xg[:, 1:, 2:4], gv[:, :-1, 2:4]) and (xg[:, 0, 2:4] == 0).all()
    assert torch.equal(xg[:, :, 4:], gv[:, :, 4:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_and_channels_last(dtype):
    x = torch.randn(6, 8, 4, 4, dtype=dtype).to(memory_format=torch.channels_last)
    y = temporal_shift(x, 3, 0.25)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    ref = temporal_shift(x.contiguous(), 3, 0.25)
    assert torch.equal(y, ref)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of num_frames"):
        temporal_shift(torch.randn(5, 8, 2, 2), 2)
    with pytest.raises(ValueError, match="fraction"):
        temporal_shift(torch.randn(4, 8, 2, 2), 2, 0.75)


def test_compiles_without_graph_breaks():
    x = torch.randn(6, 8, 4, 4)
    compiled = torch.compile(lambda t: temporal_shift(t, 3, 0.125), fullgraph=True, backend="eager")
    assert torch.equal(compiled(x), temporal_shift(x, 3, 0.125))
    xg = x.clone().requires_grad_()  # the autograd path (custom backward) compiles too
    compiled(xg).square().sum().backward()
    ref = x.clone().requires_grad_()
    temporal_shift(ref, 3, 0.125).square().sum().backward()
    assert torch.equal(xg.grad, ref.grad)


@pytest.mark.slow
def test_inductor_matches_eager_forward_backward_and_in_place():
    x = torch.randn(2 * 4, 32, 8, 8)
    fn = torch.compile(lambda t: temporal_shift(t, 4, 0.125) * 2)
    xg = x.clone().requires_grad_()
    y = fn(xg)
    y.square().sum().backward()
    ref = x.clone().requires_grad_()
    (temporal_shift(ref, 4, 0.125) * 2).square().sum().backward()
    assert torch.equal(y, temporal_shift(x, 4, 0.125) * 2) and torch.equal(xg.grad, ref.grad)
    inplace = torch.compile(lambda t: temporal_shift_(t.clone(), 4, 0.125) + 1)
    with torch.no_grad():
        assert torch.equal(inplace(x), temporal_shift(x, 4, 0.125) + 1)


def test_gradcheck():
    x = torch.randn(2 * 3, 8, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: temporal_shift(t, 3, 0.25), (x,))


@pytest.mark.parametrize("fraction", [0.0625, 0.125, 0.25, 0.5])
def test_in_place_matches_out_of_place(fraction):
    x = torch.randn(3 * 5, 16, 4, 4).to(memory_format=torch.channels_last)
    expected = temporal_shift(x, 5, fraction)
    y = x.clone()
    with torch.no_grad():
        out = temporal_shift_(y, 5, fraction)
    assert out is y and torch.equal(y, expected)
    with pytest.raises(RuntimeError, match="inference"):
        temporal_shift_(torch.randn(4, 8, 2, 2, requires_grad=True), 2)


def test_in_place_under_autograd_matches_out_of_place():
    """The conv1 hook's training form (``shift_frames(in_place=True)`` under autograd) gives the values and
    gradients of the out-of-place shift (fails if its backward is not the adjoint, e.g. the forward shift
    again) and passes gradcheck."""
    from ls_video.shift import shift_frames

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2 * 3, 16, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2 * 3, 16, 3, 3, generator=g, dtype=torch.float64)
    expected = temporal_shift(torch.nn.functional.silu(a), 3, 0.25)
    (expected * w).sum().backward()
    expected_grad, a.grad = a.grad, None
    y = torch.nn.functional.silu(a)
    out = shift_frames(y, 3, 4, in_place=True)
    assert out is y and torch.equal(out, expected)
    (out * w).sum().backward()
    assert torch.equal(a.grad, expected_grad)
    assert torch.autograd.gradcheck(lambda t: shift_frames(torch.nn.functional.silu(t), 3, 4, in_place=True), (a,))


def test_in_place_under_autograd_refuses_a_tensor_backward_needs():
    """Shifting in place a tensor its producer saved for backward (ReLU keeps its output) raises at backward
    instead of giving wrong gradients (fails if the in-place form bypassed autograd's version check)."""
    from ls_video.shift import shift_frames

    a = torch.randn(4, 8, 2, 2, requires_grad=True)
    out = shift_frames(torch.relu(a), 2, 2, in_place=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.gpu
def test_cuda_matches_cpu():
    x = torch.randn(6, 16, 4, 4)
    assert torch.equal(temporal_shift(x.cuda(), 3).cpu(), temporal_shift(x, 3))


def test_operators_pass_torch_library_checks():
    """Schema, fake (meta) implementation, autograd registration and dispatch of both operators."""
    from ls_video.shift import _shift_inplace_op, _shift_op

    for memory_format in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(6, 8, 3, 3).to(memory_format=memory_format)
        for reverse in (False, True):
            torch.library.opcheck(_shift_op, (x.clone().requires_grad_(), 3, 2, reverse))
        torch.library.opcheck(_shift_inplace_op, (x.clone(), 3, 2))


def test_fake_tensor_keeps_shape_dtype_and_memory_format():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(6, 8, 3, 3, dtype=torch.bfloat16).to(memory_format=torch.channels_last)
        y = torch.ops.ls_video.temporal_shift.default(x, 3, 2, False)
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous(memory_format=torch.channels_last)


TRITON_CHECK = """
import torch
from ls_video import shift_triton
from ls_video.shift import _shift_slices, _shift_slices_
torch.manual_seed(0)
for channels_last in (False, True):
    for b, f, c, h, w, n in [(2, 3, 8, 2, 2, 1), (1, 5, 16, 3, 5, 4), (3, 4, 12, 4, 4, 6), (2, 1, 8, 2, 2, 2)]:
        x = torch.randn(b * f, c, h, w)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        for reverse in (False, True):
            got = shift_triton.shift(x, f, n, reverse)
            assert torch.equal(got, _shift_slices(x, f, n, reverse)), (channels_last, b, f, c, n, reverse)
            assert got.stride() == x.stride()
        y, z = x.clone(), x.clone()
        shift_triton.shift_(y, f, n)
        _shift_slices_(z, f, n)
        assert torch.equal(y, z), ("in place", channels_last, b, f, c, n)
print("ok")
"""


def test_triton_kernels_in_the_interpreter():
    """The CUDA kernels' indexing, checked on the CPU by Triton's interpreter (where Triton is installed)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_kernels_match_reference(dtype, channels_last):
    from ls_video import shift_triton
    from ls_video.shift import _shift_slices

    for b, f, c, h, w, fraction in [(2, 16, 320, 8, 8, 0.125), (1, 5, 64, 7, 3, 0.25), (3, 2, 40, 4, 4, 0.5)]:
        x = torch.randn(b * f, c, h, w, device="cuda", dtype=dtype)
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        assert shift_triton.supports(x)
        expected = _shift_slices(x, f, int(c * fraction), False)
        assert torch.equal(temporal_shift(x, f, fraction), expected)
        y = x.clone()
        with torch.no_grad():
            temporal_shift_(y, f, fraction)
        assert torch.equal(y, expected)
        xg = x.clone().requires_grad_()
        g = torch.randn_like(x)
        temporal_shift(xg, f, fraction).backward(g)
        assert torch.equal(xg.grad, _shift_slices(g, f, int(c * fraction), True))
        assert xg.grad.stride() == x.stride()


@pytest.mark.gpu
def test_cuda_shift_is_one_kernel_launch():
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(32, 320, 16, 16, device="cuda")
    temporal_shift(x, 16)  # load the kernel
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        temporal_shift(x, 16)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 1, [e.name for e in kernels]
    torch.library.opcheck(torch.ops.ls_video.temporal_shift.default, (x.requires_grad_(), 16, 40, False))
