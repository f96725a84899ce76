"""nst-fast: the command line. Errors are one line on stderr and a non-zero exit."""
import argparse
import dataclasses
import functools
import os
import signal
import sys
import threading

from .. import __version__
from ..optimize.options import Options
from ..runtime import interrupts

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


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else f"{exc.strerror or exc}"


def _say(message) -> None:
    sys.stderr.write(f"nst-fast: {message}\n")


def _list_layers(network: str, size: int) -> int:
    from ..nets import vgg

    print(f"{vgg.NETWORK_TITLES[network]} at {size}x{size} px:")
    for layer, _, channels, _, _, h, w in vgg.walk(size, size, network=network):
        shape = f"{channels} x {h} x {w}" if min(h, w) >= 1 else "(input too small)"
        print(f"  {layer.name:<12} {layer.kind:<5} {shape}")
    return 0


def run(args) -> int:
    from .request import Refused, request

    if args.list_layers:
        return _list_layers_checked(args)
    try:
        req = request(args)
    except Refused as exc:
        return _error(str(exc), exc.code)
    if req.earlier_snapshots:  # kept: they may be all that is left of a run; this run's replace those of its steps
        _say(f"note: {len(req.earlier_snapshots)} snapshot(s) of an earlier run are there "
             f"({os.path.basename(os.path.splitext(args.output)[0])}.stepNNNN.png); this run replaces those of "
             "the same steps")
    return _stylize(args, req)


def _list_layers_checked(args) -> int:
    from ..errors import NstError

    size = 512 if args.size is None else args.size
    try:
        Options(size=size).resolve(network=args.network)
    except NstError as exc:
        return _error(str(exc))
    return _list_layers(args.network, size)


def _stylize(args, req) -> int:
    """The run (or batch) of a checked request -> the exit code; its errors as one line."""
    import torch

    from ..errors import NstError
    from ..optimize.devices import is_out_of_memory

    live = None
    try:
        opts = _options(args, req)  # mistakes in them show first, then missing images, then the weights'
        opened = _open_inputs(args, req)
        if args.style_masks:
            opts = opts.with_images(style_masks=[opened[m] for m in args.style_masks])
        transfer = _transfer(args)
        opts = transfer.resolve(opts, _n_styles(args, req))
        live = _live_view(args)
        if req.batch:
            return _run_batch(args, req, transfer, opts, opened, live)
        return _run_one(args, req, transfer, opts, opened, live)
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


def _open_inputs(args, req) -> dict:
    """{path: image} of every input image, each decoded once; the network's padding
    checked as well, before the weights load."""
    from ..imaging import images
    from ..nets import vgg
    from ..ops import backend
    from ..optimize.devices import parse_devices

    vgg.check_padding(args.padding, args.network)
    opened = {path: images.open_image(path) for _, path in req.reads}
    backend.tell_unused_kernels(parse_devices(args.device), lambda message: _say(f"WARNING: {message}"))
    return opened


def _transfer(args):
    """The StyleTransfer of the arguments; the demo without weights falls back to random ones."""
    from ..errors import WeightsUnavailable
    from ..nets import vgg
    from ..optimize.transfer import StyleTransfer

    setup = dict(network=args.network, split_at=args.split_at, padding=args.padding)
    try:
        transfer = StyleTransfer(args.weights, args.device, args.pooling, args.weights_convention, args.seed,
                                 **setup)
    except WeightsUnavailable as exc:
        if not args.demo:
            raise
        _say(f"WARNING: {exc}.\nnst-fast: WARNING: the demo falls back to RANDOM weights: "
             "the output shows the pipeline working, not a real stylization.")
        return StyleTransfer("random", args.device, args.pooling, "auto", args.seed, **setup)
    if transfer.weights == "random":
        _say(f"WARNING: using RANDOM {vgg.NETWORK_TITLES[transfer.architecture]} weights; "
             "the result is not a real stylization")
    return transfer


