"""The nst-fast command: output files, one-line errors, exit codes, Ctrl-C."""
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from nst_fast.app import cli
from nst_fast.runtime.progress import Progress

SMALL = ["--weights", "random", "--device", "cpu", "--size", "32"]


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "nst_fast.app.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_writes_a_png_and_exits_zero(tmp_path, small_images):
    content, style = small_images
    out = tmp_path / "out.png"
    proc = run_cli(str(content), str(style), "-o", str(out), *SMALL, "--steps", "3")
    assert proc.returncode == 0, proc.stderr
    with Image.open(out) as img:
        img.verify()
    assert Image.open(out).size == (32, 24)
    assert "RANDOM" in proc.stderr and "3/3" in proc.stderr  # the warning and the progress bar
    assert os.listdir(tmp_path) == ["out.png"]


def _one_line_error(capsys, argv, expected):
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("nst-fast: error:") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err)
    return code


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d, c, s: [str(d / "missing.png"), str(s)], "no such file"),
        (lambda d, c, s: [str(c), str(d / "text.png")], "not an image file"),
        (lambda d, c, s: [str(d / "cut.jpg"), str(s)], "cannot read image"),
        (lambda d, c, s: [str(d / "tiny.png"), str(s)], "need at least 16 pixels"),
        (lambda d, c, s: [str(c), str(s), "--steps", "-5"], "steps must be 0 or more"),
        (lambda d, c, s: [str(c), str(s), "--style-layers", "relu1_1,relu9_1"], "unknown style layer"),
        (lambda d, c, s: [str(c), str(s), "--style-layers", "relu1_1:0.5,relu1_1"],
         "style layer relu1_1 is given more than once"),
        (lambda d, c, s: [str(c), str(s), "--content-layers", "relu4_2:"], "content layer relu4_2 has no weight"),
        (lambda d, c, s: [str(c), str(s), "--style-weight", "nan"], "finite number"),
        (lambda d, c, s: [str(c), str(s), "--weights", str(d / "none.pth")], "weights file not found"),
    ],
)
def test_bad_input_one_line_error_no_output(tmp_path, small_images, capsys, make, expected):
    content, style = small_images
    (tmp_path / "text.png").write_text("not an image")
    data = open(content, "rb").read()
    Image.open(content).save(tmp_path / "cut.jpg", quality=95)
    cut = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    Image.new("RGB", (40, 6), (200, 10, 10)).save(tmp_path / "tiny.png")
    assert data
    out = tmp_path / "out.png"
    argv = ["-o", str(out), *SMALL[:4], "--size", "64", "--steps", "2", "-q"] + make(tmp_path, content, style)
    _one_line_error(capsys, argv, expected)
    assert not out.exists()


def test_bad_output_path(tmp_path, small_images, capsys):
    content, style = small_images
    _one_line_error(capsys, [str(content), str(style), "-o", str(tmp_path / "no" / "dir.png"), *SMALL],
                    "output directory does not exist")
    _one_line_error(capsys, [str(content), str(style), "-o", str(tmp_path / "out.txt"), *SMALL], "output must end")


def test_output_that_is_an_input_is_refused(tmp_path, small_images, capsys):
    content, style = small_images
    photo = tmp_path / "photo.png"
    photo.write_bytes(content.read_bytes())
    before = photo.read_bytes()
    for out in (photo, tmp_path / "." / "photo.png"):
        _one_line_error(capsys, [str(photo), str(style), "-o", str(out), *SMALL, "--steps", "1"],
                        "is one of the input images")
    _one_line_error(capsys, [str(content), str(style), "-o", str(photo), *SMALL, "--steps", "1",
                             "--init", str(photo)], "is one of the input images")
    assert photo.read_bytes() == before


