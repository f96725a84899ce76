"""One run, one flow: options resolved once into a new frozen object, hooks in one
object, and one RunResult from every run, also inside the exception of a stopped one."""
import dataclasses

import pytest
import torch

from nst_fast import Hooks, Interrupted, NonFiniteLoss, NstError, Options, RunResult, StyleTransfer


@pytest.fixture(scope="module")
def transfer():
    return StyleTransfer(weights="random", device="cpu")


def test_options_are_frozen_and_resolving_makes_a_new_object():
    given = Options(size=64, normalize_weights=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.size = 32
    resolved = given.resolve(n_styles=2)
    assert resolved is not given and resolved.resolved and not given.resolved
    assert given.style_layers is None and given.style_blend is None  # untouched
    assert resolved.style_blend == [0.5, 0.5] and abs(sum(resolved.style_layers.values()) - 1) < 1e-12


def test_a_resolved_options_is_not_resolved_again(transfer):
    """normalize_weights divides by the channels once: resolving the result again would divide twice."""
    once = transfer.resolve(Options(normalize_weights=True), 1)
    assert transfer.resolve(once, 1) is once


def test_options_resolved_before_the_weights_load_get_their_style_weight_after():
    early = Options(size=64).resolve(convention=None)
    assert early.resolved and early.style_weight is None
    assert early.for_convention("caffe").style_weight == Options().resolve(convention="caffe").style_weight
    given = Options(style_weight=3.0).resolve(convention=None)
    assert given.for_convention("caffe").style_weight == 3.0


def test_every_run_returns_a_run_result(transfer, small_images):
    content, style = small_images
    seen = []
    result = transfer.run(content, style, Options(scales=[32, 48], steps=2), hooks=Hooks(callback=seen.append))
    assert isinstance(result, RunResult)
    assert result.image.shape == (1, 3, 36, 48) and 0 <= result.image.min() and result.image.max() <= 1
    assert result.sizes == [(24, 32), (36, 48)] and result.steps == 4 == len(result.history) == len(seen)
    assert result.options.resolved and result.options.scales == [32, 48]
    assert result.backend in ("extension", "reference") and not result.cuda_graph and result.why_not
    assert result.notes == [] and result.note is None
    assert result.to_pil().size == (48, 36)
    for name in ("history", "last_run", "last_options"):  # nothing to read off the transfer after a run
        assert not hasattr(transfer, name), name


def test_fields_stand_for_options_and_hooks_but_not_beside_them(transfer, small_images):
    content, style = small_images
    seen = []
    by_fields = transfer.run(content, style, size=32, steps=2, callback=seen.append)
    by_objects = transfer.run(content, style, Options(size=32, steps=2))
    assert torch.equal(by_fields.image, by_objects.image) and len(seen) == 2
    with pytest.raises(NstError, match=r"^give options or their fields \(steps\), not both$"):
        transfer.run(content, style, Options(size=32), steps=2)
    with pytest.raises(NstError, match=r"^give hooks or their fields \(callback\), not both$"):
        transfer.run(content, style, hooks=Hooks(), callback=print)


def test_hooks_are_checked_before_the_first_step(transfer, small_images):
    content, style = small_images
    with pytest.raises(NstError, match="^callback must be a function of a StepInfo, got 'print'$"):
        transfer.run(content, style, size=32, steps=1, callback="print")
    with pytest.raises(NstError, match="^save_every and snapshot go together"):
        transfer.run(content, style, size=32, steps=1, save_every=2)


def test_a_stopped_run_carries_its_result_so_far(transfer, small_images, tmp_path):
    content, style = small_images

    def stop(info):
        if info.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        transfer.run(content, style, size=32, steps=10, callback=stop, interrupt_checkpoint=tmp_path / "run.ckpt")
    result = caught.value.result
    assert result.steps == caught.value.step == 3 and len(result.history) == 3
    assert torch.equal(result.image, caught.value.image) and result.image.shape == (1, 3, 24, 32)
    with pytest.raises(NonFiniteLoss) as caught:
        transfer.run(content, style, size=32, steps=10, style_weight=1e300, content_weight=1e300)
    assert caught.value.result.image is not None and caught.value.result.options.style_weight == 1e300


def test_resolved_options_are_refused_for_another_run(transfer, small_images):
    content, style = small_images
    one_style = Options(size=32, steps=1).resolve(n_styles=1, devices=transfer.devices)
    assert one_style.resolve(n_styles=1, devices=transfer.devices) is one_style
    with pytest.raises(NstError, match=r"^these options were resolved for 1 style image\(s\).*this run has 2"):
        transfer.run(content, [style, style], one_style)
    with pytest.raises(NstError, match="network vgg19 .* this run has .* nin"):
        one_style.resolve(n_styles=1, network="nin", devices=transfer.devices)


def test_stylize_takes_hooks_and_options_objects_with_its_progress_line(small_images, capsys):
    import nst_fast

    content, style = small_images
    seen = []
    image = nst_fast.stylize(content, style, weights="random", device="cpu", options=Options(size=32, steps=2),
                             hooks=Hooks(callback=seen.append))
    assert image.size == (32, 24) and [info.step for info in seen] == [1, 2]
    assert "2/2" in capsys.readouterr().err  # the progress line ran beside the user's callback
