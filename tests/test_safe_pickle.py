import os
import pickle

import numpy as np
import pytest

from base.errors import UserError
from base.safe_pickle import load_pickle, save_pickle


def _write(path, obj, protocol=4):
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_plain_containers_and_numpy_scalars_round_trip(tmp_path, protocol):
    obj = {
        "partition": {"Train_Set": {"a": 3, "b": np.int64(5)}},
        "stats": {0: {"Train_Set": {"mean": np.float64(1.5), "std": np.float32(2.0)}}},
        "misc": [1.0, "x", None, True, (1, 2), {3, 4}, frozenset({5}), b"raw"],
    }
    loaded = load_pickle(_write(tmp_path / "x.pkl", obj, protocol))
    assert loaded == obj
    assert type(loaded["stats"][0]["Train_Set"]["mean"]) is np.float64


def test_pickled_function_is_refused(tmp_path):
    path = _write(tmp_path / "f.pkl", {"f": os.path.join})
    with pytest.raises(UserError, match=r"refusing to load .*f\.pkl: the class posixpath\.join is not allowed"):
        load_pickle(path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_reduce_to_os_system_is_refused_and_not_run(tmp_path):
    path = _write(tmp_path / "evil.pkl", _Exploit())
    with pytest.raises(UserError, match=r"the class posix\.system is not allowed"):
        load_pickle(path)


def test_numpy_array_is_refused(tmp_path):
    path = _write(tmp_path / "a.pkl", np.zeros(3))
    with pytest.raises(UserError, match="is not allowed"):
        load_pickle(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match=r"the file .*nope\.pkl does not exist"):
        load_pickle(tmp_path / "nope.pkl")
    truncated = tmp_path / "cut.pkl"
    truncated.write_bytes(pickle.dumps({"a": list(range(100))})[:20])
    with pytest.raises(UserError, match=r"is not a readable pickle"):
        load_pickle(truncated)


def test_save_pickle_is_atomic_and_protocol_4(tmp_path):
    target = tmp_path / "sub" / "out.pkl"
    save_pickle({"a": 1}, target)
    data = target.read_bytes()
    assert data[:2] == b"\x80\x04"
    assert load_pickle(target) == {"a": 1}
    save_pickle({"a": 2}, target)  # overwrite
    assert load_pickle(target) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.pkl"]  # no temporary left over


def test_save_pickle_failure_keeps_old_file(tmp_path):
    target = tmp_path / "out.pkl"
    save_pickle({"a": 1}, target)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_pickle({"f": lambda: 0}, target)
    assert load_pickle(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.pkl"]
