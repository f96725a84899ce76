"""Style blends, style scale, colour preservation, multi-scale, snapshots, history,
resumable runs and memory-safe sizes, through the API and the CLI."""
import errno
import json
import os
import re
import signal
import stat

import pytest
import torch
from conftest import CPU_OUT_OF_MEMORY, out_of_memory_at_call
from PIL import Image

from nst_fast import CheckpointNotWritten, NstError, OutOfMemory, StyleTransfer
from nst_fast.app import cli
from nst_fast.imaging import color, images
from nst_fast.losses.gatys import gram_target
from nst_fast.ops import winograd
from nst_fast.optimize import checkpoint
from nst_fast.optimize.options import Options
from nst_fast.optimize.targets import scale_loss


@pytest.fixture(scope="module")
def transfer():
    return StyleTransfer(weights="random", device="cpu")


def _targets(transfer, content, styles, **kw):
    opts = Options(**kw).resolve(n_styles=len(styles))
    net = transfer.network(list(opts.content_layers) + list(opts.style_layers))
    c = images.resize_long_side(images.to_tensor(content), opts.size)
    loss = scale_loss(net, c, [images.to_tensor(s) for s in styles], opts, c.shape[-2:], 16, None, transfer.devices)
    return loss, net, c


@pytest.mark.slow
def test_blend_target_is_the_weighted_sum(transfer, small_images, tmp_path):
    content, style = small_images
    other = tmp_path / "other.png"
    images.to_pil(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(1))).save(other)
    loss, net, c = _targets(transfer, content, [style, other], size=32, style_blend=[0.7, 0.3])
    with torch.no_grad():
        h, w = c.shape[-2:]
        for name, target in loss.style_targets.items():
            m = net(c)[name].shape[-2] * net(c)[name].shape[-1]
            grams = [gram_target(net(images.resize_long_side(images.to_tensor(s), 32))[name], m)
                     for s in (style, other)]
            torch.testing.assert_close(target, 0.7 * grams[0] + 0.3 * grams[1])


def test_blend_weights_must_match_the_styles(transfer, small_images):
    content, style = small_images
    with pytest.raises(NstError, match="3 style blend weights given for 2 style images"):
        transfer.stylize(content, [style, style], size=32, steps=1, style_blend=[1, 1, 1])


def test_style_scale_changes_the_target(transfer, small_images):
    content, style = small_images
    a, _, _ = _targets(transfer, content, [style], size=48)
    b, _, _ = _targets(transfer, content, [style], size=48, style_scale=0.5)
    assert not torch.allclose(a.style_targets["relu1_1"], b.style_targets["relu1_1"], rtol=1e-2)
    with pytest.raises(NstError, match="style_scale must be non-negative|style_scale must be positive"):
        transfer.stylize(content, style, size=32, steps=1, style_scale=-1.0)


def test_style_size_fixes_the_style_image_size(transfer, small_images, tmp_path, capsys):
    content, style = small_images
    fixed, _, c48 = _targets(transfer, content, [style], size=48, style_size=24)
    scaled, _, _ = _targets(transfer, content, [style], size=48, style_scale=0.5)
    for name in fixed.style_targets:
        assert torch.equal(fixed.style_targets[name], scaled.style_targets[name])

    def per_position(loss, c):  # relu1_1's target over its positions (those of the output)
        return loss.style_targets["relu1_1"] / (c.shape[-2] * c.shape[-1])

    # At another output size the same style image is used: the same per-position Gram.
    fixed_64, _, c64 = _targets(transfer, content, [style], size=64, style_size=24)
    scaled_64, _, _ = _targets(transfer, content, [style], size=64, style_scale=0.5)
    assert torch.allclose(per_position(fixed_64, c64), per_position(fixed, c48), rtol=1e-5)
    assert not torch.allclose(per_position(scaled_64, c64), per_position(fixed, c48), rtol=1e-3)
    for bad in (8, 2.5):
        with pytest.raises(NstError, match="style_size must be"):
            transfer.stylize(content, style, size=32, steps=1, style_size=bad)
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                     "--size", "32", "--steps", "1", "-q", "--style-size", "8"])
    assert code != 0 and "style_size must be" in capsys.readouterr().err
    assert not out.exists()


def _coloured(rgb, seed, size=(48, 64)):
    gen = torch.Generator().manual_seed(seed)
    base = torch.tensor(rgb).view(1, 3, 1, 1)
    return (base + 0.15 * torch.randn(1, 3, *size, generator=gen)).clamp(0, 1)


@pytest.mark.slow
def test_luminance_transfer_keeps_content_chroma(transfer):
    content, style = _coloured([0.7, 0.3, 0.2], 1), _coloured([0.1, 0.2, 0.8], 2, (40, 40))
    out = transfer.stylize_tensor(content, style, size=64, steps=15, preserve_colors="luminance")
    iq_out, iq_content = color.rgb_to_yiq(out)[:, 1:], color.rgb_to_yiq(content)[:, 1:]
    assert (iq_out - iq_content).abs().mean() < 0.03
    plain = transfer.stylize_tensor(content, style, size=64, steps=15, init="style")
    assert (color.rgb_to_yiq(plain)[:, 1:] - iq_content).abs().mean() > 0.05


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["match", "histogram"])
def test_colour_matching_brings_the_content_palette(transfer, mode):
    content, style = _coloured([0.8, 0.2, 0.1], 3), _coloured([0.1, 0.2, 0.9], 4, (40, 40))
    out = transfer.stylize_tensor(content, style, size=64, steps=10, init="style", preserve_colors=mode)
    mean = out.mean(dim=(0, 2, 3))
    assert mean[0] > mean[2] + 0.3  # red like the content, not blue like the style


@pytest.mark.slow
def test_multiscale_reaches_the_final_size(transfer, small_images):
    content, style = small_images
    seen = []
    out = transfer.stylize_tensor(content, style, scales=[32, 48, 64], steps=3, callback=seen.append)
    assert out.shape[-2:] == (48, 64)
    assert [i.size for i in seen] == [(24, 32)] * 3 + [(36, 48)] * 3 + [(48, 64)] * 3
    assert [i.step for i in seen] == list(range(1, 10)) and seen[-1].steps == 9
    with pytest.raises(NstError, match="scales must be increasing"):
        transfer.stylize(content, style, scales=[64, 32], steps=1)


