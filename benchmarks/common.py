"""What the benchmark scripts share: the import path, the example inputs, timing, peak
memory, op counting and the tables they print.

Importing this module puts the repository root first on sys.path, so the scripts run
from a checkout without installing the package; a script in benchmarks/experiments/
adds benchmarks/ to sys.path first and then imports this module.

Timing:
- median_ms: wall time of one call of fn, synchronising the device inside the timed
  region, after warm-up calls; the median of the samples.
- cuda_event_ms / cuda_graph_ms: GPU time by CUDA events, of eager calls or of calls
  captured in one CUDA graph and replayed (what a captured optimisation step runs).
- per_step_ms: ms per optimisation step of a whole run, (T(n2 steps) - T(n1 steps)) /
  (n2 - n1), so that the set-up work cancels out.
"""
import collections
import math
import os
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

EXAMPLES = os.path.join(ROOT, "nst_fast", "examples")
SHARED_WEIGHTS = os.path.join(ROOT, "..", "shared", "weights", "vgg19_caffe_conv1_1-conv3_4.pth")
STYLE_WEIGHT = 5e7  # the style weight of the whole-step benchmarks
# (name, channels, downsampling) of VGG-19's default style layers.
STYLE_LAYERS = [("relu1_1", 64, 1), ("relu2_1", 128, 2), ("relu3_1", 256, 4), ("relu4_1", 512, 8),
                ("relu5_1", 512, 16)]


# ---------------------------------------------------------------- inputs
def example_paths():
    """(content, style) paths of the example images."""
    return os.path.join(EXAMPLES, "content.png"), os.path.join(EXAMPLES, "style.png")


def inputs(size):
    """The example content at `size` px on its long side and the style resized to it."""
    from nst_fast.imaging import images
    content_path, style_path = example_paths()
    content = images.resize_long_side(images.to_tensor(content_path), size)
    style = torch.nn.functional.interpolate(images.to_tensor(style_path), size=content.shape[-2:],
                                            mode="bilinear").clamp(0, 1)
    return content, style


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"


# ---------------------------------------------------------------- timing
def sync(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values):
    """The middle value (the upper one of an even count), as the whole-step tables take it."""
    values = sorted(values)
    return values[len(values) // 2]


def median_ms(fn, *args, device="cpu", warmup=2, min_time=0.3, min_samples=5, setup=None):
    """Median milliseconds of fn(*args): `warmup` calls first, then samples until both
    `min_time` seconds and `min_samples` samples are reached; the device is synchronised
    before and after each timed call. setup(), if given, runs untimed before each sample."""
    for _ in range(warmup):
        fn(*args)
    samples, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(samples) < min_samples:
        if setup is not None:
            setup()
        sync(device)
        t = time.perf_counter()
        fn(*args)
        sync(device)
        samples.append((time.perf_counter() - t) * 1e3)
    return statistics.median(samples)


def cuda_event_ms(fn, inputs, warmup=5, samples=25, min_sample_ms=0.5):
    """Median GPU milliseconds per eager call of fn(*inputs[i]), i rotating over the inputs;
    each sample holds enough calls to last about min_sample_ms."""
    n = len(inputs)
    for i in range(warmup):
        fn(*inputs[i % n])
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for i in range(n):
        fn(*inputs[i])
    end.record()
    end.synchronize()
    per = start.elapsed_time(end) / n
    inner = max(1, min(200, math.ceil(min_sample_ms / max(per, 1e-3))))
    times, k = [], 0
    for _ in range(samples):
        start.record()
        for _ in range(inner):
            fn(*inputs[k % n])
            k += 1
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def cuda_graph_ms(fn, inputs, samples=20, min_calls=8):
    """-> (median GPU milliseconds per call, True): calls of fn(*inputs[i]) captured in one
    CUDA graph, then replayed. Eager calls of small kernels are bound by Python and the
    dispatcher, not by the GPU; replays time the kernels themselves. Where capture fails,
    -> (cuda_event_ms of eager calls, False)."""
    n = len(inputs)
    calls = max(n, min_calls)
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(min(n, 3)):
                fn(*inputs[i])
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                fn(*inputs[i % n])
    except Exception as exc:  # reported, and the caller marks the row
        print(f"  (graph capture failed: {type(exc).__name__}: {exc}; eager timing)", flush=True)
        return cuda_event_ms(fn, inputs), False
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(samples):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(times), True


def per_step_ms(run, device, n1, n2, repeats, warmup_steps=2):
    """Median over `repeats` of (T(run(n2)) - T(run(n1))) / (n2 - n1), after one warm-up
    run(warmup_steps) (kernels, allocator, weight transforms, cuDNN's algorithm choice)."""
    run(warmup_steps)
    results = []
    for _ in range(repeats):
        times = []
        for n in (n1, n2):
            sync(device)
            t = time.perf_counter()
            run(n)
            sync(device)
            times.append(time.perf_counter() - t)
        results.append((times[1] - times[0]) / (n2 - n1) * 1e3)
    return median(results)


# ---------------------------------------------------------------- memory
def cuda_peak_mib(run, device, steps=3):
    """Peak allocated MiB of run(steps) on a GPU; None on the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    run(steps)
    sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def resident_mib() -> float:
    """This process's resident set now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_resident_mib() -> float:
    """This process's peak resident set so far (Linux: ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- ops dispatched
VIEWS = {"detach", "view", "_unsafe_view", "reshape", "slice", "select", "unsqueeze", "squeeze", "permute",
         "expand", "t", "transpose", "diagonal", "alias", "as_strided", "unbind", "split"}
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty"}  # no kernel runs for these


class OpCounter(TorchDispatchMode):
    """Counts the ops that do work (not views or allocations) dispatched inside it, per
    phase; on a GPU each is a kernel launch."""

    def __init__(self):
        super().__init__()
        self.phase = "backward"
        self.counts = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS and name not in ALLOCATIONS:
            self.counts[self.phase][name] += 1
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def wrap(self, cls, method, phase):
        """Count the ops of cls.method under `phase` (patched on the class)."""
        inner = getattr(cls, method)

        def counted(*args, **kwargs):
            outer, self.phase = self.phase, phase
            try:
                return inner(*args, **kwargs)
            finally:
                self.phase = outer

        setattr(cls, method, counted)


# ---------------------------------------------------------------- tables
class Report:
    """Lines of a report: printed as they come (progress), printed again in full and
    written to a markdown file at the end."""

    def __init__(self, md=None, echo=True):
        self.md, self.echo, self.lines = md, echo, []

    def add(self, *lines):
        for line in lines:
            self.lines.append(line)
            if self.echo:
                print(line, flush=True)

    def table(self, *headers):
        """A markdown table's header and rule."""
        self.add("| " + " | ".join(headers) + " |", "|" + "---|" * len(headers))

    def row(self, *cells):
        self.add("| " + " | ".join(str(c) for c in cells) + " |")

    def finish(self, reprint=True):
        """Write the markdown file if one was named; print the whole report again (reprint)."""
        text = "\n".join(self.lines)
        if self.md:
            with open(self.md, "w") as f:
                f.write(text + "\n")
        if reprint:
            print(text)
        return text
