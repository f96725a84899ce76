"""Options given through the Python API: wrong types and values are NstErrors that say what is wanted."""
import numpy as np
import pytest
import torch

from nst_fast import NstError
from nst_fast.optimize.options import OPTION_FIELDS, Options


def validated(**kwargs):
    return Options.from_kwargs(kwargs).resolve(n_styles=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seed": 2**64}, "seed must be a whole number from 0 to 2\\*\\*63 - 1"),
        ({"seed": -1}, "seed must be"),
        ({"scales": 32}, "scales must be a list of numbers, got 32"),
        ({"scales": "32,4x8"}, "scales must be a list of whole numbers"),
        ({"style_blend": 1}, "style_blend must be a list of numbers"),
        ({"style_blend": ["a", "b"]}, "style_blend must be a list of numbers"),
        ({"report_every": "5"}, "report_every must be a whole number"),
        ({"report_every": 0}, "report_every must be a whole number, at least 1"),
        ({"memory_limit": "1G"}, "memory_limit \\(bytes\\) must be a finite number"),
        ({"memory_limit": 0}, "memory_limit \\(bytes\\) must be positive"),
        ({"content_layers": 5}, "content layers must be a string like"),
        ({"wieghts": "random"}, "did you mean 'weights'\\? an argument of nst_fast.stylize and StyleTransfer"),
        ({"devise": "cpu"}, "did you mean 'device'"),
        ({"scales": [48, 48]}, "scales must be increasing"),
        ({"initial_steps": 5}, "initial_steps sets the steps at the first of several scales: give scales"),
        ({"scales": [256, 300.7]}, "scales must be a list of whole numbers"),  # not truncated to 300
        ({"scales": [32, 64], "size": 48}, "size 48 and scales ending at 64 disagree"),
        ({"fit_memory": "no"}, "fit_memory must be True or False, got 'no'"),
        ({"cuda_graph": 0}, "cuda_graph must be True or False, got 0"),
        ({"steps": True}, "steps must be an integer, got True"),
        ({"style_weight": True}, "style_weight must be a finite number, got True"),
        ({"style_blend": [True, 1]}, "style_blend must be a list of numbers"),
        ({"style_layers": "relu1_1:0.2,relu2_1,relu1_1:0.8"}, "^style layer relu1_1 is given more than once"),
        ({"style_layers": ["relu2_1", "relu2_1"]}, "^style layer relu2_1 is given more than once"),
        ({"content_layers": "relu4_2, relu4_2:1"}, "^content layer relu4_2 is given more than once"),
        ({"style_layers": "relu1_1:,relu2_1"}, "^style layer relu1_1 has no weight after its ':'"),
        ({"content_layers": ["relu4_2: "]}, "^content layer relu4_2 has no weight after its ':'"),
    ],
)
def test_bad_option_types(kwargs, message):
    with pytest.raises(NstError, match=message):
        validated(**kwargs)


def test_lists_may_be_given_as_comma_separated_strings():
    opts = validated(scales="32, 48", style_blend="3,1", memory_limit=8e9, seed=2**63 - 1)
    assert opts.scales == [32, 48]
    assert opts.style_blend == [0.75, 0.25]


def test_the_size_is_the_last_scale():
    assert validated(scales=[32, 64]).size == 64  # the recipe then says what was made
    assert validated(scales=[32, 64], size=64).size == 64
    assert validated().size == 512


def test_numpy_and_tensor_numbers_are_numbers():
    opts = validated(size=np.int64(64), steps=torch.tensor(3), style_weight=np.float32(1e5), lr=torch.tensor(0.5),
                     style_blend=np.array([3.0, 1.0]), scales=torch.tensor([32, 64]), fit_memory=np.bool_(True))
    assert (opts.size, opts.steps, opts.style_weight, opts.lr) == (64, 3, 1e5, 0.5)
    assert type(opts.size) is int and type(opts.style_weight) is float and opts.fit_memory is True
    assert opts.style_blend == [0.75, 0.25] and opts.scales == [32, 64]


def test_huge_blend_weights_keep_their_ratio():
    assert validated(style_blend=[1e308, 1e308]).style_blend == [0.5, 0.5]


@pytest.mark.parametrize("devices, capability, expected", [
    (["cpu"], None, "fp32"),
    ([], None, "fp32"),
    (["cuda"], (9, 0), "tf32"),  # Hopper
    (["cuda"], (8, 6), "tf32"),  # Ampere
    (["cuda"], (7, 5), "fp32"),  # Turing: no TF32
    (["cpu", "cuda:1"], (8, 0), "tf32"),
])
def test_default_precision_is_tf32_only_on_gpus_that_have_it(monkeypatch, devices, capability, expected):
    asked = []

    def capability_of(device):
        asked.append(torch.device(device))
        return capability

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    opts = Options().resolve(devices=[torch.device(d) for d in devices])
    assert opts.precision == expected
    assert asked == [torch.device(d) for d in devices if d.startswith("cuda")][:1]


def test_a_given_precision_is_kept_on_any_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert Options(precision="fp32").resolve(devices=[torch.device("cuda")]).precision == "fp32"
    assert Options(precision="bf16").resolve(devices=[torch.device("cpu")]).precision == "bf16"


def test_the_lists_of_options_are_read_from_the_fields():
    from nst_fast.optimize import checkpoint, options, recipe

    assert options.NUMBER_FIELDS == (
        "size", "steps", "initial_steps", "content_weight", "style_weight", "tv_weight", "lr", "lbfgs_history",
        "avg_decay", "seed", "style_scale", "style_size", "min_scale", "report_every", "checkpoint_every",
        "memory_limit")
    assert options.BOOL_FIELDS == ("mrf_variants", "normalize_gradients", "normalize_weights", "cuda_graph",
                                   "fit_memory", "low_memory")
    assert recipe.SETTINGS == (
        "size", "steps", "initial_steps", "content_weight", "style_weight", "tv_weight", "content_layers",
        "style_layers", "style_loss", "mrf_variants", "optimizer", "lr", "lbfgs_history", "normalize_gradients",
        "normalize_weights", "avg_decay", "seed", "precision", "style_blend", "style_scale", "style_size",
        "preserve_colors")
    # The order is part of the hash: checkpoints made before must still match.
    assert checkpoint.FINGERPRINT_OPTIONS == (
        "content_weight", "style_weight", "tv_weight", "content_layers", "style_layers", "optimizer", "lr",
        "lbfgs_history", "normalize_gradients", "precision", "style_blend", "style_scale", "style_size",
        "preserve_colors", "avg_decay", "style_loss", "mrf_variants")


def test_every_option_has_a_flag():
    import dataclasses

    fields = dataclasses.fields(Options)
    assert [field.name for field in fields if field.name not in OPTION_FIELDS] == ["resolved"]  # set by resolve()
    for field in fields:
        if field.name in OPTION_FIELDS:
            assert set(field.metadata) == {"kind", "flag", "cli", "recorded", "fingerprint"}, field.name
            assert field.metadata["flag"] is not None, field.name
            assert "default" not in field.metadata["cli"], field.name  # a flag not given leaves the field's default
