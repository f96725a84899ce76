"""nst-fast: the command line. Errors are one line on stderr and a non-zero exit."""
import argparse
import dataclasses
import glob
import importlib.util
import os
import re
import signal
import sys
import threading

from .. import __version__
from ..optimize.options import Options
from ..runtime import interrupts
from ..runtime.files import IMAGE_EXTENSIONS, images_in, not_a_file

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")
EXIT_ERROR = 1
_stop_signal = signal.SIGINT  # what interrupted the run: Ctrl-C, or SIGTERM (kill, a job scheduler)


def _interrupted_code() -> int:
    return 128 + _stop_signal  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


def _on_stop(signum, frame):
    """Ctrl-C or SIGTERM stops a run: the image so far and a checkpoint are saved. Those
    that follow are ignored: they would only cut the saving short."""
    global _stop_signal
    _stop_signal = signum
    for stop in interrupts.SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    raise KeyboardInterrupt


def add_option_flags(parser, options_class=Options):
    """A flag for each field of options_class that has one, as the field's metadata says.
    Its default is None, "not given": the field's default stands (fill_option_defaults)."""
    for field in _flag_fields(options_class):
        parser.add_argument(field.metadata["flag"], dest=field.name, default=None, **field.metadata["cli"])


def _flag_fields(options_class):
    return [field for field in dataclasses.fields(options_class) if field.metadata.get("flag") is not None]


def fill_option_defaults(args, options_class=Options) -> None:
    """Each option flag not given (None) in args set to its field's default."""
    for field in _flag_fields(options_class):
        if getattr(args, field.name) is None:
            setattr(args, field.name, field.default)


def option_values(args, options_class=Options) -> dict:
    """{field name: value in args} for the fields of options_class that have a flag."""
    return {field.name: getattr(args, field.name) for field in _flag_fields(options_class)}


def build_parser():
    p = argparse.ArgumentParser(
        prog="nst-fast",
        description="Repaint CONTENT in the style of STYLE (Gatys et al. neural style transfer).",
        epilog="`nst-fast --demo -o out.png` stylizes the bundled example images. With a folder as CONTENT, "
               "every image in it is stylized into the folder -o names (default out/), one PNG each.",
    )
    p.add_argument("content", nargs="?", help="content image, or a folder of them (a batch)")
    p.add_argument("style", nargs="*", help="style image(s), or a folder of them")
    p.add_argument("-o", "--output", default=None, help="output image (default out.png); for a batch, a folder (out)")
    p.add_argument("--each-style", action="store_true",
                   help="one output per style image (CONTENT_STYLE.png in the -o folder) instead of their blend")
    p.add_argument("--overwrite", action="store_true",
                   help="batch: stylize again the images whose output exists (default: keep them, so a stopped "
                        "batch goes on where it stopped)")
    p.add_argument("--bits", type=int, default=8, choices=[8, 16],
                   help="bits per channel of the output and snapshots (16: PNG or TIFF) (8)")
    p.add_argument("--demo", action="store_true", help="use the bundled example images")
    p.add_argument("--list-layers", action="store_true",
                   help="print the --network's layers with their channels and size at --size (square), and exit")
    add_option_flags(p)
    p.add_argument("--pooling", default="max", choices=["max", "avg", "l2"],
                   help="max | avg | l2 (root mean square) (max)")
    p.add_argument("--padding", default="zeros", choices=["zeros", "replicate", "reflect"],
                   help="how the first convolution pads the image's border: zeros (the network's own), "
                        "replicate or reflect (crowsonkb's, against edge artifacts)")
    p.add_argument("--network", default="vgg19", choices=["vgg19", "vgg16", "vgg13", "vgg11", "alexnet", "nin"],
                   help="the CNN whose features are matched (vgg19, the paper's; nin needs --weights PATH "
                        "to nin_imagenet.pth or nin_imagenet_conv.caffemodel)")
    p.add_argument("--weights", default=None,
                   help="imagenet | random | PATH to a state dict of the network or a Caffe .caffemodel "
                        "(default $NST_FAST_WEIGHTS or imagenet)")
    p.add_argument("--weights-convention", default="auto", choices=["auto", "torchvision", "caffe"],
                   help="input convention of the weights (auto: a 'caffe' file name means caffe)")
    p.add_argument("--device", default=None,
                   help="cpu | cuda | cuda:N, or several (cuda:0,cuda:1) to split the network over "
                        "(default: cuda if available)")
    p.add_argument("--split-at", default=None,
                   help="with several devices: the layer where each next device starts (two devices: pool1)")
    p.add_argument("--save-every", type=int, default=0, help="save a snapshot OUT.stepNNNN.png every N steps")
    p.add_argument("--history", default=None, help="write the loss history (per step, per layer) as JSON")
    p.add_argument("--plot", default=None,
                   help="write a plot of the loss curves, PNG, PDF, SVG... as its extension says (needs matplotlib)")
    p.add_argument("--checkpoint", default=None,
                   help="save a resumable checkpoint here (every --checkpoint-every steps and at the end); "
                        "Ctrl-C always saves one, to OUT.ckpt if this is not given")
    p.add_argument("--resume", default=None, help="continue from a checkpoint (more steps, or a larger --size)")
    p.add_argument("--web", action="store_true",
                   help="watch the run in a browser: serve a live view at http://WEB_HOST:WEB_PORT/")
    p.add_argument("--web-host", default=None, help="address the live view listens on (127.0.0.1)")
    p.add_argument("--web-port", type=int, default=None, help="port of the live view (8080; 0: any free port)")
    p.add_argument("--browser", action="store_true", help="open the live view in the default web browser "
                   "(implies --web)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--version", action="version", version=f"nst-fast {__version__}")
    return p