def test_min_scale_makes_a_sqrt2_pyramid(transfer, small_images):
    assert Options(size=512, min_scale=128).resolve().sizes() == [128, 181, 256, 362, 512]
    assert Options(size=512, min_scale=512).resolve().sizes() == [512]
    content, style = small_images
    seen = []
    transfer.stylize_tensor(content, style, size=64, min_scale=32, steps=1, callback=seen.append)
    assert [i.size for i in seen] == [(24, 32), (34, 45), (48, 64)]
    with pytest.raises(NstError, match="min_scale must be a whole number of pixels from 16 to size"):
        Options(size=64, min_scale=128).resolve()
    with pytest.raises(NstError, match="scales or min_scale, not both"):
        Options(size=64, min_scale=32, scales=[32, 64]).resolve()


@pytest.mark.slow
def test_cli_min_scale(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    args = [str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu", "--size", "48",
            "--steps", "1", "--min-scale", "24"]
    assert cli.main(args) == 0 and out.exists()
    assert "1/3 " in capsys.readouterr().err  # one step at each of the scales 24, 34, 48
    assert cli.main(args[:-1] + ["96"]) == 1
    assert "min_scale must be" in capsys.readouterr().err


def test_step_info_counts_work_by_pixels(transfer, small_images):
    content, style = small_images
    seen = []
    transfer.stylize_tensor(content, style, scales=[32, 64], steps=2, callback=seen.append)
    assert [round(i.done, 6) for i in seen] == [0.1, 0.2, 0.6, 1.0]  # a 64 px step costs four 32 px ones


@pytest.mark.slow
def test_initial_steps_set_the_first_scale_only(transfer, small_images, tmp_path, capsys):
    content, style = small_images
    seen = []
    result = transfer.run(content, style, scales=[32, 48, 64], steps=2, initial_steps=5, callback=seen.append)
    assert [i.size for i in seen] == [(24, 32)] * 5 + [(36, 48)] * 2 + [(48, 64)] * 2
    assert [i.step for i in seen] == list(range(1, 10)) and seen[-1].steps == 9
    assert len(result.history) == 9 and result.steps == 9
    with pytest.raises(NstError, match="initial_steps must be"):
        transfer.stylize(content, style, scales=[32, 48], steps=2, initial_steps=-1)
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                     "--scales", "32,48", "--steps", "1", "--initial-steps", "2", "-q"])
    assert code == 0, capsys.readouterr().err
    assert out.exists()


@pytest.mark.slow
def test_snapshots_and_history(transfer, small_images):
    content, style = small_images
    shots = []
    rows = transfer.run(content, style, size=32, steps=6, save_every=2,
                        snapshot=lambda step, img: shots.append((step, img.shape))).history
    assert [s for s, _ in shots] == [2, 4, 6] and all(shape == (1, 3, 24, 32) for _, shape in shots)
    assert len(rows) == 6 and {"total", "content", "style", "tv", "style:relu1_1", "content:relu4_2"} <= set(rows[0])
    assert rows[-1]["total"] < rows[0]["total"]


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_resume_equals_an_uninterrupted_run(transfer, small_images, tmp_path, optimizer):
    content, style = small_images
    kw = dict(size=32, init="noise", seed=3, optimizer=optimizer)
    whole = transfer.run(content, style, steps=16, **kw)
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, steps=8, checkpoint=ckpt, **kw)
    resumed = transfer.run(content, style, steps=16, resume=ckpt, **kw)
    assert torch.equal(resumed.image, whole.image)
    assert [r["total"] for r in resumed.history] == [r["total"] for r in whole.history]


@pytest.mark.parametrize("error", [CPU_OUT_OF_MEMORY, torch.cuda.OutOfMemoryError("CUDA out of memory.")],
                         ids=["cpu", "cuda-class"])
@pytest.mark.slow
def test_running_out_of_memory_keeps_the_image_so_far_and_a_checkpoint(transfer, small_images, tmp_path,
                                                                       monkeypatch, error):
    content, style = small_images
    kw = dict(size=32, init="noise", seed=3)
    two_steps = transfer.stylize_tensor(content, style, steps=2, **kw)
    whole = transfer.stylize_tensor(content, style, steps=6, **kw)
    ckpt = tmp_path / "run.ckpt"
    with monkeypatch.context() as patch:
        out_of_memory_at_call(patch, 3, error)
        with pytest.raises(OutOfMemory, match=r"^ran out of CPU memory at step 3; ask for a smaller size, let "
                                              r"fit_memory \(--fit-memory\) pick one, or use low_memory") as caught:
            transfer.stylize_tensor(content, style, steps=6, interrupt_checkpoint=ckpt, **kw)
    assert caught.value.step == 2 and torch.equal(caught.value.image, two_steps)
    assert torch.equal(transfer.stylize_tensor(content, style, steps=6, resume=ckpt, **kw), whole)


def test_running_out_of_memory_before_a_larger_scale_keeps_the_smaller_result(transfer, small_images,
                                                                                  monkeypatch):
    content, style = small_images
    kw = dict(init="noise", seed=3, steps=3)
    smaller = transfer.stylize_tensor(content, style, scales=[32], **kw)
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise CPU_OUT_OF_MEMORY
        return scale_loss(*args, **kwargs)

    monkeypatch.setattr("nst_fast.optimize.transfer.scale_loss", second_fails)
    with pytest.raises(OutOfMemory, match=r"^ran out of CPU memory preparing size 48; ask for a smaller") as caught:
        transfer.stylize_tensor(content, style, scales=[32, 48], **kw)
    assert caught.value.step == 3 and torch.equal(caught.value.image, smaller)


def test_other_errors_of_a_step_are_not_taken_for_memory(transfer, small_images, monkeypatch):
    content, style = small_images
    out_of_memory_at_call(monkeypatch, 2, RuntimeError("expected scalar type Float but found Half"))
    with pytest.raises(RuntimeError, match="expected scalar type"):
        transfer.stylize_tensor(content, style, size=32, steps=4)


def test_resume_upscaled_and_from_another_run(transfer, small_images, tmp_path):
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, size=32, steps=4, checkpoint=ckpt)
    bigger = transfer.stylize_tensor(content, style, size=48, steps=2, resume=ckpt)
    assert bigger.shape[-2:] == (36, 48)
    with pytest.raises(NstError, match="from another run"):
        transfer.stylize_tensor(content, style, size=32, steps=4, resume=ckpt, style_weight=123.0)


