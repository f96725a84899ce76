"""Batches: a folder of contents, one output each, kept outputs, Ctrl-C and resume."""
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nst_fast.app import batch, cli
from nst_fast.errors import NstError

SMALL = ["--weights", "random", "--device", "cpu", "--size", "32", "-q"]


@pytest.fixture
def folder(tmp_path, small_images):
    """contents/ with two photos of different shapes and a file that is not an image."""
    content, style = small_images
    contents = tmp_path / "contents"
    contents.mkdir()
    Image.open(content).save(contents / "wide.png")
    Image.open(content).transpose(Image.Transpose.ROTATE_90).save(contents / "tall.jpg")
    (contents / "notes.txt").write_text("not an image")
    return contents, style


def _files(path):
    return sorted(os.listdir(path))


def test_a_folder_gives_one_png_per_content(tmp_path, folder, capsys):
    contents, style = folder
    out = tmp_path / "out"
    code = cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert _files(out) == ["tall.png", "wide.png"]  # no checkpoints or temporary files left
    assert Image.open(out / "wide.png").size == (32, 24)
    assert Image.open(out / "tall.png").size == (24, 32)
    assert "[1/2]" in err and "[2/2]" in err and "wrote 2 image(s)" in err
    headers = [line for line in err.splitlines() if "] " in line and " -> " in line]
    assert "left)" not in headers[0] and re.search(r"\(about \d+s left\)$", headers[1]), headers


@pytest.mark.slow
def test_outputs_that_exist_are_kept_unless_overwrite(tmp_path, folder, capsys):
    contents, style = folder
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (5, 5), "red").save(out / "wide.png")
    code = cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "keeping 1 output(s)" in err and "[1/1]" in err
    assert Image.open(out / "wide.png").size == (5, 5)
    assert Image.open(out / "tall.png").size == (24, 32)
    code = cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "2", "--overwrite"])
    assert code == 0
    assert Image.open(out / "wide.png").size == (32, 24)


def test_an_unreadable_content_is_reported_and_the_rest_still_run(tmp_path, folder, capsys):
    contents, style = folder
    (contents / "broken.png").write_bytes(b"\x89PNG but not really")
    out = tmp_path / "out"
    code = cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "1 of 3 image(s) failed" in err and "Traceback" not in err
    assert _files(out) == ["tall.png", "wide.png"]


