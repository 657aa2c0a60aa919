"""An error in one line."""

import pytest

from bookworm_scheduler.kernel.errors import one_line

pytestmark = pytest.mark.unit


def test_an_error_is_its_type_and_the_first_line_of_its_message():
    assert one_line(ValueError("  bad value\nsecond line\n")) == "ValueError: bad value"


def test_an_error_without_a_message_is_its_type():
    assert one_line(TimeoutError()) == "TimeoutError"


def test_a_name_may_stand_for_the_type():
    assert one_line(OSError("refused"), "OSError (SQLSTATE 08006)") == "OSError (SQLSTATE 08006): refused"