def test_a_large_image_reduced_by_the_size_resumes_at_another_size(transfer, small_images, tmp_path, monkeypatch):
    """Large images (made small here) become tensors reduced by the run's size: a
    checkpoint knows them by their decoded pixels, the same at either size."""
    content, style = small_images
    monkeypatch.setattr(images, "LARGE_PIXELS", 100)
    monkeypatch.setattr(images, "REDUCE_MARGIN", 1)
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, size=32, steps=2, checkpoint=ckpt)
    assert transfer.stylize_tensor(content, style, size=48, steps=2, resume=ckpt).shape[-2:] == (36, 48)
    other = Image.open(content).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    with pytest.raises(NstError, match="from another run: its images differ$"):
        transfer.stylize_tensor(other, style, size=48, steps=2, resume=ckpt)


def test_a_mismatched_checkpoint_names_what_differs(transfer, small_images, tmp_path):
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, size=32, steps=2, checkpoint=ckpt, precision="fp32")
    with pytest.raises(NstError, match=r"from another run: its style_weight was 50000000.0, here 123.0; "
                                       r"its precision was 'fp32', here 'bf16'$"):
        transfer.stylize_tensor(content, style, size=32, steps=4, resume=ckpt, precision="bf16", style_weight=123.0)
    with pytest.raises(NstError, match="from another run: its images differ$"):
        transfer.stylize_tensor(style, style, size=32, steps=4, resume=ckpt)


@pytest.mark.slow
def test_random_weights_of_another_seed_are_another_network_on_resume(small_images, tmp_path):
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    StyleTransfer(weights="random", seed=3).stylize_tensor(content, style, size=32, steps=2, checkpoint=ckpt)
    with pytest.raises(NstError, match=r"its weights was random \(seed 3\), here random$"):
        StyleTransfer(weights="random", seed=0).stylize_tensor(content, style, size=32, steps=4, resume=ckpt)


def test_a_full_disk_is_an_os_error_not_torchs_own(small_images):
    # /dev/full fails every write with ENOSPC, as a full disk does
    with open("/dev/full", "wb", buffering=0) as f, pytest.raises(OSError) as caught:
        checkpoint.write(f, {"image": torch.zeros(1, 3, 64, 64)})
    assert caught.value.errno == errno.ENOSPC


TOGETHER = "save_every and snapshot go together: snapshot\\(step, image\\) is called every save_every steps"


@pytest.mark.parametrize("kwargs, message", [
    ({"checkpoint": "{tmp}/missing/run.ckpt"}, "the folder of checkpoint {tmp}/missing/run.ckpt does not exist"),
    ({"interrupt_checkpoint": "{tmp}"}, "interrupt_checkpoint {tmp} is a folder; name a file"),
    ({"checkpoint": 5}, "checkpoint must be a file path, got 5"),
    ({"snapshot": print}, TOGETHER),
    ({"save_every": 2}, TOGETHER),
    ({"save_every": -1, "snapshot": print}, "save_every must be 0 \\(off\\) or a number of steps, got -1"),
])
def test_where_a_run_writes_is_checked_before_its_steps(transfer, small_images, tmp_path, kwargs, message):
    steps = []
    kwargs = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(NstError, match=message.format(tmp=re.escape(str(tmp_path))) + "$"):
        transfer.stylize_tensor(*small_images, size=32, steps=2, callback=steps.append, **kwargs)
    assert steps == []


@pytest.mark.parametrize("name", ["checkpoint", "interrupt_checkpoint"])
def test_a_checkpoint_at_a_fifo_is_refused_before_the_steps(transfer, small_images, tmp_path, name):
    fifo = tmp_path / "run.ckpt"
    os.mkfifo(fifo)
    steps = []
    message = f"^{name} {re.escape(str(fifo))} is a FIFO, not a regular file; name another file$"
    with pytest.raises(NstError, match=message):
        transfer.stylize_tensor(*small_images, size=32, steps=2, callback=steps.append, **{name: fifo})
    assert steps == [] and stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_full_disk_at_the_last_checkpoint_raises_with_the_whole_result(transfer, small_images, tmp_path,
                                                                        monkeypatch):
    whole = transfer.stylize_tensor(*small_images, size=32, steps=3)
    write = checkpoint.write

    def to_full_disk(f, data):
        with open("/dev/full", "wb", buffering=0) as full:
            write(full, data)

    monkeypatch.setattr(checkpoint, "write", to_full_disk)
    with pytest.raises(CheckpointNotWritten, match="No space left on device$") as caught:
        transfer.stylize_tensor(*small_images, size=32, steps=3, checkpoint=tmp_path / "run.ckpt")
    assert caught.value.step == 3 and torch.equal(caught.value.image, whole)
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_without_settings_still_resumes(transfer, small_images, tmp_path):
    """Checkpoints from before they kept their settings: the same run resumes, another
    gets the general message."""
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, size=32, steps=2, checkpoint=ckpt)
    data = torch.load(ckpt, weights_only=True)
    del data["settings"]
    torch.save(data, ckpt)
    assert len(transfer.run(content, style, size=32, steps=4, resume=ckpt).history) == 4
    with pytest.raises(NstError, match="from another run: its images or options differ from these$"):
        transfer.stylize_tensor(content, style, size=32, steps=4, resume=ckpt, style_weight=123.0)


@pytest.mark.slow
def test_interrupt_saves_a_checkpoint_that_resumes(transfer, small_images, tmp_path):
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    kw = dict(size=32, init="noise", seed=5)
    whole = transfer.stylize_tensor(content, style, steps=10, **kw)

    def stop(info):
        if info.step == 4:
            raise KeyboardInterrupt

    from nst_fast import Interrupted

    with pytest.raises(Interrupted):
        transfer.stylize_tensor(content, style, steps=10, checkpoint=ckpt, callback=stop, **kw)
    assert torch.equal(transfer.stylize_tensor(content, style, steps=10, resume=ckpt, **kw), whole)


