"""The loss history of a run: JSON for tools, a PNG plot for people."""
import json

from .errors import NstError
from .files import atomic_write


def write_json(rows, path):
    """rows: StyleTransfer.history, one dict per step ({"total": .., "style:relu1_1": .., "size": [h, w]})."""
    data = [{"step": i + 1, **row} for i, row in enumerate(rows)]
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1, allow_nan=True).encode()))


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
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
