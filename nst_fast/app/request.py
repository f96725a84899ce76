"""What a command asks for, checked before any work: the images it reads, the files it
writes (each a regular file or none, in a folder that exists, none replacing an input
or another), and for a batch, the jobs. A mistake shows before any
image is decoded or weights load."""
import dataclasses
import glob
import importlib.util
import os
import re

from ..errors import NstError
from ..optimize.options import INITS
from ..runtime import history
from ..runtime.files import IMAGE_EXTENSIONS, images_in, not_a_file
from . import batch

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
EXIT_USAGE = 2
DEFAULT_CHECKPOINT = "the default --checkpoint (where Ctrl-C saves)"  # OUT.ckpt, without --checkpoint
BATCH_CHECKPOINT = "the checkpoint of a batch image"  # OUT/NAME.ckpt, where Ctrl-C saves
# --resume may name the checkpoint the run writes: it goes on in the same file.
RESUMABLE = ("--checkpoint", DEFAULT_CHECKPOINT)


class Refused(Exception):
    """A command that cannot run as given: its message, one line, and the exit code."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class Request:
    content: str  # an image, or a folder of them (a batch)
    styles: list  # image paths, folders expanded
    batch: bool  # a folder as CONTENT, or --each-style
    init_previous: bool  # --init previous: each frame starts from the result before it
    writes: list  # (option, path) of every file the run writes
    reads: list  # (option, path) of every input image
    jobs: list = dataclasses.field(default_factory=list)  # a batch's images to stylize
    kept: list = dataclasses.field(default_factory=list)  # a batch's outputs that exist and are kept
    earlier_snapshots: list = dataclasses.field(default_factory=list)  # of an earlier run, beside the output


def request(args) -> Request:
    """The Request of parsed arguments, after filling in their defaults (args is
    changed); Refused where it cannot run."""
    _check_flags(args)
    _fill_defaults(args)
    content, styles = _images(args)
    if args.each_style and (args.style_blend or args.style_masks):
        raise Refused("--each-style runs each style on its own: it takes no --style-blend or --style-masks")
    batch_mode = (not args.demo and os.path.isdir(content)) or args.each_style
    init_previous = _init_previous(args, batch_mode)
    if batch_mode:
        jobs, kept, writes = _batch_writes(args, content, styles)
    else:
        (jobs, kept), writes = ([], []), _single_writes(args)
    outputs = [path for option, path in writes if option == "-o"]
    earlier = [path for output in outputs for path in _earlier_snapshots(output)] if args.save_every else []
    _refuse(_check_files(writes + [("the --save-every snapshot", path) for path in earlier]))
    reads = _reads(args, content, styles)
    snapshots = os.path.splitext(args.output)[0] if args.save_every and not batch_mode else None
    _refuse(_check_distinct(writes, reads + ([("--resume", args.resume)] if args.resume else []), snapshots))
    return Request(content, styles, batch_mode, init_previous, writes, reads, jobs, kept,
                   earlier if snapshots else [])


def _refuse(problem) -> None:
    if problem:
        raise Refused(problem)


def _check_flags(args) -> None:
    if args.demo and (args.content or args.style):
        raise Refused("--demo uses the bundled example images; give it no CONTENT or STYLE")
    if not (args.web or args.browser):
        for option, given in (("--web-host", args.web_host), ("--web-port", args.web_port)):
            if given is not None:
                raise Refused(f"{option} sets where the live view listens: give --web (or --browser) too")
    for option, path in (("-o", args.output), ("--checkpoint", args.checkpoint), ("--history", args.history),
                         ("--plot", args.plot), ("--resume", args.resume)):
        if path == "":
            raise Refused(f"{option} names no file (an empty path)")
    if args.plot:  # known now, not after the run
        if importlib.util.find_spec("matplotlib") is None:
            raise Refused("--plot needs matplotlib: pip install matplotlib")
        try:
            history.plot_format(args.plot)
        except NstError as exc:
            raise Refused(f"--plot: {exc}") from None
    if args.save_every < 0:
        raise Refused(f"--save-every must be 0 (off) or a number of steps, got {args.save_every}")
    if args.size is not None and args.scales and args.size != args.scales[-1]:
        raise Refused(f"--size {args.size} and --scales ending at {args.scales[-1]} disagree; give one of them")


def _fill_defaults(args) -> None:
    """The defaults that depend on other flags (the demo's size and steps), then every
    option flag not given set to its field's default."""
    from .cli import fill_option_defaults

    if args.size is None:
        args.size = args.scales[-1] if args.scales else 256 if args.demo else 512
    if args.steps is None and args.demo:
        args.steps = 100
    fill_option_defaults(args)


def _images(args) -> tuple:
    """(content, style paths); a style folder stands for the images in it (neural-style-pt's)."""
    if args.demo:
        return os.path.join(EXAMPLES, "content.png"), [os.path.join(EXAMPLES, "style.png")]
    if not args.content or not args.style:
        raise Refused("give a CONTENT and at least one STYLE image (or --demo)", EXIT_USAGE)
    styles = []
    for style in args.style:
        if not os.path.isdir(style):
            styles.append(style)
            continue
        found = images_in(style)
        if not found:
            raise Refused(f"style folder {style} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        styles += found
    return args.content, styles


def _init_previous(args, batch_mode) -> bool:
    """Whether --init previous was given; the first frame then starts from its content."""
    if args.init != "previous":
        return False
    if not batch_mode:
        raise Refused("--init previous needs a folder of contents (the frames of a video) as CONTENT")
    args.init = "content"
    return True


def _batch_writes(args, content, styles) -> tuple:
    """(jobs, kept, writes) of a batch; args.output: its folder (default out)."""
    args.output = args.output or "out"
    for flag, given in (("--resume", args.resume), ("--checkpoint", args.checkpoint),
                        ("--history", args.history), ("--plot", args.plot)):
        if given:
            raise Refused(f"{flag} names one file; a batch (a folder as CONTENT, or --each-style) cannot take it")
    if os.path.splitext(args.output)[1].lower() in IMAGE_EXTENSIONS or (
            os.path.exists(args.output) and not os.path.isdir(args.output)):
        raise Refused(f"for a batch, -o names a folder for the outputs, got {args.output!r}")
    for style in args.style or []:  # its outputs would be styles of the next run
        if os.path.isdir(style) and os.path.isdir(args.output) and os.path.samefile(style, args.output):
            raise Refused(f"the output folder is the style folder {style}; name another one with -o")
    try:
        jobs, kept = batch.plan(content, args.output, args.overwrite, styles if args.each_style else None,
                                inputs=[*styles, *(args.style_masks or [])])
    except NstError as exc:
        raise Refused(str(exc)) from None
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise Refused(f"output directory does not exist: {out_dir}")
    writes = [*(("-o", job.output) for job in jobs), *((BATCH_CHECKPOINT, job.checkpoint) for job in jobs)]
    return jobs, kept, writes


def _single_writes(args) -> list:
    """The files one image's run writes; args.output: the image (default out.png)."""
    args.output = args.output or "out.png"
    out_ext = os.path.splitext(args.output)[1].lower()
    if out_ext not in IMAGE_EXTENSIONS:
        raise Refused(f"output must end in one of {', '.join(IMAGE_EXTENSIONS)}; got {args.output!r}")
    if args.bits == 16 and out_ext not in (".png", ".tif", ".tiff"):
        raise Refused(f"16-bit output is PNG or TIFF only, got {args.output!r}")
    checkpoint = ("--checkpoint", args.checkpoint) if args.checkpoint else \
        (DEFAULT_CHECKPOINT, os.path.splitext(args.output)[0] + ".ckpt")
    writes = [("-o", args.output), checkpoint]
    writes += [(option, path) for option, path in (("--history", args.history), ("--plot", args.plot)) if path]
    _refuse(_check_folders(writes))
    return writes


def _reads(args, content, styles) -> list:
    reads = [*([] if os.path.isdir(content) else [("CONTENT", content)]), *(("STYLE", s) for s in styles),
             *(("--style-masks", m) for m in args.style_masks or [])]
    if args.init not in INITS and os.path.isfile(args.init):
        reads.append(("--init", args.init))
    return reads




def _check_folders(writes):
    """writes: (option, path) of files the run writes -> why one of their folders cannot
    be written into, or None."""
    for option, path in writes:
        what = "output" if option == "-o" else option
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            return f"{what} directory does not exist: {folder}"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"cannot write into the {what} directory {folder}"
    return None


def _check_files(writes):
    """writes: (option, path) of files the run writes -> why one is no file the run may
    replace (a folder, a device, a FIFO), or None."""
    return next(filter(None, (not_a_file(option, path) for option, path in writes)), None)


def _earlier_snapshots(output) -> list:
    """The --save-every snapshots OUT.stepNNNN.png there are beside the output OUT.png."""
    return glob.glob(glob.escape(os.path.splitext(output)[0]) + ".step[0-9][0-9][0-9][0-9]*.png")


def _file_key(path):
    """What identifies a file: device and inode where it exists (links alike), else its real path."""
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except OSError:
        return os.path.normcase(os.path.realpath(path))


def _check_distinct(writes, reads, snapshots=None):
    """writes, reads: (option, path) of the files the run writes and reads -> why a write
    would replace an input or another write, or None. snapshots: OUT, the stem of the
    --save-every snapshots OUT.stepNNNN.png, which must not replace any of them either."""
    named = {}
    for option, path in reads:
        if os.path.isfile(path):  # a missing input is reported as such, later
            named.setdefault(_file_key(path), (option, path, "read"))
    for option, path in writes:
        key = _file_key(path)
        if key not in named:
            named[key] = (option, path, "write")
            continue
        other, _, how = named[key]
        if other == "--resume":
            if option in RESUMABLE:
                continue
            return f"{option} {path} is the checkpoint --resume reads; name another file"
        if how == "read":
            return f"{option} {path} is one of the input images ({other}); name another file"
        return f"{other} and {option} both name {path}; name different files"
    if snapshots:
        folder = os.path.realpath(os.path.dirname(os.path.abspath(snapshots)))
        pattern = re.escape(os.path.normcase(os.path.join(folder, os.path.basename(snapshots)))) + r"\.step\d{4,}\.png"
        for option, path, _ in named.values():
            if re.fullmatch(pattern, os.path.normcase(os.path.realpath(path))):
                return f"the --save-every snapshots {snapshots}.stepNNNN.png would replace {option} {path}"
    return None
