"""The loss history of a run: JSON for tools, a PNG plot for people."""
import json
import os
import tempfile

from .errors import NstError


def _atomic_write(path, write):
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".nst_fast-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(rows, path):
    """rows: StyleTransfer.history, one dict per step ({"total": .., "style:relu1_1": .., "size": [h, w]})."""
    data = [{"step": i + 1, **row} for i, row in enumerate(rows)]
    _atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, allow_nan=True).encode()))


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise NstError("--plot needs matplotlib: pip install matplotlib") from None
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
    _atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