@pytest.mark.parametrize("steps", [0, 2, 3])
def test_resume_with_no_more_steps_than_the_checkpoint_returns_its_image(transfer, small_images, tmp_path, capsys,
                                                                        steps):
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    kw = dict(size=32, init="noise", seed=3, avg_decay=0.5)
    done = transfer.stylize_tensor(content, style, steps=3, checkpoint=ckpt, **kw)
    capsys.readouterr()
    result = transfer.run(content, style, steps=steps, resume=ckpt, **kw)
    assert torch.equal(result.image, done)
    assert len(result.history) == 3
    assert result.note == f"the checkpoint {ckpt} is already at step 3 (>= steps {steps}); its image " \
                                        "is the result"
    assert capsys.readouterr().err == ""  # StyleTransfer prints nothing; the CLI says it


def test_resume_counts_steps_per_scale(transfer, small_images, tmp_path, capsys):
    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, scales=[32], steps=4, checkpoint=ckpt)
    # Its scale already has more than 2 steps: on to the next one from its image.
    result = transfer.run(content, style, scales=[32, 48], steps=2, resume=ckpt)
    assert result.image.shape[-2:] == (36, 48)
    assert [r["size"] for r in result.history] == [[24, 32]] * 4 + [[36, 48]] * 2
    assert result.notes == []


