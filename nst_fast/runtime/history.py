"""The loss history of a run: JSON for tools, a plot for people."""
import json
import os

from ..errors import NstError
from .files import atomic_write


def write_json(rows, path):
    """rows: RunResult.history, one dict per step ({"total": .., "style:relu1_1": .., "size": [h, w]})."""
    data = [{"step": i + 1, **row} for i, row in enumerate(rows)]
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, allow_nan=True).encode()))


# What matplotlib writes by its own means (JPEG and WebP through Pillow, which nst_fast needs).
PLOT_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "tif", "tiff", "webp", "eps")


def plot_format(path) -> str:
    """The plot's file format, from its extension (none: PNG)."""
    ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".") or "png"
    if ext not in PLOT_FORMATS:
        raise NstError(f"a plot is written as {', '.join(PLOT_FORMATS)}; cannot tell how from {os.fspath(path)!r}")
    return ext


def plot(rows, path):
    """The loss curves on a log scale, in the format path's extension names."""
    fmt = plot_format(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NstError("the loss plot needs matplotlib: pip install matplotlib") from None
    if not rows:
        raise NstError("no steps were run, nothing to plot")
    names = [k for k in rows[0] if k != "size"]
    fig, ax = plt.subplots(figsize=(8, 5))
    steps = range(1, len(rows) + 1)
    for name in names:
        values = [max(r[name], 1e-30) for r in rows]
        style = "-" if name in ("total", "content", "style", "tv") else ":"
        ax.plot(steps, values, style, label=name, linewidth=2 if name == "total" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=100))
    plt.close(fig)