def test_input_mistakes_show_before_the_weights_load(tmp_path, small_images, capsys):
    content, style = small_images
    no_weights = ["--weights", str(tmp_path / "none.pth"), "--device", "cpu"]
    out = str(tmp_path / "out.png")
    _one_line_error(capsys, [str(tmp_path / "missing.png"), str(style), "-o", out, *no_weights], "no such file")
    _one_line_error(capsys, [str(tmp_path / "missing.png"), str(style), "-o", out, *no_weights, "--steps", "-1"],
                    "steps must be 0 or more")  # the options first, then the images
    _one_line_error(capsys, [str(content), str(style), "-o", out, *no_weights, "--size", "8"], "at least 16")
    _one_line_error(capsys, [str(content), str(style), "-o", out, *no_weights, "--init", "nosie"],
                    "init must be one of noise")


def test_an_unknown_backend_is_one_line_before_the_weights_load(tmp_path, small_images, capsys, monkeypatch):
    content, style = small_images
    monkeypatch.setenv("NST_FAST_BACKEND", "bogus")
    out = tmp_path / "out.png"
    _one_line_error(capsys, [str(content), str(style), "-o", str(out), *NO_WEIGHTS],
                    "NST_FAST_BACKEND must be one of auto, extension, reference, got 'bogus'")
    assert not out.exists()


def test_a_full_disk_is_a_one_line_error(tmp_path, small_images, capsys, monkeypatch):
    import errno

    from nst_fast.imaging import images

    def full(image, path, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(images, "save_atomic", full)
    content, style = small_images
    out = tmp_path / "out.png"
    _one_line_error(capsys, [str(content), str(style), "-o", str(out), *SMALL, "--steps", "1"],
                    f"No space left on device: {out}")
    assert not out.exists()


def _checkpoints_to_a_full_disk(monkeypatch):
    """Checkpoints written to /dev/full, which fails every write with ENOSPC as a full disk does."""
    from nst_fast.optimize import checkpoint

    write = checkpoint.write

    def to_full_disk(f, data):
        with open("/dev/full", "wb", buffering=0) as full:
            write(full, data)

    monkeypatch.setattr(checkpoint, "write", to_full_disk)


@pytest.mark.slow
def test_a_checkpoint_on_a_full_disk_keeps_the_finished_image(tmp_path, small_images, capsys, monkeypatch):
    content, style = small_images
    argv = [str(content), str(style), *SMALL, "--steps", "3", "--seed", "1"]
    assert cli.main([*argv, "-o", str(tmp_path / "clean.png")]) == 0
    _checkpoints_to_a_full_disk(monkeypatch)
    out, ckpt = tmp_path / "out.png", tmp_path / "run.ckpt"
    _one_line_error(capsys, [*argv, "-o", str(out), "--checkpoint", str(ckpt)],
                    f"could not write the checkpoint {ckpt}: No space left on device")
    # The last checkpoint failed after the last step: the image saved is the whole result.
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "clean.png")))
    assert sorted(os.listdir(tmp_path)) == ["clean.png", "out.png"]  # no partial checkpoint


def test_ctrl_c_with_a_full_disk_still_exits_130_with_the_image(tmp_path, small_images, capsys, monkeypatch):
    _checkpoints_to_a_full_disk(monkeypatch)
    report = Progress.__call__

    def ctrl_c_at_step_2(self, info):
        report(self, info)
        if info.step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Progress, "__call__", ctrl_c_at_step_2)
    content, style = small_images
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), *SMALL, "--steps", "10"])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "saved the image so far (step 2)" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("nst-fast: error: interrupted at step 2; could not write the checkpoint "
                                            f"{tmp_path / 'out.ckpt'}: No space left on device")
    assert "--resume" not in err and os.listdir(tmp_path) == ["out.png"]


@pytest.mark.slow
def test_running_out_of_memory_saves_the_image_so_far(tmp_path, small_images, capsys, monkeypatch):
    from conftest import CPU_OUT_OF_MEMORY, out_of_memory_at_call

    content, style = small_images
    argv = [str(content), str(style), *SMALL, "--seed", "1"]
    assert cli.main([*argv, "--steps", "2", "-o", str(tmp_path / "two.png")]) == 0
    capsys.readouterr()
    out_of_memory_at_call(monkeypatch, 3, CPU_OUT_OF_MEMORY)
    out = tmp_path / "out.png"
    code = cli.main([*argv, "--steps", "10", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "saved the image so far (step 2)" in err and f"continue with --resume {tmp_path / 'out.ckpt'}" in err
    assert err.strip().splitlines()[-1].startswith("nst-fast: error: ran out of CPU memory at step 3; ")
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "two.png")))


