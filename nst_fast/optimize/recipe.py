"""The settings that made an image, written into its file (PNG text, JPEG comment):
enough to make it again, without the paths of the inputs (they may be private)."""
import json
import os

from .options import INITS, RECORDED_FIELDS, Options

SETTINGS = RECORDED_FIELDS  # the options written as they are; the rest by settings() below


def _name(value) -> str:
    """A weights or image reference without its directory."""
    return os.path.basename(os.fspath(value))


def settings(opts: Options, transfer) -> dict:
    """The validated options of a run and the network it used, as plain JSON values."""
    out = {name: getattr(opts, name) for name in SETTINGS}
    out["scales"] = opts.sizes()
    init = opts.init
    out["init"] = init if isinstance(init, str) and init in INITS else (
        _name(init) if isinstance(init, (str, os.PathLike)) else "an image given in memory")
    out["style_masks"] = len(opts.style_masks) if opts.style_masks else 0
    out.update(network=transfer.architecture, pooling=transfer.pooling, padding=transfer.padding,
               weights=_name(transfer.weights),
               convention=transfer.convention)
    return out


def text(opts: Options, transfer) -> dict:
    """PNG text entries: Software, and Comment holding the settings as JSON."""
    from .. import __version__

    return {"Software": f"nst-fast {__version__}",
            "Comment": "nst-fast settings: " + json.dumps(settings(opts, transfer), sort_keys=True)}