@pytest.mark.slow
def test_cli_resume_with_fewer_steps_writes_the_checkpoints_image(small_images, tmp_path, capsys):
    content, style = small_images
    base = [str(content), str(style), "--weights", "random", "--device", "cpu", "--size", "32", "-q"]
    ckpt = tmp_path / "a.ckpt"
    assert cli.main(base + ["-o", str(tmp_path / "a.png"), "--steps", "3", "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    assert cli.main(base + ["-o", str(tmp_path / "b.png"), "--steps", "1", "--resume", str(ckpt)]) == 0
    assert "is already at step 3 (>= steps 1)" in capsys.readouterr().err
    assert Image.open(tmp_path / "a.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()


@pytest.fixture(scope="module")
def good_checkpoint(transfer, small_images, tmp_path_factory):
    """The checkpoint of 2 steps at size 32 (24x32), and what it holds."""
    path = tmp_path_factory.mktemp("good") / "good.ckpt"
    transfer.stylize_tensor(*small_images, size=32, steps=2, checkpoint=path)
    return path, torch.load(path, weights_only=True)


def test_an_unreadable_checkpoint_is_a_clean_error(transfer, small_images, tmp_path):
    for name, data in {"text": None, "pickled": {"version": 1, "x": torch.nn.Identity()}}.items():
        path = tmp_path / f"{name}.ckpt"  # pickled: torch's refusal suggests weights_only=False
        if data is None:
            path.write_text("nope")
        else:
            torch.save(data, path)
        with pytest.raises(NstError) as caught:
            transfer.stylize_tensor(*small_images, size=32, steps=4, resume=path)
        assert str(caught.value) == f"{path} is not a readable nst-fast checkpoint", name


def _without(data, key):
    return {k: v for k, v in data.items() if k != key}


# A hand edit of a checkpoint that still unpickles -> what is wrong with it.
EDITS = {
    "bare": (lambda d: {"version": 1}, "fingerprint is missing"),
    "no_history": (lambda d: _without(d, "history"), "history is missing"),
    "step_as_text": (lambda d: dict(d, step="2"), "step is a str, not a whole number"),
    "one_side": (lambda d: dict(d, size=[24]), "size is [24], not [height, width]"),
    "no_optimiser_state": (lambda d: dict(d, optimizer={}), "the optimiser state is missing"),
    "short_x": (lambda d: dict(d, x=d["x"][..., 1:]), "x has shape (1, 3, 24, 31), the size says (1, 3, 24, 32)"),
    "nan_best_loss": (lambda d: dict(d, best_loss=torch.tensor(float("nan"))), "best_loss is NaN"),
    "short_optimiser_entry": (lambda d: dict(d, optimizer=dict(d["optimizer"], x_a=d["optimizer"]["x_a"][1:])),
                              "the optimiser's x_a has shape (2303,), this run's (2304,)"),
    "optimiser_entry_missing": (lambda d: dict(d, optimizer=_without(d["optimizer"], "W")),
                                "the optimiser state is missing W"),
    "history_column_missing": (lambda d: dict(d, history=d["history"][:, 1:]),
                               "history has shape (2, 9), this run's (2, 10)"),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_hand_edited_checkpoint_is_refused_naming_what_is_wrong(transfer, small_images, tmp_path, good_checkpoint,
                                                                  edit):
    change, problem = EDITS[edit]
    path = tmp_path / "edited.ckpt"
    torch.save(change(good_checkpoint[1]), path)
    steps = []
    with pytest.raises(NstError) as caught:
        transfer.stylize_tensor(*small_images, size=32, steps=4, resume=path, callback=steps.append)
    assert str(caught.value) == f"checkpoint {path} is damaged: {problem}"
    assert steps == []


def test_cli_refuses_a_hand_edited_checkpoint_in_one_line(small_images, tmp_path, good_checkpoint, capsys):
    path = tmp_path / "edited.ckpt"
    torch.save(dict(good_checkpoint[1], optimizer={}), path)
    code = cli.main([*map(str, small_images), "--weights", "random", "--device", "cpu", "--size", "32", "-q",
                     "--steps", "4", "--resume", str(path), "-o", str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().splitlines()[-1] == (f"nst-fast: error: checkpoint {path} is damaged: "
                                                          "the optimiser state is missing")
    assert "Traceback" not in err and not (tmp_path / "out.png").exists()


def test_interrupt_mid_step_reports_the_steps_the_checkpoint_holds(transfer, small_images, tmp_path, monkeypatch):
    from nst_fast import Interrupted

    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    make_loss, calls = scale_loss, []

    def loss_stopping_in_step_5(*args, **kwargs):
        loss = make_loss(*args, **kwargs)
        terms = loss.terms

        def stopping(x):
            calls.append(1)
            if len(calls) == 5:  # as Ctrl-C during the 5th step's computation
                raise KeyboardInterrupt
            return terms(x)

        loss.terms = stopping
        return loss

    monkeypatch.setattr("nst_fast.optimize.transfer.scale_loss", loss_stopping_in_step_5)
    with pytest.raises(Interrupted, match=r"^interrupted at step 4$") as caught:
        transfer.stylize_tensor(content, style, size=32, steps=10, checkpoint=ckpt)
    assert caught.value.step == 4 == torch.load(ckpt, weights_only=True)["step"]


def test_ctrl_c_again_while_the_checkpoint_is_written_cuts_nothing_short(transfer, small_images, tmp_path,
                                                                         monkeypatch):
    from nst_fast import Interrupted

    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    kw = dict(size=32, init="noise", seed=5)
    whole = transfer.stylize_tensor(content, style, steps=6, **kw)
    write = checkpoint.write

    def ctrl_c_first(f, data):
        signal.raise_signal(signal.SIGINT)
        write(f, data)

    def stop(info):
        if info.step == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint, "write", ctrl_c_first)
        try:
            transfer.stylize_tensor(content, style, steps=6, interrupt_checkpoint=ckpt, callback=stop, **kw)
        except Interrupted as exc:
            stopped = exc
        except KeyboardInterrupt:  # not the run's Interrupted: the second one escaped
            pytest.fail("the second Ctrl-C cut the checkpoint's writing short")
    assert str(stopped) == "interrupted at step 2" and stopped.image is not None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert torch.equal(transfer.stylize_tensor(content, style, steps=6, resume=ckpt, **kw), whole)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_ctrl_c_right_after_the_optimisers_update_resumes_exactly(transfer, small_images, tmp_path, monkeypatch,
                                                                  optimizer):
    """Ctrl-C between the optimiser's update and the step's count: the run stops at the
    step's end, with a checkpoint of whole steps that resumes to the uninterrupted result."""
    from nst_fast import Interrupted
    from nst_fast.optimize import optim

    content, style = small_images
    ckpt = tmp_path / "run.ckpt"
    kw = dict(size=32, init="noise", seed=3, optimizer=optimizer)
    whole = transfer.stylize_tensor(content, style, steps=6, **kw)
    cls = optim.LBFGS if optimizer == "lbfgs" else optim.Adam
    update, updates = cls.step, []

    def ctrl_c_after_the_third(self, *args):
        update(self, *args)
        updates.append(1)
        if len(updates) == 3:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C lands: Python runs its handler now

    with monkeypatch.context() as patch:
        patch.setattr(cls, "step", ctrl_c_after_the_third)
        with pytest.raises(Interrupted, match=r"^interrupted at step 3$") as caught:
            transfer.stylize_tensor(content, style, steps=6, interrupt_checkpoint=ckpt, **kw)
    saved = torch.load(ckpt, weights_only=True)
    assert caught.value.step == 3 == saved["step"] == saved["optimizer"]["steps"]  # the updates it holds
    assert torch.equal(transfer.stylize_tensor(content, style, steps=6, resume=ckpt, **kw), whole)


def test_memory_estimate_refuses_an_oversized_run_before_allocating(transfer, small_images, monkeypatch):
    content, style = small_images
    monkeypatch.setattr("nst_fast.optimize.transfer.scale_loss", lambda *a, **k: pytest.fail("allocated before refusing"))
    with pytest.raises(NstError, match=r"GiB is available on cpu; the largest size that fits is \d+"):
        transfer.stylize(content, style, size=200_000, steps=1)


def test_a_style_image_too_large_for_memory_is_refused_before_allocating(transfer, small_images, monkeypatch):
    content, style = small_images
    monkeypatch.setattr("nst_fast.optimize.transfer.scale_loss", lambda *a, **k: pytest.fail("allocated before refusing"))
    for option in ({"style_size": 100_000}, {"style_scale": 3000.0}):
        with pytest.raises(NstError, match=r"the style images at \d+ px .* GiB is available on cpu; give a smaller"):
            transfer.stylize(content, style, size=32, steps=1, **option)


def test_fit_memory_picks_the_largest_size_that_fits(transfer, small_images):
    from nst_fast.optimize import memory
    from nst_fast.optimize.options import DEFAULT_STYLE_LAYERS

    content, style = small_images
    # Sizes are shrunk only after the Winograd transforms are left out (which fits larger).
    budget = memory.estimate_bytes(60, 80, ["relu4_2"], list(DEFAULT_STYLE_LAYERS), winograd_transforms=False)
    out = transfer.stylize_tensor(content, style, size=512, steps=1, memory_limit=budget, fit_memory=True)
    assert 64 <= max(out.shape[-2:]) <= 96
    with pytest.raises(NstError, match="largest size that fits"):
        transfer.stylize_tensor(content, style, size=512, steps=1, memory_limit=budget)


@pytest.mark.skipif(not winograd.available(), reason="the CPU's Winograd convolutions need the extension")
def test_fit_memory_takes_low_memory_where_that_reaches_a_larger_size_and_says_so(transfer, small_images, tmp_path,
                                                                                  capsys):
    """At 4000 pixels the Winograd run needs less than the low_memory one (the transforms are
    fixed, the activations grow), but in 600 MiB low_memory reaches the larger size."""
    from nst_fast.optimize import memory
    from nst_fast.optimize.options import DEFAULT_STYLE_LAYERS

    content, style = small_images
    budget, aspect, layers = 600 << 20, 64 / 48, (["relu4_2"], list(DEFAULT_STYLE_LAYERS))
    lean = memory.largest_size(budget, aspect, *layers, winograd_transforms=False)
    assert lean > memory.largest_size(budget, aspect, *layers) >= 16
    result = transfer.run(content, style, size=4000, steps=0, memory_limit=budget, fit_memory=True)
    assert max(result.image.shape[-2:]) == lean and not any(_transforms_held(transfer))
    assert re.fullmatch(rf"a 4000x3000 run needs about [\d.]+ GiB but 0.6 GiB is available on cpu: fit_memory "
                        rf"ran it at size {lean}, the largest that fits without the Winograd weight transforms, "
                        r"as low_memory \(--low-memory\), with slower steps", result.note)
    out_file = tmp_path / "out.png"
    assert cli.main([str(content), str(style), "-o", str(out_file), "--weights", "random", "--device", "cpu",
                     "--size", "4000", "--steps", "0", "--memory-limit", "600M", "--fit-memory", "-q"]) == 0
    assert max(Image.open(out_file).size) == lean
    told = [line for line in capsys.readouterr().err.splitlines() if "fit_memory ran it" in line]
    assert told == [f"nst-fast: {result.note}"]


def test_a_history_too_long_for_memory_is_refused_naming_lbfgs_history(transfer, small_images, monkeypatch):
    """20000 curvature pairs of a 64x48 image are 1.4 GiB, and what grows with their
    square (W W^T, 40000 x 40000 in float64, and a step's 20000 x 20000 matrices) another
    27 GiB: no size fits in 4 GiB, a shorter history does."""
    from nst_fast.optimize import memory
    from nst_fast.optimize.options import DEFAULT_STYLE_LAYERS

    content, style = small_images
    monkeypatch.setattr("nst_fast.optimize.transfer.scale_loss", lambda *a, **k: pytest.fail("allocated before refusing"))
    layers = (["relu4_2"], list(DEFAULT_STYLE_LAYERS))
    budget = 4 << 30
    for fit_memory in (False, True):
        with pytest.raises(NstError) as refused:
            transfer.stylize_tensor(content, style, size=64, steps=1, lbfgs_history=20_000, memory_limit=budget,
                                    fit_memory=fit_memory, low_memory=True)
        fits = memory.largest_history(budget, 48, 64, *layers, history=20_000, winograd_transforms=False)
        assert 1000 < fits < 20_000
        assert re.fullmatch(rf"a 64x48 run needs about [\d.]+ GiB but 4.0 GiB is available on cpu, [\d.]+ GiB of it "
                            rf"for the L-BFGS history \(lbfgs_history 20000\), and no smaller size fits; keep fewer "
                            rf"L-BFGS curvature pairs: lbfgs_history {fits} fits at size 64 "
                            rf"\(--lbfgs-history {fits}\)", str(refused.value))
    # Where a smaller size fits too, both are named.
    budget = memory.estimate_bytes(48, 64, *layers, history=1000, winograd_transforms=False) - 1
    with pytest.raises(NstError, match=r"the largest size that fits is \d+: ask for size \d+, or let fit_memory "
                                       r"\(--fit-memory\) pick it, or keep fewer L-BFGS curvature pairs: "
                                       r"lbfgs_history 999 fits at size 64 \(--lbfgs-history 999\)$"):
        transfer.stylize_tensor(content, style, size=64, steps=1, lbfgs_history=1000, memory_limit=budget,
                                low_memory=True)


def _transforms_held(transfer):
    from nst_fast.ops.winograd import WinogradConv2d

    return [m._transforms is not None for net in transfer._nets.values() for m in net.net
            if isinstance(m, WinogradConv2d)]


@pytest.mark.skipif(not winograd.available(), reason="the CPU's Winograd convolutions need the extension")
def test_low_memory_runs_without_the_weight_transforms(transfer, small_images):
    fast = transfer.stylize_tensor(*small_images, size=32, steps=3)
    assert any(_transforms_held(transfer))
    lean = transfer.run(*small_images, size=32, steps=3, low_memory=True)
    assert not any(_transforms_held(transfer))  # freed, not only unused
    torch.testing.assert_close(lean.image, fast, atol=2e-3, rtol=0)  # the same convolution, otherwise computed
    assert lean.notes == []


@pytest.mark.skipif(not winograd.available(), reason="the CPU's Winograd convolutions need the extension")
def test_a_run_that_fits_only_without_the_transforms_runs_so_and_says_it(transfer, small_images):
    from nst_fast.optimize import memory
    from nst_fast.optimize.options import DEFAULT_STYLE_LAYERS

    layers = ["relu4_2"], list(DEFAULT_STYLE_LAYERS)
    budget = memory.estimate_bytes(48, 64, *layers) - 1
    assert memory.estimate_bytes(48, 64, *layers, winograd_transforms=False) < budget
    result = transfer.run(*small_images, size=64, steps=1, memory_limit=budget)
    assert result.image.shape[-2:] == (48, 64) and not any(_transforms_held(transfer))
    assert result.note.startswith("the run fits in memory only without the Winograd weight transforms")


@pytest.mark.slow
def test_cli_features(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    base = [str(content), str(style), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
            "--size", "32", "--steps", "4", "-q"]
    code = cli.main(base + ["--style-blend", "0.7,0.3", "--style-layers", "relu1_1:0.5,relu2_1:0.5",
                            "--preserve-colors", "luminance", "--save-every", "2", "--history",
                            str(tmp_path / "h.json"), "--checkpoint", str(tmp_path / "c.ckpt")])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out.step0002.png").exists() and (tmp_path / "out.step0004.png").exists()
    rows = json.loads((tmp_path / "h.json").read_text())
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and "style:relu2_1" in rows[0]
    code = cli.main(base + ["--style-blend", "0.7,0.3", "--style-layers", "relu1_1:0.5,relu2_1:0.5",
                            "--preserve-colors", "luminance", "--steps", "6", "--resume", str(tmp_path / "c.ckpt")])
    assert code == 0, capsys.readouterr().err
    code = cli.main(base + ["--style-blend", "1,2,3"])
    assert code == 1 and "3 style blend weights given for 2 style images" in capsys.readouterr().err


def test_loss_plot(transfer, small_images, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    from nst_fast.runtime import history

    content, style = small_images
    rows = transfer.run(content, style, size=32, steps=5).history
    history.plot(rows, tmp_path / "loss.png")
    assert Image.open(tmp_path / "loss.png").size[0] > 100
    history.plot(rows, tmp_path / "loss.jpg")  # the format its name says
    assert Image.open(tmp_path / "loss.jpg").format == "JPEG"
    history.plot(rows, tmp_path / "loss.svg")
    assert (tmp_path / "loss.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(NstError, match="cannot tell how from '.*loss.xyz'"):
        history.plot(rows, tmp_path / "loss.xyz")


def test_cli_refuses_a_plot_format_before_it_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(StyleTransfer, "__init__", lambda *a, **k: pytest.fail("the run started"))
    assert cli.main(["--demo", "-o", str(tmp_path / "o.png"), "--plot", str(tmp_path / "p.doc")]) == 1
    assert "--plot: a plot is written as png, pdf, svg" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_loss_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path):
    import builtins

    from nst_fast.runtime import history

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(NstError, match="pip install matplotlib"):
        history.plot([{"total": 1.0, "size": [2, 2]}], tmp_path / "loss.png")


def test_cli_refuses_plot_without_matplotlib_before_it_runs(monkeypatch, tmp_path, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib"
                        else real_find_spec(name, *a))
    monkeypatch.setattr(StyleTransfer, "__init__", lambda *a, **k: pytest.fail("the run started"))
    assert cli.main(["--demo", "-o", str(tmp_path / "o.png"), "--weights", "random", "--plot",
                     str(tmp_path / "p.png")]) == 1
    assert capsys.readouterr().err.strip().endswith("--plot needs matplotlib: pip install matplotlib")
    assert not (tmp_path / "o.png").exists()


def test_normalized_gradient_has_unit_l1_norm_times_the_weight():
    from nst_fast.losses.gatys import normalized_gradient

    x = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    weight = 7.5
    (weight * x.pow(3).sum()).backward()
    plain = x.grad.clone()
    x.grad = None
    (weight * normalized_gradient(x, weight).pow(3).sum()).backward()
    unweighted = plain / weight
    torch.testing.assert_close(x.grad, weight * unweighted / (unweighted.abs().sum() + 1e-8))
    assert x.grad.abs().sum().item() == pytest.approx(weight, rel=1e-6)


def test_normalize_gradients_and_lbfgs_history_change_the_run(transfer, small_images, tmp_path):
    content, style = small_images
    kw = dict(size=32, steps=12, init="noise", seed=5)
    seen = {}

    def run(name, **extra):
        totals = []
        img = transfer.stylize_tensor(content, style, callback=lambda i: totals.append(float(i.losses["total"])),
                                      **kw, **extra)
        seen[name] = totals
        return img

    base = run("base")
    normalized = run("normalized", normalize_gradients=True)
    short = run("short", lbfgs_history=2)
    assert not torch.equal(base, normalized) and not torch.equal(base, short)
    for totals in seen.values():
        assert totals[0] / totals[-1] > 5  # every variant still optimises
    ckpt = tmp_path / "run.ckpt"
    transfer.stylize_tensor(content, style, checkpoint=ckpt, lbfgs_history=2, **kw)
    with pytest.raises(NstError, match="from another run"):
        transfer.stylize_tensor(content, style, resume=ckpt, lbfgs_history=3, **kw)
    with pytest.raises(NstError, match="lbfgs_history must be at least 1"):
        transfer.stylize_tensor(content, style, lbfgs_history=0, **kw)


def test_cli_lbfgs_history_and_normalize_gradients(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                     "--size", "32", "--steps", "3", "-q", "--lbfgs-history", "4", "--normalize-gradients"])
    assert code == 0, capsys.readouterr().err
    assert out.exists()
    code = cli.main([str(content), str(style), "-o", str(tmp_path / "bad.png"), "--weights", "random",
                     "--device", "cpu", "--size", "32", "--steps", "3", "-q", "--lbfgs-history", "0"])
    assert code != 0 and "lbfgs_history must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_loop_state_averages_finite_iterates_with_bias_correction():
    from nst_fast.optimize.steps import LoopState

    xs = [torch.full((1, 3, 2, 2), v) for v in (1.0, 2.0, 9.0, 4.0)]
    totals = [torch.tensor(t) for t in (3.0, 2.0, float("nan"), 1.0)]
    state = LoopState.start(xs[0], steps=4, n_parts=1, avg_decay=0.5)
    no_terms = (torch.zeros(0), torch.zeros(0, 0), 0)  # a history row of the total alone
    for x, total in zip(xs, totals):
        state.record(x, total, *no_terms)
    # 0.5-decay EMA of 1, 2, 4 (the NaN step skipped), over its weight 1 - 0.5^3.
    want = (0.125 * 1.0 + 0.25 * 2.0 + 0.5 * 4.0) / (1 - 0.5**3)
    assert torch.allclose(state.output(), torch.full_like(xs[0], want))
    assert torch.equal(state.best, xs[3])
    plain = LoopState.start(xs[0], steps=4, n_parts=1)
    for x, total in zip(xs, totals):
        plain.record(x, total, *no_terms)
    assert torch.equal(plain.output(), xs[3])


@pytest.mark.slow
def test_avg_decay_averages_the_output_not_the_optimisation(transfer, small_images, tmp_path):
    content, style = small_images
    kw = dict(size=32, steps=10, init="noise", seed=4)
    plain = transfer.run(content, style, **kw)
    averaged = transfer.run(content, style, avg_decay=0.8, **kw)
    assert [r["total"] for r in averaged.history] == [r["total"] for r in plain.history]  # the same iterates
    assert not torch.equal(averaged.image, plain.image)
    assert 0 <= averaged.image.min() and averaged.image.max() <= 1
    # Resuming restores the average too.
    ckpt = tmp_path / "avg.ckpt"
    transfer.stylize_tensor(content, style, checkpoint=ckpt, avg_decay=0.8, **dict(kw, steps=5))
    assert torch.equal(transfer.stylize_tensor(content, style, resume=ckpt, avg_decay=0.8, **kw), averaged.image)
    with pytest.raises(NstError, match="from another run"):
        transfer.stylize_tensor(content, style, resume=ckpt, **kw)
    for bad in (1.0, -0.1):
        with pytest.raises(NstError, match="avg_decay"):
            transfer.stylize_tensor(content, style, avg_decay=bad, **kw)


def test_gray_init_starts_from_mid_gray(transfer, small_images):
    content, style = small_images
    start = transfer.stylize_tensor(content, style, size=32, steps=0, init="gray")
    assert (start - 0.5).abs().max() <= 0.5 / 255 + 1e-6
    assert start.std() > 0  # the noise that breaks the symmetry


def test_style_stats_init_has_the_styles_colour_statistics(transfer, small_images):
    content, _ = small_images
    gen = torch.Generator().manual_seed(5)
    reddish = torch.stack([0.7 + 0.1 * torch.randn(64, 64, generator=gen), 0.3 + 0.05 * torch.randn(64, 64),
                           torch.full((64, 64), 0.2)])[None].clamp(0, 1)
    bluish = torch.flip(reddish, dims=[1])  # the same statistics, channels reversed
    start = transfer.stylize_tensor(content, [reddish, bluish], size=64, steps=0, init="style_stats",
                                    style_blend=[3, 1])
    mean, std = start.mean(dim=(0, 2, 3)), start.std(dim=(0, 2, 3))
    want = 0.75 * reddish.mean(dim=(0, 2, 3)) + 0.25 * bluish.mean(dim=(0, 2, 3))
    assert torch.allclose(mean, want, atol=0.02), (mean, want)
    # The blend's spread includes the gap between the two styles' means.
    assert 0.2 < float(std[0]) < 0.3 and 0.2 < float(std[2]) < 0.3 and float(std[1]) < 0.1, std


def test_l2_pooling_is_the_root_mean_square_with_finite_gradients():
    from nst_fast.nets import vgg

    pool = vgg.L2Pool2d()
    x = torch.tensor([[[[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]], requires_grad=True)
    y = pool(x)
    assert torch.allclose(y, torch.tensor([[[[2.5, 0.0]]]]), atol=1e-3)  # sqrt((9 + 16) / 4); an all-zero window
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    net = vgg.VGGFeatures(["relu2_1"], vgg.random_state(0), pooling="l2")
    assert isinstance(net.net[4], vgg.L2Pool2d)


def test_cli_l2_pooling_gray_init_and_averaging(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu",
                     "--size", "32", "--steps", "3", "-q", "--pooling", "l2", "--init", "gray",
                     "--avg-decay", "0.9"])
    assert code == 0, capsys.readouterr().err
    assert out.exists()
    code = cli.main([str(content), str(style), "-o", str(tmp_path / "bad.png"), "--weights", "random",
                     "--device", "cpu", "--size", "32", "--steps", "3", "-q", "--avg-decay", "1.5"])
    assert code != 0 and "avg_decay must be below 1" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_normalize_weights_divides_by_channels_keeping_the_sum():
    opts = Options(style_layers="relu1_1,relu5_1", content_layers="relu2_2:2,relu4_2:1",
                   normalize_weights=True).resolve()
    assert opts.style_layers == pytest.approx({"relu1_1": 512 / 576, "relu5_1": 64 / 576})
    assert opts.content_layers == pytest.approx({"relu2_2": 3 * 8 / 9, "relu4_2": 3 * 1 / 9})
    assert Options(style_layers="relu1_1,relu5_1").resolve().style_layers == {"relu1_1": 0.5, "relu5_1": 0.5}
    with pytest.raises(NstError, match="normalize_weights must be True or False"):
        Options(normalize_weights="yes").resolve()


def test_cli_style_folder_and_normalize_weights(tmp_path, small_images, capsys):
    content, style = small_images
    folder = tmp_path / "styles"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.open(style).convert("RGB").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out.png"
    base = [str(content), str(folder), "-o", str(out), "--weights", "random", "--device", "cpu", "--size", "32",
            "--steps", "1", "-q"]
    assert cli.main(base + ["--style-blend", "1,3", "--normalize-weights"]) == 0 and out.exists()
    assert cli.main(base + ["--style-blend", "1,2,3"]) == 1
    assert "3 style blend weights given for 2 style images" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([str(content), str(empty), "-o", str(tmp_path / "x.png"), "--weights", "random"]) == 1
    assert f"style folder {empty} holds no images" in capsys.readouterr().err


@pytest.mark.parametrize("padding", ["replicate", "reflect"])
def test_padding_pads_the_first_convolution_only(padding):
    import torch.nn.functional as F

    from nst_fast.nets import vgg

    state = vgg.random_state(0)
    image = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    net = vgg.VGGFeatures(["conv1_1", "relu1_2"], state, padding=padding)
    plain = vgg.VGGFeatures(["conv1_1", "relu1_2"], state)
    got, zeros = net(image), plain(image)
    x = net.preprocess(image)
    expected = F.conv2d(F.pad(x, (1, 1, 1, 1), mode=padding), net.net[0].weight, net.net[0].bias)
    torch.testing.assert_close(got["conv1_1"], expected, rtol=1e-5, atol=1e-5)
    # The same convolution inside the image; only the border differs.
    torch.testing.assert_close(got["conv1_1"][..., 1:-1, 1:-1], zeros["conv1_1"][..., 1:-1, 1:-1])
    assert (got["conv1_1"][..., 0, :] - zeros["conv1_1"][..., 0, :]).abs().max() > 1e-2
    assert [type(m) for m in net.net] == [type(m) for m in plain.net]


@pytest.mark.slow
def test_padding_runs_end_to_end_and_is_part_of_a_checkpoint(small_images, tmp_path, capsys):
    content, style = small_images
    replicate = StyleTransfer(weights="random", device="cpu", padding="replicate")
    ckpt = tmp_path / "run.ckpt"
    out = replicate.stylize_tensor(content, style, size=32, steps=4, checkpoint=ckpt)
    zeros = StyleTransfer(weights="random", device="cpu").stylize_tensor(content, style, size=32, steps=4)
    assert torch.isfinite(out).all() and (out - zeros).abs().max() > 1e-3
    with pytest.raises(NstError, match="from another run"):
        StyleTransfer(weights="random", device="cpu").stylize_tensor(content, style, size=32, steps=6, resume=ckpt)
    path = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(path), "--weights", "random", "--device", "cpu",
                     "--size", "32", "--steps", "2", "-q", "--padding", "reflect"])
    assert code == 0, capsys.readouterr().err
    settings = json.loads(Image.open(path).text["Comment"].split(": ", 1)[1])
    assert settings["padding"] == "reflect"


def test_padding_mistakes():
    with pytest.raises(NstError, match="padding must be one of"):
        StyleTransfer(weights="random", device="cpu", padding="circular")
    with pytest.raises(NstError, match="first convolution does not pad"):
        StyleTransfer(weights="random", device="cpu", network="nin", padding="replicate")


def test_the_input_normalisation_keeps_its_values_and_writes_the_layouts_its_users_take():
    from nst_fast.nets import vgg

    net = vgg.VGGFeatures(["relu1_1"], vgg.random_state(0))
    image = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    got, want = net.preprocess(image), (image - net.mean) / net.std
    assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
    grad = torch.rand(2, 3, 9, 7).contiguous(memory_format=torch.channels_last)  # as conv1_1's backward gives it
    (got_grad,) = torch.autograd.grad(got, image, grad)
    (want_grad,) = torch.autograd.grad(want, image, grad)
    assert torch.equal(got_grad, want_grad) and got_grad.is_contiguous()
