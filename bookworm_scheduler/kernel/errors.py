"""An error in one line, for a log event's `error` key and an attempt's or a message's record."""


def one_line(exc: BaseException, name: str | None = None) -> str:
    """Its type (or `name`) and the first line of its message: 'TimeoutError: no confirm within 30 s'."""
    lines = str(exc).strip().splitlines()
    name = name or type(exc).__name__
    return f"{name}: {lines[0]}" if lines else name
