from __future__ import annotations

import pytest

from handlers.digits_options import DigitsOptions
from servekit.runtime.errors import ModelLoadError
from servekit.runtime.options import HandlerOptions


def test_defaults_when_section_is_absent() -> None:
    assert HandlerOptions.from_section(None) == HandlerOptions()


def test_values_are_typed() -> None:
    options = DigitsOptions.from_section({"top_k": 5, "invert": "never", "warmup": False})
    assert (options.top_k, options.invert, options.warmup) == (5, "never", False)


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        (
            {"top_kk": 3},
            "unknown handler option 'top_kk' in section 'handler'; did you mean 'top_k'?",
        ),
        ({"top_k": "3"}, "handler option 'top_k' in section 'handler' is '3' (str); expected int"),
        ({"warmup": 1}, "handler option 'warmup' in section 'handler' is 1 (int); expected bool"),
        ({"top_k": True}, "expected int"),
        ({"top_k": 0}, "'top_k' is 0; it must be 1..10"),
        ({"invert": "maybe"}, "allowed: auto, never, always"),
        ({"warmup_batch_size": 0}, "'warmup_batch_size' is 0; it must be >= 1"),
        (["warmup"], "must be a mapping of options, got list"),
        ({"zzz": 1}, "known options:"),
    ],
)
def test_bad_options_name_the_option(section: object, fragment: str) -> None:
    with pytest.raises(ModelLoadError) as err:
        DigitsOptions.from_section(section)
    assert fragment in str(err.value)


def test_declared_lists_every_option_with_its_type() -> None:
    declared = DigitsOptions.declared()
    assert declared["top_k"] == "int"
    assert declared["warmup"] == "bool"
    assert declared["invert"] == "str"


def test_a_list_of_floats_may_be_written_with_integers() -> None:
    from servekit.runtime.vision import ImageOptions

    options = ImageOptions.from_section({"mean": [0, 0.5, 1], "std": [1, 1, 1]})
    assert options.mean == (0.0, 0.5, 1.0) and all(type(v) is float for v in options.std)
    with pytest.raises(ModelLoadError, match="expected list of float"):
        ImageOptions.from_section({"mean": [True, 0, 0]})
