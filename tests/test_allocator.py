"""The command line keeps freed memory for the next tensors (diffuse/allocator.py): measured as page faults of a
large tensor allocated again after it was freed, in processes of their own."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import pytest

from diffuse import DiffuseError
from diffuse.allocator import SWITCH, keep_freed_memory, user_tuned

from conftest import cli_in_process, run_cli

# A fresh process: (maybe) keep freed memory, then 12 times allocate two 64 MiB tensors (filled) and free them, and
# count the minor page faults of the last 3 times (glibc's heap settles within the first few).
PROBE = """
import json, resource, torch
from diffuse.allocator import keep_freed_memory
kept = keep_freed_memory()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20); y = x * 2; del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept[0], "faults": sum(faults[-3:])}))
"""


def probe(switch: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, SWITCH: switch}, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_tensor_serves_the_next_one_without_page_faults():
    kept, default = probe("1"), probe("0")
    if not kept["kept"]:
        pytest.skip("this Linux has no glibc mallopt")
    assert default["kept"] is False
    # glibc maps each block afresh, so its pages fault in again: every page (3 times two tensors), or with huge pages
    # (THP "always") every 2 MiB
    assert default["faults"] >= 3 * 2 * 64 * 2**20 // max(resource.getpagesize(), 2**21)
    assert kept["faults"] * 10 < default["faults"]  # the freed heap serves them


def test_the_users_own_malloc_settings_and_the_switch_are_respected():
    assert user_tuned({"MALLOC_ARENA_MAX": "2", "PATH": "/bin"}) == "MALLOC_ARENA_MAX"
    assert user_tuned({"GLIBC_TUNABLES": "glibc.rtld.nns=2:glibc.malloc.mmap_max=0"}) == "GLIBC_TUNABLES"
    assert user_tuned({"MALLOC": "x", "GLIBC_TUNABLES": "glibc.rtld.nns=2", "PATH": "/bin"}) is None
    assert keep_freed_memory({SWITCH: "0"}) == (False, f"malloc: its own settings ({SWITCH}=0)")
    kept, why = keep_freed_memory({"MALLOC_TOP_PAD_": "0"})
    assert not kept and "MALLOC_TOP_PAD_" in why
    with pytest.raises(DiffuseError, match=f"{SWITCH}='yes': allowed 1 .* or 0"):
        keep_freed_memory({SWITCH: "yes"})


def test_a_bad_switch_is_one_line_and_exit_2(tmp_path):
    proc = run_cli("sample", "ckpt=missing.safetensors", cwd=tmp_path, env={SWITCH: "on"}, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"diffuse sample: error: {SWITCH}='on': allowed 1 (keep freed memory for the next tensors, the default) or 0 "
        "(glibc's own malloc settings)"]


def test_the_run_log_says_whose_malloc_settings_it_ran_with(tiny_run, tmp_path):
    cli_in_process("sample", f"ckpt={tiny_run / 'run'}", "steps=2", "n=2", "hydra.run.dir=s", cwd=tmp_path,
                   env={SWITCH: "1", "MALLOC_ARENA_MAX": "4"})  # the user's own setting: mallopt is not called
    first = (tmp_path / "s" / "sample.log").read_text().splitlines()[0]
    assert first.endswith(f"malloc: glibc's settings with the environment's MALLOC_ARENA_MAX ({SWITCH} leaves them as "
                          "they are)")
