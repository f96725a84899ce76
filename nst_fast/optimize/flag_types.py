"""Readers of command-line flags' text (argparse types): torch-free, so that the
options can name them and the command line still starts without torch."""
import argparse


def _csv_numbers(text, kind, example):
    try:
        return [kind(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list like {example}: {text!r}") from None


def csv_floats(text):
    return _csv_numbers(text, float, "0.7,0.3")


def csv_ints(text):
    return _csv_numbers(text, int, "256,512")


def memory_amount(text):
    """"8G", "512M", "1.5GiB" or a number of bytes -> bytes (binary units)."""
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = 1 << {"K": 10, "M": 20, "G": 30, "T": 40}.get(number[-1:], 0)
    try:
        value = float(number[:-1] if unit > 1 else number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount of memory: {text!r} (e.g. 8G, 512M)") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"the memory limit must be positive, got {text!r}")
    return int(value)


def csv_paths(text):
    return [t.strip() for t in text.split(",") if t.strip()]
