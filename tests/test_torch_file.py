"""The pickle-free reader of PyTorch weight files (for the FID Inception weights)."""

import pytest
import torch

from diffuse import DiffuseError
from diffuse.torch_file import read_state_dict


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_both_layouts_bit_for_bit(tmp_path, zip_format):
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    state = {**module.state_dict(), "strided": torch.arange(12.0).view(3, 4).t(), "half": torch.ones(3).half()}
    path = tmp_path / "w.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    got = read_state_dict(path)
    assert list(got) == list(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_refuses_code_and_damaged_files(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(b"\x80\x02cos\nsystem\nX" + len(f"touch {marker}").to_bytes(4, "little")
                     + f"touch {marker}".encode() + b"\x85R.")
    with pytest.raises(DiffuseError, match="os.system"):
        read_state_dict(evil)
    assert not marker.exists()
    good = tmp_path / "good.pth"
    torch.save({"w": torch.ones(1000)}, good, _use_new_zipfile_serialization=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(DiffuseError, match="truncated|not a readable"):
        read_state_dict(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a weights file at all")
    with pytest.raises(DiffuseError):
        read_state_dict(garbage)