def _error(message, code=EXIT_ERROR):
    sys.stderr.write(f"nst-fast: error: {message}\n")
    return code


DEFAULT_CHECKPOINT = "the default --checkpoint (where Ctrl-C saves)"  # OUT.ckpt, without --checkpoint
BATCH_CHECKPOINT = "the checkpoint of a batch image"  # OUT/NAME.ckpt, where Ctrl-C saves
# --resume may name the checkpoint the run writes: it goes on in the same file.
RESUMABLE = ("--checkpoint", DEFAULT_CHECKPOINT)


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else f"{exc.strerror or exc}"


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


def _list_layers(network: str, size: int) -> int:
    from ..nets import vgg

    print(f"{vgg.NETWORK_TITLES[network]} at {size}x{size} px:")
    for layer, _, channels, _, _, h, w in vgg.walk(size, size, network=network):
        shape = f"{channels} x {h} x {w}" if min(h, w) >= 1 else "(input too small)"
        print(f"  {layer.name:<12} {layer.kind:<5} {shape}")
    return 0


def run(args) -> int:
    import torch

    from ..errors import CheckpointNotWritten, Interrupted, NstError, OutOfMemory, RunStopped, WeightsUnavailable
    from ..imaging import images
    from ..nets import vgg
    from ..ops import backend
    from ..optimize import recipe
    from ..optimize.options import INITS, Options, report_interval
    from ..optimize.transfer import StyleTransfer, is_out_of_memory, parse_devices
    from ..runtime import history
    from ..runtime.progress import Progress
    from . import batch, web

    if args.list_layers:
        try:
            Options(size=512 if args.size is None else args.size).validate(network=args.network)
        except NstError as exc:
            return _error(str(exc))
        return _list_layers(args.network, 512 if args.size is None else args.size)
    if args.demo and (args.content or args.style):
        return _error("--demo uses the bundled example images; give it no CONTENT or STYLE")
    if not (args.web or args.browser):
        for option, given in (("--web-host", args.web_host), ("--web-port", args.web_port)):
            if given is not None:
                return _error(f"{option} sets where the live view listens: give --web (or --browser) too")
    for option, path in (("-o", args.output), ("--checkpoint", args.checkpoint), ("--history", args.history),
                         ("--plot", args.plot), ("--resume", args.resume)):
        if path == "":
            return _error(f"{option} names no file (an empty path)")
    if args.plot:  # known now, not after the run
        if importlib.util.find_spec("matplotlib") is None:
            return _error("--plot needs matplotlib: pip install matplotlib")
        try:
            history.plot_format(args.plot)
        except NstError as exc:
            return _error(f"--plot: {exc}")
    if args.save_every < 0:
        return _error(f"--save-every must be 0 (off) or a number of steps, got {args.save_every}")
    if args.size is not None and args.scales and args.size != args.scales[-1]:
        return _error(f"--size {args.size} and --scales ending at {args.scales[-1]} disagree; give one of them")
    if args.size is None:
        args.size = args.scales[-1] if args.scales else 256 if args.demo else 512
    if args.steps is None and args.demo:
        args.steps = 100
    fill_option_defaults(args)
    if args.demo:
        content = os.path.join(EXAMPLES, "content.png")
        styles = [os.path.join(EXAMPLES, "style.png")]
    else:
        if not args.content or not args.style:
            return _error("give a CONTENT and at least one STYLE image (or --demo)", 2)
        content, styles = args.content, []
        for style in args.style:  # a folder stands for the images in it (neural-style-pt's)
            if not os.path.isdir(style):
                styles.append(style)
                continue
            found = images_in(style)
            if not found:
                return _error(f"style folder {style} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            styles += found
    batch_mode = (not args.demo and os.path.isdir(content)) or args.each_style
    if args.each_style and (args.style_blend or args.style_masks):
        return _error("--each-style runs each style on its own: it takes no --style-blend or --style-masks")
    init_previous = args.init == "previous"
    if init_previous:
        if not batch_mode:
            return _error("--init previous needs a folder of contents (the frames of a video) as CONTENT")
        args.init = "content"  # the first frame's start
    if batch_mode:
        args.output = args.output or "out"
        for flag, given in (("--resume", args.resume), ("--checkpoint", args.checkpoint),
                            ("--history", args.history), ("--plot", args.plot)):
            if given:
                return _error(f"{flag} names one file; a batch (a folder as CONTENT, or --each-style) "
                              "cannot take it")
        if os.path.splitext(args.output)[1].lower() in IMAGE_EXTENSIONS or (
                os.path.exists(args.output) and not os.path.isdir(args.output)):
            return _error(f"for a batch, -o names a folder for the outputs, got {args.output!r}")
        for style in args.style or []:  # its outputs would be styles of the next run
            if os.path.isdir(style) and os.path.isdir(args.output) and os.path.samefile(style, args.output):
                return _error(f"the output folder is the style folder {style}; name another one with -o")
        out_dir = os.path.dirname(os.path.abspath(args.output))
        try:
            jobs, kept = batch.plan(content, args.output, args.overwrite, styles if args.each_style else None,
                                    inputs=[*styles, *(args.style_masks or [])])
        except NstError as exc:
            return _error(str(exc))
        if not os.path.isdir(out_dir):
            return _error(f"output directory does not exist: {out_dir}")
        writes = [*(("-o", job.output) for job in jobs), *((BATCH_CHECKPOINT, job.checkpoint) for job in jobs)]
    else:
        args.output = args.output or "out.png"
        out_ext = os.path.splitext(args.output)[1].lower()
        if out_ext not in IMAGE_EXTENSIONS:
            return _error(f"output must end in one of {', '.join(IMAGE_EXTENSIONS)}; got {args.output!r}")
        if args.bits == 16 and out_ext not in (".png", ".tif", ".tiff"):
            return _error(f"16-bit output is PNG or TIFF only, got {args.output!r}")
        checkpoint = ("--checkpoint", args.checkpoint) if args.checkpoint else \
            (DEFAULT_CHECKPOINT, os.path.splitext(args.output)[0] + ".ckpt")
        writes = [("-o", args.output), checkpoint]
        writes += [(option, path) for option, path in (("--history", args.history), ("--plot", args.plot)) if path]
        problem = _check_folders(writes)
        if problem:
            return _error(problem)
    outputs = [path for option, path in writes if option == "-o"]
    snapshot_files = [path for output in outputs for path in _earlier_snapshots(output)] if args.save_every else []
    problem = _check_files(writes + [("the --save-every snapshot", path) for path in snapshot_files])
    if problem:
        return _error(problem)
    reads = [*([] if os.path.isdir(content) else [("CONTENT", content)]), *(("STYLE", s) for s in styles),
             *(("--style-masks", m) for m in args.style_masks or [])]
    if args.init not in INITS and os.path.isfile(args.init):
        reads.append(("--init", args.init))
    inputs = [path for _, path in reads]
    snapshots = os.path.splitext(args.output)[0] if args.save_every and not batch_mode else None
    problem = _check_distinct(writes, reads + ([("--resume", args.resume)] if args.resume else []), snapshots)
    if problem:
        return _error(problem)
    earlier = snapshot_files if snapshots else []
    if earlier:  # kept: they may be all that is left of a run; this run's replace those of its steps
        sys.stderr.write(f"nst-fast: note: {len(earlier)} snapshot(s) of an earlier run are there "
                         f"({os.path.basename(snapshots)}.stepNNNN.png); this run replaces those of the same steps\n")

    options = option_values(args)
    live = None
    try:
        # Mistakes in the options and missing images show before the weights load.
        Options(**options).validate(n_styles=1 if args.each_style else len(styles), network=args.network)
        vgg.check_padding(args.padding, args.network)
        opened = {path: images.open_image(path) for path in inputs}  # decoded once, used for the run
        backend.tell_unused_kernels(parse_devices(args.device),
                                    lambda message: sys.stderr.write(f"nst-fast: WARNING: {message}\n"))
        if args.style_masks:
            options["style_masks"] = [opened[m] for m in args.style_masks]
        try:
            transfer = StyleTransfer(args.weights, args.device, args.pooling, args.weights_convention, args.seed,
                                     network=args.network, split_at=args.split_at, padding=args.padding)
        except WeightsUnavailable as exc:
            if not args.demo:
                raise
            sys.stderr.write(
                f"nst-fast: WARNING: {exc}.\nnst-fast: WARNING: the demo falls back to RANDOM weights: "
                "the output shows the pipeline working, not a real stylization.\n")
            fell_back = True
            transfer = StyleTransfer("random", args.device, args.pooling, "auto", args.seed, network=args.network,
                                     split_at=args.split_at, padding=args.padding)
        else:
            fell_back = False
        if transfer.weights == "random" and not fell_back:
            title = vgg.NETWORK_TITLES[transfer.architecture]
            sys.stderr.write(f"nst-fast: WARNING: using RANDOM {title} weights; the result is not a real stylization\n")
        report_every = report_interval(args.report_every, transfer.device.type)
        progress = Progress(not args.quiet, report_every)
        options.update(report_every=report_every, callback=progress)
        stem = os.path.splitext(args.output)[0]
        interrupt_checkpoint = args.checkpoint or stem + ".ckpt"

        transparency = None if batch_mode else images.alpha(opened[content], args.size)

        def save(image, path, alpha=transparency):  # the content's transparency and the run's settings kept
            images.save_atomic(images.with_alpha(image, alpha), path, bits=args.bits,
                               text=recipe.text(transfer.last_options, transfer))

        def snapshot(step, image):
            save(image, f"{stem}.step{step:04d}.png")

        if args.web or args.browser:
            given = {"host": args.web_host, "port": args.web_port}  # the rest: LivePreview's defaults
            live = web.LivePreview(**{name: value for name, value in given.items() if value is not None})
            sys.stderr.write(f"nst-fast: live view at {live.url}\n")
            if args.browser:
                web.open_in_browser(live)
        if batch_mode:
            return _run_batch(args, transfer, jobs, kept, {s: opened[s] for s in styles}, options, save, live,
                              init_previous)
        try:
            result = transfer.stylize_tensor(opened[content], [opened[s] for s in styles], checkpoint=args.checkpoint,
                                             interrupt_checkpoint=interrupt_checkpoint, resume=args.resume,
                                             save_every=args.save_every,
                                             snapshot=snapshot if args.save_every else None, live=live,
                                             **options)
        except (RunStopped, Interrupted) as exc:
            code = _interrupted_code() if isinstance(exc, Interrupted) else EXIT_ERROR
            if exc.image is not None:
                try:  # on a full disk the image may not fit either; the run's exit code stays
                    save(exc.image, args.output)
                except OSError as failed:
                    sys.stderr.write(f"\nnst-fast: could not save the image so far: {_os_error(failed)}\n")
                else:
                    sys.stderr.write(f"\nnst-fast: saved the image so far (step {exc.step}) to {args.output}\n")
            resumable = isinstance(exc, (Interrupted, CheckpointNotWritten, OutOfMemory))
            if resumable and os.path.exists(interrupt_checkpoint):
                sys.stderr.write(f"nst-fast: continue with --resume {interrupt_checkpoint}\n")
            return _error(str(exc), code)
        save(result, args.output)
        if args.history:
            history.write_json(transfer.history, args.history)
        if args.plot:
            history.plot(transfer.history, args.plot)
    except NstError as exc:
        return _error(str(exc))
    except RuntimeError as exc:  # before the first step (the steps' own end in OutOfMemory)
        if not is_out_of_memory(exc):
            raise
        gpu = isinstance(exc, torch.cuda.OutOfMemoryError)
        return _error(f"out of {'GPU' if gpu else 'CPU'} memory; try a smaller --size, --fit-memory or "
                      + ("--precision bf16" if gpu else "--low-memory"))
    except OSError as exc:  # a full disk, a folder without write permission
        return _error(_os_error(exc))
    except KeyboardInterrupt:
        return _error("interrupted", _interrupted_code())
    finally:
        if live is not None:
            live.close()
    if transfer.last_run.get("note"):
        sys.stderr.write(f"nst-fast: {transfer.last_run['note']}\n")
    if not args.quiet:
        if transfer.device.type == "cuda":
            run = transfer.last_run
            how = "CUDA-graph replays" if run.get("cuda_graph") else f"eager steps ({run.get('why_not')})"
            sys.stderr.write(f"nst-fast: the steps ran as {how}, in {transfer.last_options.precision}\n")
        sys.stderr.write(f"nst-fast: wrote {args.output}\n")
    return 0


def _run_batch(args, transfer, jobs, kept, styles, options, save, live, init_previous) -> int:
    """Every job of a batch; errors of single images are reported and counted, Ctrl-C
    stops the batch. Exceptions other than those go to run()'s handlers."""
    from ..errors import Interrupted
    from ..runtime.progress import Progress
    from . import batch

    if kept:
        sys.stderr.write(f"nst-fast: keeping {len(kept)} output(s) that exist in {args.output} "
                         "(--overwrite: stylize them again)\n")
    if not os.path.isdir(args.output):
        os.mkdir(args.output)
    try:
        failed = batch.run(transfer, jobs, styles, options, save=save, checkpoint_every=args.checkpoint_every,
                           save_every=args.save_every, live=live, init_previous=init_previous,
                           new_progress=lambda: Progress(not args.quiet, options["report_every"]))
    except Interrupted as exc:
        return _error(str(exc), _interrupted_code())
    done = len(jobs) - failed
    sys.stderr.write(f"nst-fast: wrote {done} image(s) to {args.output}\n")
    if failed:
        return _error(f"{failed} of {len(jobs)} image(s) failed; see above")
    return 0


def main(argv=None) -> int:
    global _stop_signal
    args = build_parser().parse_args(argv)
    _stop_signal = signal.SIGINT
    previous = {}  # signal -> its handler before ours; one ignored from the start (a background job's SIGINT) stays so
    if threading.current_thread() is threading.main_thread():
        previous = {stop: signal.signal(stop, _on_stop) for stop in interrupts.SIGNALS
                    if signal.getsignal(stop) is not signal.SIG_IGN}
    try:
        return run(args)
    except KeyboardInterrupt:
        return _error("interrupted", _interrupted_code())
    except BrokenPipeError:  # stdout closed early (`nst-fast --list-layers | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return EXIT_ERROR
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, signal.SIG_DFL if handler is None else handler)


if __name__ == "__main__":
    sys.exit(main())
