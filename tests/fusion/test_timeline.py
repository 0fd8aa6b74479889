"""predict --timeline's picture: its labels."""


def test_thumbnail_times_get_the_decimals_that_tell_them_apart():
    """predict --timeline's thumbnails 0.13 s apart were labelled 0.1, 0.1, 0.3, 0.3, 0.5, 0.5."""
    from fusion.timeline import time_labels

    assert time_labels([0.0, 0.5, 1.0]) == ["0.0", "0.5", "1.0"]
    assert time_labels([0.1, 0.133, 0.267, 0.3]) == ["0.10", "0.13", "0.27", "0.30"]
    assert time_labels([1.0, 1.001]) == ["1.000", "1.001"]