def test_running_out_of_memory_before_the_first_step_is_one_line(tmp_path, small_images, capsys, monkeypatch):
    from conftest import CPU_OUT_OF_MEMORY

    from nst_fast.optimize import transfer

    def no_memory(*args, **kwargs):
        raise CPU_OUT_OF_MEMORY

    monkeypatch.setattr(transfer.StyleTransfer, "run", no_memory)
    content, style = small_images
    out = tmp_path / "out.png"
    _one_line_error(capsys, [str(content), str(style), *SMALL, "-o", str(out)],
                    "out of CPU memory; try a smaller --size, --fit-memory or --low-memory")
    assert not out.exists()


@pytest.mark.slow
def test_a_cut_out_photo_stays_cut_out(tmp_path, small_images, capsys):
    content, style = small_images
    photo = Image.open(content).convert("RGBA")
    alpha = np.full((48, 64), 255, np.uint8)
    alpha[:, :32] = 0
    photo.putalpha(Image.fromarray(alpha))
    photo.save(tmp_path / "cut.png")
    for name, mode in (("out.png", "RGBA"), ("out.jpg", "RGB")):
        code = cli.main([str(tmp_path / "cut.png"), str(style), "-o", str(tmp_path / name), *SMALL, "--steps", "2"])
        assert code == 0, capsys.readouterr().err
        with Image.open(tmp_path / name) as out:
            assert out.mode == mode and out.size == (32, 24)
    with Image.open(tmp_path / "out.png") as out:
        a = np.asarray(out.getchannel("A"))
    assert (a[:, :15] == 0).all() and (a[:, 17:] == 255).all()


def test_init_from_an_image_file(tmp_path, small_images):
    content, style = small_images
    out = tmp_path / "out.png"
    assert cli.main([str(content), str(style), "-o", str(out), *SMALL, "--steps", "0", "--init", str(style),
                     "-q"]) == 0
    def pixels(image):
        return np.asarray(image.convert("RGB").resize((32, 24), Image.BICUBIC), dtype=np.float32)

    got = np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)
    to_style, to_content = (np.abs(got - pixels(Image.open(p))).mean() for p in (style, content))
    assert to_style < 0.5 * to_content, (to_style, to_content)


@pytest.mark.slow
def test_outputs_carry_their_settings_but_no_input_paths(tmp_path, small_images):
    content, style = small_images
    for name, extra in (("out.png", []), ("out16.png", ["--bits", "16"]), ("out.jpg", []), ("out.tif", []),
                        ("out16.tif", ["--bits", "16"]), ("out.webp", [])):
        out = tmp_path / name
        assert cli.main([str(content), str(style), "-o", str(out), *SMALL, "--steps", "2", "--init", str(style),
                         "--style-weight", "123", "-q", *extra]) == 0
        img = Image.open(out)
        info = img.info
        text = info.get("Comment") or (info["comment"].decode() if "comment" in info else img.getexif()[270])
        settings = json.loads(text.split("nst-fast settings: ", 1)[1].splitlines()[0])
        assert settings["steps"] == 2 and settings["style_weight"] == 123 and settings["init"] == "style.png"
        assert settings["weights"] == "random" and settings["network"] == "vgg19"
        assert str(tmp_path) not in text and str(content.parent) not in text
        assert "nst-fast" in (info.get("Software") or text)