@pytest.mark.parametrize("extra, expected", [
    (["-o", "{tmp}/single.png"], "-o names a folder"),
    (["-o", "{contents}"], "the output folder is the content folder"),
    (["-o", "{tmp}/missing/out"], "output directory does not exist"),
    (["-o", "{tmp}/out", "--resume", "{tmp}/x.ckpt"], "--resume names one file"),
    (["-o", "{tmp}/out", "--history", "{tmp}/h.json"], "--history names one file"),
])
def test_batch_mistakes_are_one_line_errors_before_any_work(tmp_path, folder, capsys, extra, expected):
    contents, style = folder
    extra = [e.format(tmp=tmp_path, contents=contents) for e in extra]
    code = cli.main([str(contents), str(style), *extra, *SMALL, "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fifo, extra, expected", [
    ("out/wide.png", ["--overwrite"], "-o {tmp}/out/wide.png is a FIFO, not a regular file"),
    ("out/wide.ckpt", [], "the checkpoint of a batch image {tmp}/out/wide.ckpt is a FIFO, not a regular file"),
    ("out/wide.step0001.png", ["--save-every", "1"], "the --save-every snapshot {tmp}/out/wide.step0001.png is a FIFO"),
    ("out", [], "-o names a folder"),
])
def test_a_fifo_where_a_batch_writes_is_refused_before_any_work(tmp_path, folder, capsys, fifo, extra, expected):
    contents, style = folder
    if fifo != "out":
        (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / fifo)
    code = cli.main([str(contents), str(style), "-o", str(tmp_path / "out"), "--weights", "/nonexistent/none.pth",
                     "--device", "cpu", "--size", "32", "--steps", "1", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and expected.format(tmp=tmp_path) in err[0], err
    assert stat.S_ISFIFO(os.stat(tmp_path / fifo).st_mode)


def test_plan_refuses_two_contents_with_one_output_and_empty_folders(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(NstError, match="holds no images"):
        batch.plan(tmp_path / "c", tmp_path / "out")
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "c" / "a.jpg")
    with pytest.raises(NstError, match="would both be written to"):
        batch.plan(tmp_path / "c", tmp_path / "out")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])  # neither replaced nor taken for a done output
def test_an_output_that_is_a_style_image_is_refused(tmp_path, folder, capsys, overwrite):
    contents, _ = folder
    out = tmp_path / "out"
    out.mkdir()
    Image.open(contents / "wide.png").save(out / "wide.png")  # the style is where an output would go
    before = (out / "wide.png").read_bytes()
    code = cli.main([str(contents), str(out / "wide.png"), "-o", str(out), *SMALL, "--steps", "1", *overwrite])
    assert code == 1 and "is one of the input images" in capsys.readouterr().err
    assert (out / "wide.png").read_bytes() == before and _files(out) == ["wide.png"]


def test_the_style_folder_is_no_output_folder(tmp_path, folder, capsys):
    contents, style = folder
    styles = tmp_path / "styles"
    styles.mkdir()
    Image.open(style).save(styles / "brush.png")
    code = cli.main([str(contents), str(styles), "-o", str(styles), *SMALL, "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 1 and f"the output folder is the style folder {styles}; name another one" in err
    assert _files(styles) == ["brush.png"]  # the outputs would be styles of the next run


@pytest.mark.slow
def test_ctrl_c_stops_the_batch_and_the_same_command_continues_it(tmp_path, folder, interrupt):
    contents, style = folder
    os.remove(contents / "tall.jpg")
    out = tmp_path / "out"
    argv = [str(contents), str(style), "-o", str(out), *SMALL[:-1], "--size", "48"]
    code, rest = interrupt(argv + ["--steps", "100000"], "/100000")
    assert code == 130, rest
    assert "run the same command to continue" in rest and "Traceback" not in rest
    assert _files(out) == ["wide.ckpt"]  # the checkpoint, and no half-done output a rerun would keep
    stopped = int(re.search(r"interrupted at step (\d+)", rest).group(1))

    done = subprocess.run([sys.executable, "-m", "nst_fast.app.cli", *argv, "--steps", str(stopped + 2)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"continuing from {out / 'wide.ckpt'}" in done.stderr
    assert f"{stopped + 2}/{stopped + 2}" in done.stderr and f"] 1/{stopped + 2}" not in done.stderr
    assert _files(out) == ["wide.png"]


@pytest.mark.slow
def test_a_checkpoint_of_other_options_is_not_resumed(tmp_path, folder, capsys):
    contents, style = folder
    os.remove(contents / "tall.jpg")
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main([str(contents / "wide.png"), str(style), "-o", str(out / "other.png"), *SMALL, "--steps", "2",
                     "--content-weight", "3", "--checkpoint", str(out / "wide.ckpt")])
    assert code == 0 and (out / "wide.ckpt").exists()
    os.remove(out / "other.png")
    capsys.readouterr()
    code = cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "is from another run: its content_weight was 3.0, here 1.0; starting this image over" in err
    assert _files(out) == ["wide.png"]


def test_a_checkpoint_past_the_steps_asked_for_gives_its_image(tmp_path, folder, capsys):
    contents, style = folder
    os.remove(contents / "tall.jpg")
    out = tmp_path / "out"
    out.mkdir()
    code = cli.main([str(contents / "wide.png"), str(style), "-o", str(tmp_path / "alone.png"), *SMALL,
                     "--steps", "3", "--checkpoint", str(out / "wide.ckpt")])
    assert code == 0 and (out / "wide.ckpt").exists()
    capsys.readouterr()
    code = cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "is already at step 3 (>= steps 2)" in err and "Traceback" not in err
    assert _files(out) == ["wide.png"]
    assert Image.open(out / "wide.png").tobytes() == Image.open(tmp_path / "alone.png").tobytes()


def test_a_cut_out_content_keeps_its_transparency(tmp_path, folder, capsys):
    contents, style = folder
    photo = Image.open(contents / "wide.png").convert("RGBA")
    photo.putalpha(0)  # invisible everywhere
    photo.save(contents / "wide.png")
    out = tmp_path / "out"
    assert cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "1"]) == 0, capsys.readouterr().err
    with Image.open(out / "wide.png") as wide, Image.open(out / "tall.png") as tall:
        assert wide.mode == "RGBA" and wide.getchannel("A").getextrema() == (0, 0)
        assert tall.mode == "RGB"


def test_video_frames_start_from_the_result_before(tmp_path, folder, capsys):
    from nst_fast.app import video
    from nst_fast.imaging import images

    contents, style = folder
    os.remove(contents / "tall.jpg")
    Image.open(contents / "wide.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(contents / "xframe.png")
    out = tmp_path / "out"
    out.mkdir()
    painted = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(painted).save(out / "wide.png")  # the first frame's result, kept
    # Zero steps: the second output is the image its run started from.
    code = cli.main([str(contents), str(style), "-o", str(out), *SMALL, "--steps", "0", "--init", "previous"])
    assert code == 0, capsys.readouterr().err
    frames = [images.resize_long_side(images.to_tensor(contents / n), 32) for n in ("wide.png", "xframe.png")]
    expected = video.carry_over(frames[0], images.to_tensor(out / "wide.png"), frames[1])
    got = images.to_tensor(out / "xframe.png")
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6
    assert (got - frames[1]).abs().mean() > 0.1  # not its own content


def test_init_previous_needs_a_folder(tmp_path, small_images, capsys):
    content, style = small_images
    code = cli.main([str(content), str(style), "-o", str(tmp_path / "x.png"), *SMALL, "--init", "previous"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--init previous needs a folder of contents" in err[0]


@pytest.mark.slow
def test_each_style_gives_one_output_per_content_and_style(tmp_path, folder, capsys):
    contents, style = folder
    styles = tmp_path / "styles"
    styles.mkdir()
    Image.open(style).save(styles / "calm.png")
    Image.open(style).convert("L").transpose(Image.Transpose.ROTATE_90).save(styles / "storm.png")
    out = tmp_path / "out"
    code = cli.main([str(contents / "wide.png"), str(styles), "--each-style", "-o", str(out), *SMALL,
                     "--steps", "3"])
    assert code == 0, capsys.readouterr().err
    assert _files(out) == ["wide_calm.png", "wide_storm.png"]
    calm, storm = (np.asarray(Image.open(out / n), dtype=float) for n in _files(out))
    assert np.abs(calm - storm).mean() > 1  # each painted in its own style, not the blend twice
    code = cli.main([str(contents), str(styles), "--each-style", "-o", str(out), *SMALL, "--steps", "1"])
    assert code == 0, capsys.readouterr().err
    assert _files(out) == ["tall_calm.png", "tall_storm.png", "wide_calm.png", "wide_storm.png"]
    code = cli.main([str(contents), str(styles), "--each-style", "--style-blend", "1,2", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "takes no --style-blend" in err
    assert cli.main(["--each-style", "--style-blend", "1,2"]) == 2  # no CONTENT: a usage error first
    assert "give a CONTENT and at least one STYLE" in capsys.readouterr().err


def test_a_style_kept_in_the_content_folder_is_not_a_content(tmp_path, folder, capsys):
    contents, style = folder
    Image.open(style).save(contents / "painting.png")
    out = tmp_path / "out"
    code = cli.main([str(contents), str(contents / "painting.png"), "-o", str(out), *SMALL, "--steps", "1"])
    assert code == 0, capsys.readouterr().err
    assert _files(out) == ["tall.png", "wide.png"]
