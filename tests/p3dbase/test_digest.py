"""p3dbase.digest: the key settings are tied by."""
from p3dbase.digest import settings_key


def test_settings_key_is_the_settings_whatever_their_order():
    a = settings_key({"bound": 20.0, "size": "340x256", "params": {"tau": 0.25, "lambda_": 0.15}})
    assert a == settings_key({"params": {"lambda_": 0.15, "tau": 0.25}, "size": "340x256", "bound": 20.0})
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != settings_key({"bound": 20.0, "size": "340x256", "params": {"tau": 0.25, "lambda_": 0.1}})
    # the key of record: stores and caches written before keep theirs (sha256 of sorted-key JSON)
    assert settings_key({"a": 1}) == "f9d86028c6e0d64e"