def test_the_command_starts_without_importing_torch():
    # --help and an early Ctrl-C must not wait for torch; the API names still resolve.
    code = ("import sys, nst_fast.app.cli, nst_fast; assert 'torch' not in sys.modules; "
            "import nst_fast.optimize.transfer; assert callable(nst_fast.stylize) and nst_fast.stylize.__name__ == 'stylize'; "
            "assert nst_fast.StyleTransfer is nst_fast.optimize.transfer.StyleTransfer")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_version(capsys):
    from nst_fast import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"nst-fast {__version__}"


def test_missing_arguments(capsys):
    assert _one_line_error(capsys, [], "CONTENT") == 2


def test_offline_imagenet_weights_say_what_to_do(tmp_path, small_images, capsys, monkeypatch):
    from nst_fast.errors import WeightsUnavailable
    from nst_fast.nets import vgg

    def offline(network):
        raise WeightsUnavailable("cannot download torchvision's VGG-19 weights (URLError). Pass --weights PATH "
                                 "(or set NST_FAST_WEIGHTS) to a VGG-19 state dict, or --weights random")

    monkeypatch.setattr(vgg, "_imagenet_state", offline)
    monkeypatch.delenv("NST_FAST_WEIGHTS", raising=False)
    content, style = small_images
    _one_line_error(capsys, [str(content), str(style), "-o", str(tmp_path / "o.png"), "--device", "cpu"],
                    "--weights PATH")
    # The demo falls back to random weights, loudly.
    code = cli.main(["--demo", "-o", str(tmp_path / "demo.png"), "--device", "cpu", "--size", "32", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 0 and "falls back to RANDOM weights" in err
    assert (tmp_path / "demo.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum, expected", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_image_so_far(tmp_path, small_images, interrupt, signum, expected):
    content, style = small_images
    out = tmp_path / "out.png"
    code, rest = interrupt([str(content), str(style), "-o", str(out), *SMALL, "--size", "48", "--steps", "100000"],
                           "/100000", signum)
    assert code == expected, rest
    assert "saved the image so far" in rest and "Traceback" not in rest
    assert Image.open(out).size == (48, 36)
    assert f"--resume {tmp_path / 'out.ckpt'}" in rest and (tmp_path / "out.ckpt").exists()


def test_the_command_handles_ctrl_c_and_sigterm_but_leaves_an_ignored_one_ignored(monkeypatch):
    stops = (signal.SIGINT, signal.SIGTERM)
    during = []
    monkeypatch.setattr(cli, "run", lambda args: during.append([signal.getsignal(s) for s in stops]) or 0)
    before = [signal.getsignal(s) for s in stops]
    assert cli.main(["--demo"]) == 0
    assert during.pop() == [cli._on_stop, cli._on_stop] and [signal.getsignal(s) for s in stops] == before
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job
    try:
        assert cli.main(["--demo"]) == 0
        assert during.pop() == [signal.SIG_IGN, cli._on_stop] and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before[0])


# Imported at the start of the command's Python: every checkpoint and image it writes
# begins with a Ctrl-C of its own, as when the user presses it again while the first
# one's work is saved.
CTRL_C_DURING_SAVES = """
import os
import signal

from nst_fast.optimize import checkpoint
from nst_fast.imaging import images


def _ctrl_c_first(save):
    def saving(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return save(*args, **kwargs)
    return saving


checkpoint.write = _ctrl_c_first(checkpoint.write)
images.save_atomic = _ctrl_c_first(images.save_atomic)
"""


@pytest.mark.slow
def test_ctrl_c_again_while_the_work_is_saved_cuts_nothing_short(tmp_path, small_images, interrupt, monkeypatch,
                                                                  capsys):
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(CTRL_C_DURING_SAVES)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(patches), os.environ.get("PYTHONPATH")])))
    content, style = small_images
    out, ckpt = tmp_path / "out.png", tmp_path / "out.ckpt"
    argv = [str(content), str(style), "-o", str(out), *SMALL]
    code, rest = interrupt([*argv, "--steps", "100000"], "/100000")
    assert code == 130, rest
    assert "Traceback" not in rest
    assert f"continue with --resume {ckpt}" in rest and Image.open(out).size == (32, 24)
    step = int(re.search(r"saved the image so far \(step (\d+)\)", rest).group(1))
    monkeypatch.delenv("PYTHONPATH")
    assert cli.main([*argv, "-q", "--steps", str(step + 1), "--resume", str(ckpt)]) == 0, capsys.readouterr().err


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def _steps(n):
    from nst_fast import StepInfo

    losses = {"total": torch.tensor(2.0), "content": torch.tensor(1.0), "style": torch.tensor(1.0)}
    return [StepInfo(step=i, steps=n, size=(24, 32), losses=losses, image=None) for i in range(1, n + 1)]


