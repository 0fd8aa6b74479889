"""The ground's message helpers: quoting a bad line without flooding the one-line error."""
from p3dbase.errors import excerpt


def test_excerpt_quotes_short_text_whole_and_long_text_in_part():
    assert excerpt("a b\t1") == "'a b\\t1'"
    assert excerpt("y" * 80) == repr("y" * 80)
    assert excerpt("y" * 81) == f"{'y' * 80!r}... (81 characters)"
