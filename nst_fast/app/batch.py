"""A batch: every image in a folder repainted in the same style, one PNG each in an
output folder, with the network loaded once; or each content in each style on its
own (each_style), instead of in their blend.

Outputs that exist are kept, so the same command run again after a stop goes on
where it stopped. Ctrl-C leaves a checkpoint of the image in progress beside its
output (as does --checkpoint-every, against crashes); that next run resumes it.

For the frames of a video, each image can start from the result of the one before
it in name order (init_previous, nst_fast/app/video.py), against flicker.
"""
import os
import sys
import time
from typing import Callable, NamedTuple, Optional

from ..errors import CheckpointMismatch, Interrupted, NonFiniteLoss, NstError
from ..imaging import images
from ..optimize.result import Hooks
from ..runtime.files import IMAGE_EXTENSIONS, images_in
from . import video


class Job(NamedTuple):
    content: str
    output: str
    checkpoint: str
    previous: Optional["Job"]  # the content before this one in name order (in the same style)
    style: Optional[str] = None  # each_style: the one style image of this job; None: all, blended


def _name(path) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def plan(content_dir, out_dir, overwrite=False, each_style=None, inputs=()):
    """-> (jobs to run, jobs whose output exists and is kept). content_dir: a folder of
    contents, or one content image. each_style: style image paths, one job per content
    and style, written to CONTENT_STYLE.png. inputs: the run's other images (styles,
    masks), which are not contents even inside the folder. Two jobs that would write
    the same output (photo.jpg, photo.png) are refused."""
    if os.path.isdir(content_dir):
        others = [path for path in inputs if os.path.isfile(path)]
        found = images_in(content_dir)
        contents = [c for c in found if not any(os.path.samefile(c, o) for o in others)]
        if not contents:
            besides = " besides the style images and masks" if found else ""
            raise NstError(f"content folder {content_dir} holds no images{besides} ({', '.join(IMAGE_EXTENSIONS)})")
        if os.path.isdir(out_dir) and os.path.samefile(content_dir, out_dir):
            raise NstError("the output folder is the content folder; name another one with -o")
    else:
        contents = [os.fspath(content_dir)]
    jobs, by_output = [], {}
    for style in each_style or [None]:
        previous = None
        for content in contents:
            stem = os.path.join(out_dir, _name(content) + ("" if style is None else f"_{_name(style)}"))
            output = stem + ".png"
            what = os.path.basename(content) + ("" if style is None else f" in {os.path.basename(style)}'s style")
            if output in by_output:
                raise NstError(f"{by_output[output]} and {what} would both be written to {output}; rename one")
            by_output[output] = what
            previous = Job(content, output, stem + ".ckpt", previous and previous._replace(previous=None), style)
            jobs.append(previous)
    for job in jobs:  # an input there is no output done before: it would be kept, or overwritten
        if os.path.exists(job.output) and any(os.path.exists(i) and os.path.samefile(job.output, i) for i in inputs):
            raise NstError(f"{job.output} is one of the input images, and {os.path.basename(job.content)}'s "
                           "output would go there; name another folder with -o")
    kept = [] if overwrite else [job for job in jobs if os.path.exists(job.output)]
    return [job for job in jobs if job not in kept], kept


def _say(message):
    sys.stderr.write(f"nst-fast: {message}\n")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _start_from_previous(job: Job, content):
    """The start for job's content from the frame before and its result (video.carry_over),
    or None where that result is missing or of another shape."""
    before = job.previous
    if before is None or not os.path.isfile(before.output):
        return None
    output = images.to_tensor(before.output)
    long_side = max(output.shape[-2:])
    previous_content = images.resize_long_side(images.to_tensor(before.content, long_side), long_side)
    content = images.resize_long_side(images.to_tensor(content, long_side), long_side)
    if not previous_content.shape == content.shape == output.shape:
        return None
    return video.carry_over(previous_content, output, content)


def run(transfer, jobs, styles, opts, *, save: Callable, new_progress: Callable, save_every=0, live=None,
        init_previous=False) -> int:
    """Stylize each job's content with the same styles and options -> the number that
    failed. styles: {path: image}, in order; a job with a style takes only that one.
    opts: the Options, resolved (StyleTransfer.resolve). save(image, path, alpha, opts)
    writes an image with the content's transparency (images.alpha) and the options that
    made it; new_progress() makes a step callback. init_previous: start each image from
    the result before it where that exists (else as opts.init says). A content that
    cannot be read or optimised is reported and skipped; Ctrl-C stops the batch
    (Interrupted)."""
    failed, spent = 0, []  # the seconds each written image took
    for number, job in enumerate(jobs, 1):
        left = ""
        if spent:  # the batch's time left, from the images written so far
            left = f" (about {_duration(sum(spent) / len(spent) * (len(jobs) - number + 1))} left)"
        _say(f"[{number}/{len(jobs)}] {job.content} -> {job.output}{left}")
        started = time.perf_counter()
        try:
            content = images.open_image(job.content)
            start = _start_from_previous(job, content) if init_previous else None
            result = _stylize_job(transfer, job, content, styles, opts if start is None else opts.with_images(init=start),
                                  save, new_progress, save_every, live)
        except Interrupted as exc:
            hint = f"; run the same command to continue ({job.checkpoint})" if os.path.isfile(job.checkpoint) else ""
            raise Interrupted(f"{job.content}: {exc}{hint}", image=exc.image, step=exc.step) from None
        except NstError as exc:  # NonFiniteLoss too: the next image may do fine
            kind = "gave up" if isinstance(exc, NonFiniteLoss) else "error"
            message = str(exc) if str(exc).startswith(job.content) else f"{job.content}: {exc}"
            _say(f"{kind}: {message}")
            failed += 1
            continue
        if result.note:
            _say(f"{job.content}: {result.note}")
        save(result.image, job.output, result.alpha, result.options)
        spent.append(time.perf_counter() - started)
        if os.path.isfile(job.checkpoint):
            os.remove(job.checkpoint)
    return failed


def _stylize_job(transfer, job, content, styles, opts, save, new_progress, save_every, live):
    """One job's run of its decoded content with its resolved options -> its RunResult;
    from its checkpoint where there is one that fits."""
    alpha = images.alpha(content, opts.size)
    stem = os.path.splitext(job.output)[0]
    hooks = Hooks(callback=new_progress(), save_every=save_every, live=live,
                  snapshot=(lambda step, image: save(image, f"{stem}.step{step:04d}.png", alpha, opts))
                  if save_every else None,
                  checkpoint=job.checkpoint if opts.checkpoint_every else None, interrupt_checkpoint=job.checkpoint)
    resume = job.checkpoint if os.path.isfile(job.checkpoint) else None
    if resume:
        _say(f"continuing from {resume}")
    run_styles = [styles[job.style]] if job.style else list(styles.values())
    while True:
        try:
            return transfer.run(content, run_styles, opts, hooks=hooks, resume=resume)
        except CheckpointMismatch as exc:
            _say(f"{exc}; starting this image over")
            resume = None