def test_progress_in_a_log_is_one_line_per_report():
    stream = _Stream(tty=False)
    progress = Progress(True, every=1, stream=stream)
    for info in _steps(200):
        progress(info)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert [line.split()[1] for line in lines] == ["1/200"] + [f"{i}/200" for i in range(10, 201, 10)]
    assert "left" in lines[0] and "left" not in lines[-1]


def test_progress_on_a_terminal_redraws_one_line():
    stream = _Stream(tty=True)
    progress = Progress(True, every=5, stream=stream)
    for info in _steps(12):
        progress(info)
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1  # steps 5, 10, 12


def test_progress_estimates_the_time_left_by_work_not_steps():
    stream = _Stream(tty=False)
    progress = Progress(True, every=1, stream=stream)
    progress.start -= 10.0  # 10 s in
    info = _steps(4)[0]
    info.done = 0.2  # the first of 4 steps, but the later ones are larger
    progress(info)
    line = stream.getvalue()
    assert line.startswith("[####....") and "1/4" in line and "10s, 40s left" in line, line


def test_network_vgg16(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    code = cli.main([str(content), str(style), "-o", str(out), *SMALL, "--steps", "2", "--network", "vgg16"])
    err = capsys.readouterr().err
    assert code == 0 and "RANDOM VGG-16 weights" in err
    assert Image.open(out).size == (32, 24)
    code = cli.main([str(content), str(style), "-o", str(tmp_path / "bad.png"), *SMALL, "--network", "vgg16",
                     "--style-layers", "relu5_4"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 1 and len(errors) == 1 and "VGG-16 layers" in errors[0]
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.slow
def test_sixteen_bit_output_and_snapshots(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    args = [str(content), str(style), "-o", str(out), "--weights", "random", "--device", "cpu", "--size", "32",
            "--steps", "2", "--save-every", "1", "--bits", "16", "-q"]
    assert cli.main(args) == 0
    for path in (out, tmp_path / "out.step0001.png"):
        assert open(path, "rb").read()[24:26] == b"\x10\x02"  # IHDR: bit depth 16, truecolour
    jpg = tmp_path / "out.jpg"
    assert cli.main(args[:3] + [str(jpg)] + args[4:]) == 1
    assert "16-bit output is PNG or TIFF only" in capsys.readouterr().err and not jpg.exists()
    tif = tmp_path / "out.tif"
    assert cli.main(args[:3] + [str(tif)] + args[4:]) == 0
    assert open(tif, "rb").read()[:4] == b"II*\0"


@pytest.mark.slow
def test_snapshots_of_an_earlier_run_are_kept_and_named(tmp_path, small_images, capsys):
    content, style = small_images
    out = tmp_path / "out.png"
    args = [str(content), str(style), "-o", str(out), *SMALL, "--steps", "2", "--save-every", "1", "-q"]
    Image.new("RGB", (4, 4)).save(tmp_path / "out.step0007.png")
    assert cli.main(args) == 0
    assert "note: 1 snapshot(s) of an earlier run are there (out.stepNNNN.png)" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["out.png", "out.step0001.png", "out.step0002.png", "out.step0007.png"]
    assert cli.main(args) == 0 and "note: 3 snapshot(s)" in capsys.readouterr().err


NO_WEIGHTS = ["--weights", "/nonexistent/none.pth", "--device", "cpu", "--size", "32", "--steps", "1"]


@pytest.mark.parametrize("extra, expected", [
    (["--history", "{c}"], "--history {c} is one of the input images (CONTENT)"),
    (["--checkpoint", "{c}"], "--checkpoint {c} is one of the input images (CONTENT)"),
    (["--plot", "{s}"], "--plot {s} is one of the input images (STYLE)"),
    (["--plot", "{d}/./s.png"], "is one of the input images (STYLE)"),
    (["--checkpoint", "{d}/init.png", "--init", "{d}/init.png"], "is one of the input images (--init)"),
    (["--history", "{d}/out.png"], "-o and --history both name"),
    (["--checkpoint", "{d}/out.png"], "-o and --checkpoint both name"),
    (["--history", "{d}/out.ckpt"], "the default --checkpoint (where Ctrl-C saves) and --history both name"),
    (["--history", "{d}/h", "--plot", "{d}/sub/../h"], "--history and --plot both name"),
    (["--checkpoint", "{d}/k.ckpt", "--history", "{d}/k.ckpt"], "--checkpoint and --history both name"),
    (["--resume", "{d}/k.ckpt", "--history", "{d}/k.ckpt"], "is the checkpoint --resume reads"),
    (["--save-every", "1", "--init", "{d}/out.step0002.png"], "snapshots"),
])
def test_the_files_a_run_writes_differ_from_its_inputs_and_each_other(tmp_path, small_images, capsys, extra,
                                                                     expected):
    content, style = small_images
    for name in ("c.png", "s.png", "init.png", "out.step0002.png"):
        (tmp_path / name).write_bytes((content if name != "s.png" else style).read_bytes())
    (tmp_path / "k.ckpt").write_bytes(b"a checkpoint")
    (tmp_path / "sub").mkdir()
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    fill = dict(d=tmp_path, c=tmp_path / "c.png", s=tmp_path / "s.png")
    argv = [str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o", str(tmp_path / "out.png"), *NO_WEIGHTS]
    _one_line_error(capsys, argv + [e.format(**fill) for e in extra], expected.format(**fill))
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing written


@pytest.mark.slow
def test_a_run_may_resume_into_the_checkpoint_it_writes(tmp_path, small_images, capsys):
    content, style = small_images
    ckpt, out = tmp_path / "k.ckpt", tmp_path / "out.png"
    base = [str(content), str(style), "-o", str(out), *SMALL, "-q"]
    assert cli.main(base + ["--steps", "2", "--checkpoint", str(ckpt)]) == 0, capsys.readouterr().err
    assert cli.main(base + ["--steps", "3", "--checkpoint", str(ckpt), "--resume", str(ckpt)]) == 0, \
        capsys.readouterr().err
    os.replace(ckpt, tmp_path / "out.ckpt")  # where Ctrl-C saves one; the next run resumes from it
    assert cli.main(base + ["--steps", "4", "--resume", str(tmp_path / "out.ckpt")]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("extra, expected", [
    (["--checkpoint", "{d}/nodir/x.ckpt"], "--checkpoint directory does not exist: {d}/nodir"),
    (["--history", "{d}/nodir/h.json"], "--history directory does not exist: {d}/nodir"),
    (["--plot", "{d}/nodir/p.png"], "--plot directory does not exist: {d}/nodir"),
    (["-o", "{d}/folder.png"], "-o {d}/folder.png is a folder"),
    (["--history", "{d}/folder.png"], "--history {d}/folder.png is a folder"),
    (["--checkpoint", "{d}/locked/x.ckpt"], "cannot write into the --checkpoint directory {d}/locked"),
])
def test_the_folders_of_all_outputs_are_checked_before_the_run(tmp_path, small_images, capsys, monkeypatch, extra,
                                                              expected):
    content, style = small_images
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "locked").mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: "locked" not in str(path) and access(path, mode))
    argv = [str(content), str(style), "-o", str(tmp_path / "out.png"), *NO_WEIGHTS]
    _one_line_error(capsys, argv + [e.format(d=tmp_path) for e in extra], expected.format(d=tmp_path))
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("extra, fifo, option", [
    ([], "out.png", "-o"),
    ([], "out.ckpt", "the default --checkpoint (where Ctrl-C saves)"),
    (["--checkpoint", "{d}/run.ckpt"], "run.ckpt", "--checkpoint"),
    (["--history", "{d}/h.json"], "h.json", "--history"),
    (["--plot", "{d}/p.png"], "p.png", "--plot"),
    (["--save-every", "1"], "out.step0001.png", "the --save-every snapshot"),
])
def test_a_fifo_where_a_run_writes_is_refused_before_the_run(tmp_path, small_images, capsys, extra, fifo, option):
    content, style = small_images
    os.mkfifo(tmp_path / fifo)
    argv = [str(content), str(style), "-o", str(tmp_path / "out.png"), *NO_WEIGHTS, *extra]
    _one_line_error(capsys, [a.format(d=tmp_path) for a in argv],
                    f"{option} {tmp_path / fifo} is a FIFO, not a regular file; name another file")
    assert stat.S_ISFIFO(os.stat(tmp_path / fifo).st_mode)  # not replaced by a regular file
    assert os.listdir(tmp_path) == [fifo]


@pytest.mark.parametrize("option", ["--history", "--checkpoint"])
@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_a_device_is_no_file_a_run_may_replace(tmp_path, small_images, capsys, option, device):
    content, style = small_images
    argv = [str(content), str(style), "-o", str(tmp_path / "out.png"), *NO_WEIGHTS, option, device]
    _one_line_error(capsys, argv, f"{option} {device} is a character device, not a regular file")
    assert stat.S_ISCHR(os.stat(device).st_mode)


def test_a_failing_atomic_write_names_the_file_asked_for(tmp_path):
    from nst_fast.runtime.files import atomic_write

    for target, error in ((tmp_path / "nodir" / "x.ckpt", FileNotFoundError), (tmp_path, IsADirectoryError)):
        with pytest.raises(error) as raised:
            atomic_write(target, lambda f: f.write(b"data"))
        assert raised.value.filename == str(target) and ".nst_fast-" not in str(raised.value)
    assert os.listdir(tmp_path) == []  # no temporary file left behind

    def encoder_error(f):
        raise OSError("encoder error -2")  # as PIL's: no errno, and not about a file

    with pytest.raises(OSError, match="^encoder error -2$"):
        atomic_write(tmp_path / "x.png", encoder_error)


def test_atomic_write_leaves_a_fifo_alone(tmp_path):
    from nst_fast.runtime.files import atomic_write

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match=r"Not a regular file \(a FIFO\)") as raised:
        atomic_write(fifo, lambda f: f.write(b"data"))
    assert raised.value.filename == str(fifo)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe"]


@pytest.mark.parametrize("argv, expected", [
    (["{c}", "{s}", "--save-every", "-1"], "--save-every must be 0 (off) or a number of steps, got -1"),
    (["{c}", "{s}", "--checkpoint-every", "-1"], "checkpoint_every must be 0"),
    (["{c}", "{s}", "--report-every", "0"], "report_every must be"),
    (["{c}", "{s}", "-o", ""], "-o names no file"),
    (["{c}", "{s}", "--checkpoint", ""], "--checkpoint names no file"),
    (["--demo", "{c}", "{s}"], "--demo uses the bundled example images"),
    (["--list-layers", "--size", "-5"], "size must be at least 16 pixels, got -5"),
    (["--list-layers", "--size", "0"], "size must be at least 16 pixels, got 0"),
    (["{c}", "{s}", "--size", "48", "--scales", "32,64"], "--size 48 and --scales ending at 64 disagree"),
    (["{c}", "{s}", "--web-port", "8081"], "--web-port sets where the live view listens: give --web (or --browser)"),
    (["{c}", "{s}", "--web-host", "0.0.0.0"], "--web-host sets where the live view listens: give --web"),
])
def test_small_option_mistakes_are_refused(tmp_path, small_images, capsys, monkeypatch, argv, expected):
    content, style = small_images
    monkeypatch.chdir(tmp_path)
    argv = [a.format(c=content, s=style) for a in argv]
    out = [] if "-o" in argv or "--list-layers" in argv else ["-o", str(tmp_path / "out.png")]
    code = _one_line_error(capsys, argv + out + NO_WEIGHTS[:4] + ["--steps", "1"], expected)
    assert code == 1 and os.listdir(tmp_path) == []


def test_a_closed_stdout_is_not_a_traceback():
    """`nst-fast --list-layers | head -1`: the reader is gone before the listing is written."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    proc = subprocess.run([sys.executable, "-m", "nst_fast.app.cli", "--list-layers"], stdout=write_end,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_memory_limit_flag(tmp_path, small_images, capsys):
    content, style = small_images
    argv = [str(content), str(style), "-o", str(tmp_path / "out.png"), *SMALL, "--steps", "1", "-q"]
    assert cli.main(argv + ["--memory-limit", "1M"]) == 1
    assert "not enough memory on cpu for even a 16-pixel run" in capsys.readouterr().err
    assert cli.main(argv + ["--memory-limit", "4GiB"]) == 0
    with pytest.raises(SystemExit) as exc:
        cli.main(argv + ["--memory-limit", "lots"])
    assert exc.value.code == 2 and "not an amount of memory: 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, expected", [("--style-blend", "0.7,abc", "not a list like 0.7,0.3: '0.7,abc'"),
                                                   ("--scales", "256,5x2", "not a list like 256,512: '256,5x2'")])
def test_number_lists_that_are_not_say_so(small_images, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exc:
        cli.main([*map(str, small_images), flag, value])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and err.endswith(f"argument {flag}: {expected}") and "_csv" not in err


def test_every_option_with_a_flag_is_in_the_parser_with_its_help():
    import dataclasses

    from nst_fast.optimize.options import Options

    parser = cli.build_parser()
    text = parser.format_help()
    for field in dataclasses.fields(Options):
        flag = field.metadata.get("flag")
        if flag is None:  # Options.resolved, no option
            continue
        action = parser._option_string_actions[flag]
        assert action.dest == field.name and action.help == field.metadata["cli"]["help"], flag
        assert f"  {flag}" in text, flag


def test_a_flag_not_given_leaves_the_options_default():
    from nst_fast.optimize.options import FLAG_FIELDS, Options

    args = cli.build_parser().parse_args(["c.png", "s.png"])
    assert all(getattr(args, name) is None for name in FLAG_FIELDS)
    cli.fill_option_defaults(args)
    assert cli.option_values(args) == {name: getattr(Options(), name) for name in FLAG_FIELDS}
    args = cli.build_parser().parse_args(["c.png", "s.png", "--no-cuda-graph", "--fit-memory", "--memory-limit", "1K"])
    cli.fill_option_defaults(args)
    assert (args.cuda_graph, args.fit_memory, args.memory_limit, args.low_memory) == (False, True, 1024, False)


def test_a_new_option_field_gets_its_flag():
    import argparse
    import dataclasses

    from nst_fast.optimize.options import NUMBER, Options, option

    @dataclasses.dataclass(frozen=True)
    class More(Options):
        sharpness: float = option(0.5, NUMBER, "--sharpness", type=float, help="how sharp the edges are (0.5)")

    parser = argparse.ArgumentParser()
    cli.add_option_flags(parser, More)
    assert "--sharpness SHARPNESS" in parser.format_help() and "how sharp the edges are" in parser.format_help()
    for argv, sharpness in ((["--sharpness", "2", "--steps", "3"], 2.0), ([], 0.5)):
        args = parser.parse_args(argv)
        cli.fill_option_defaults(args, More)
        values = cli.option_values(args, More)
        assert values["sharpness"] == sharpness and values["steps"] == (3 if argv else 500)
        assert More(**values).resolve().sharpness == sharpness