def _live_view(args):
    from . import web

    if not (args.web or args.browser):
        return None
    given = {"host": args.web_host, "port": args.web_port}  # the rest: LivePreview's defaults
    live = web.LivePreview(**{name: value for name, value in given.items() if value is not None})
    _say(f"live view at {live.url}")
    if args.browser:
        web.open_in_browser(live)
    return live


def _n_styles(args, req) -> int:
    """The style images of each run: one with --each-style, else all, blended."""
    return 1 if args.each_style else len(req.styles)


def _options(args, req):
    """The Options of the arguments, resolved as far as they can be before the weights load."""
    from ..optimize.devices import parse_devices

    return Options(**option_values(args)).resolve(_n_styles(args, req), convention=None, network=args.network,
                                                  devices=parse_devices(args.device))


def _saver(args, transfer):
    """save(image, path, alpha, opts): an image with the content's transparency and the
    settings that made it, written atomically."""
    from ..imaging import images
    from ..optimize import recipe

    def save(image, path, alpha, opts):
        images.save_atomic(images.with_alpha(image, alpha), path, bits=args.bits, text=recipe.text(opts, transfer))

    return save


def _run_one(args, req, transfer, opts, opened, live) -> int:
    from ..errors import Interrupted, RunStopped
    from ..imaging import images
    from ..optimize.result import Hooks
    from ..runtime import history
    from ..runtime.progress import Progress

    save = functools.partial(_saver(args, transfer), alpha=images.alpha(opened[req.content], args.size), opts=opts)
    stem = os.path.splitext(args.output)[0]
    hooks = Hooks(callback=Progress(not args.quiet, opts.report_every), save_every=args.save_every,
                  snapshot=(lambda step, image: save(image, f"{stem}.step{step:04d}.png")) if args.save_every else None,
                  live=live, checkpoint=args.checkpoint, interrupt_checkpoint=args.checkpoint or stem + ".ckpt")
    try:
        result = transfer.run(opened[req.content], [opened[s] for s in req.styles], opts, hooks=hooks,
                              resume=args.resume)
    except (RunStopped, Interrupted) as exc:
        return _stopped(args, exc, save, hooks.interrupt_checkpoint)
    save(result.image, args.output)
    if args.history:
        history.write_json(result.history, args.history)
    if args.plot:
        history.plot(result.history, args.plot)
    if result.note:
        _say(result.note)
    if not args.quiet:
        if transfer.device.type == "cuda":
            how = "CUDA-graph replays" if result.cuda_graph else f"eager steps ({result.why_not})"
            _say(f"the steps ran as {how}, in {opts.precision}")
        _say(f"wrote {args.output}")
    return 0


def _stopped(args, exc, save, interrupt_checkpoint) -> int:
    """A run that stopped early: its image so far saved as the output, and how to go on."""
    from ..errors import CheckpointNotWritten, Interrupted, OutOfMemory

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
        _say(f"continue with --resume {interrupt_checkpoint}")
    return _error(str(exc), code)


def _run_batch(args, req, transfer, opts, opened, live) -> int:
    """Every job of a batch; errors of single images are reported and counted, Ctrl-C
    stops the batch. Exceptions other than those go to _stylize's handlers."""
    from ..errors import Interrupted
    from ..runtime.progress import Progress
    from . import batch

    if req.kept:
        _say(f"keeping {len(req.kept)} output(s) that exist in {args.output} (--overwrite: stylize them again)")
    if not os.path.isdir(args.output):
        os.mkdir(args.output)
    try:
        failed = batch.run(transfer, req.jobs, {s: opened[s] for s in req.styles}, opts, save=_saver(args, transfer),
                           save_every=args.save_every, live=live, init_previous=req.init_previous,
                           new_progress=lambda: Progress(not args.quiet, opts.report_every))
    except Interrupted as exc:
        return _error(str(exc), _interrupted_code())
    done = len(req.jobs) - failed
    _say(f"wrote {done} image(s) to {args.output}")
    if failed:
        return _error(f"{failed} of {len(req.jobs)} image(s) failed; see above")
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
