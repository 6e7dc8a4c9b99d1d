"""Read a PyTorch state dict file (.pth, zip or legacy layout) without unpickling it.

The file's pickle program is interpreted here opcode by opcode (pickletools parses, nothing is imported or
called): it may build dicts, lists, tuples, numbers and strings, and tensors through torch's rebuild function
over its raw storages. Any other global is refused. Used for weights published only in this format (the FID
Inception weights); diffuse's own files are safetensors.
"""

from __future__ import annotations

import collections
import io
import pickletools
import struct
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from diffuse import DiffuseError

STORAGE_DTYPES = {f"{name}Storage": dtype for name, dtype in (
    ("Float", torch.float32), ("Double", torch.float64), ("Half", torch.float16), ("BFloat16", torch.bfloat16),
    ("Long", torch.int64), ("Int", torch.int32), ("Short", torch.int16), ("Char", torch.int8),
    ("Byte", torch.uint8), ("Bool", torch.bool))}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Pending:
    """A tensor of a legacy file, whose storage bytes come after the pickle."""

    def __init__(self, key: str, args: tuple):
        self.key, self.args = key, args


def _rebuild_tensor(storage, offset: int, size: tuple, stride: tuple, *_ignored):
    if isinstance(storage, tuple) and storage[:1] == ("storage-ref",):
        return _Pending(storage[1], (offset, size, stride))
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _global(module: str, name: str):
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
        return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
        return lambda data, requires_grad, hooks, *_: data
    if module == "torch" and name in STORAGE_DTYPES:
        return ("storage-type", STORAGE_DTYPES[name])
    raise DiffuseError(f"the file's pickle asks for {module}.{name}, which a weights file does not need; refused")


def _interpret(stream: io.BufferedIOBase, persistent_load) -> object:
    """Run one pickle program from `stream` on a stack machine that knows only data-building opcodes."""
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark() -> list:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    for op, arg, _ in pickletools.genops(stream):
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            return stack.pop()
        if name == "MARK":
            marks.append(len(stack))
        elif name == "GLOBAL":
            stack.append(_global(*arg.split(" ", 1)))
        elif name == "STACK_GLOBAL":
            qual = stack.pop()
            stack.append(_global(stack.pop(), qual))
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name == "LIST":
            stack.append(pop_mark())
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in ("BININT", "BININT1", "BININT2", "INT", "LONG", "LONG1", "LONG4", "BINFLOAT", "FLOAT",
                      "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE", "BINSTRING",
                      "SHORT_BINSTRING", "STRING", "BINBYTES", "SHORT_BINBYTES"):
            stack.append(arg)
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo[arg])
        elif name == "SETITEM":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        elif name == "SETITEMS":
            items = pop_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name == "APPEND":
            value = stack.pop()
            stack[-1].append(value)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name == "REDUCE":
            args, fn = stack.pop(), stack.pop()
            if not callable(fn):
                raise DiffuseError("the file's pickle calls something that is not an allowed constructor")
            stack.append(fn(*args))
        elif name == "BUILD":
            stack.pop()  # object state, e.g. a state dict's `_metadata`: not needed for the tensors
        elif name == "BINPERSID":
            stack.append(persistent_load(stack.pop()))
        else:
            raise DiffuseError(f"the file's pickle uses opcode {name}, which a weights file does not need; refused")
    raise DiffuseError("the file's pickle ends without STOP")


def _storage_from(raw: bytes, dtype: torch.dtype) -> Tensor:
    return torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)


def _read_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
        if pkl is None:
            raise DiffuseError(f"{path} is a zip file without data.pkl: not a PyTorch weights file")
        prefix = pkl[: -len("data.pkl")]
        byteorder = z.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        if byteorder != "little":
            raise DiffuseError(f"{path}: big-endian weights are not supported")

        def load(pid):
            kind, storage_type, key, _location, numel = pid[:5]
            if kind != "storage" or not (isinstance(storage_type, tuple) and storage_type[0] == "storage-type"):
                raise DiffuseError(f"{path}: unexpected storage record {pid!r}")
            return _storage_from(z.read(f"{prefix}data/{key}"), storage_type[1])[:numel]

        with z.open(pkl) as f:
            return _interpret(io.BufferedReader(f), load)


def _read_legacy(path: Path) -> dict:
    with open(path, "rb") as f:
        stream = io.BufferedReader(f)
        if _interpret(stream, None) != LEGACY_MAGIC:
            raise DiffuseError(f"{path} is neither a zip nor a legacy PyTorch file")
        _interpret(stream, None)  # protocol version
        info = _interpret(stream, None)  # system info
        if isinstance(info, dict) and info.get("little_endian") is False:
            raise DiffuseError(f"{path}: big-endian weights are not supported")
        wanted: dict[str, torch.dtype] = {}

        def load(pid):
            kind, storage_type, key, _location, _numel, view = pid
            if kind != "storage" or view is not None or not isinstance(storage_type, tuple):
                raise DiffuseError(f"{path}: unexpected storage record {pid!r}")
            wanted[key] = storage_type[1]
            return ("storage-ref", key)

        placeholder = _interpret(stream, load)  # the object, with storage references still to fill in
        keys = _interpret(stream, None)
        storages = {}
        for key in keys:
            dtype = wanted[key]
            (numel,) = struct.unpack("<q", stream.read(8))
            size = numel * torch.empty(0, dtype=dtype).element_size()
            raw = stream.read(size)
            if len(raw) != size:
                raise DiffuseError(f"{path} is truncated")
            storages[key] = _storage_from(raw, dtype)
    return _fill(placeholder, storages)


def _fill(obj, storages: dict):
    """Legacy files name storages before their bytes: rebuild the tensors once the bytes are read."""
    if isinstance(obj, dict):
        return obj.__class__((k, _fill(v, storages)) for k, v in obj.items())
    if isinstance(obj, _Pending):
        return _rebuild_tensor(storages[obj.key], *obj.args)
    return obj


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A flat {name: tensor} from a PyTorch .pth/.pt file, without unpickling."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            state = _read_zip(path)
        else:
            state = _read_legacy(path)
    except DiffuseError:
        raise
    except Exception as e:  # a damaged or foreign file
        raise DiffuseError(f"{path} is not a readable PyTorch weights file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DiffuseError(f"{path} does not hold a flat state dict of tensors")
    return dict(state)
