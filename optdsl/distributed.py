"""Data-parallel training over MPI: every process steps the same parameters with the sum
(or mean) of all processes' gradients.

    from mpi4py import MPI
    from optdsl.distributed import AllReduce

    opt = optdsl.optim.Adam(params, lr=1e-3)
    opt.register_grad_hook(AllReduce(MPI.COMM_WORLD))   # average=True, bucket_mb=25
    ...                                                 # each rank: its shard of the batch
    opt.step()                                          # the same step on every rank

optdsl brings no transport of its own: :class:`AllReduce` takes an mpi4py communicator
(``pip install 'optdsl[mpi]'``) and calls its buffer-based ``Allreduce``, no pickle
involved. Launch with ``mpiexec -n 2 python -m mpi4py train.py``: run through
``-m mpi4py``, a rank that raises aborts the whole job instead of leaving the others
waiting in a collective.

Every step, before the collectives, the ranks compare a digest of their gradients'
layout (groups, shapes, dtypes): a rank whose parameters differ would otherwise hang its
peers or sum the wrong elements. On a mismatch every rank raises
:class:`DistributedError` naming the first difference.

Also here: :class:`ShardedOptimizer` (ZeRO stage 1: each rank keeps one shard of the
optimizer state; its checkpoints in optdsl/_zero_checkpoint.py), :class:`TorchAllReduce`
(torch.distributed, gloo) and :class:`NcclAllReduce` (CuPy gradients over NCCL,
optdsl/_nccl.py). docs/distributed.md has the whole story.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from . import arrays
from .errors import OptdslError
from .runtime import Param


class DistributedError(OptdslError):
    """The ranks disagree (parameter shapes, dtypes, groups) or a gradient cannot be
    reduced (a row-sparse or non-array gradient)."""


class AllReduce:
    """A grad hook (``opt.register_grad_hook(AllReduce(comm))``) that replaces every
    gradient by its sum over the ranks of ``comm`` (divided by their number with
    ``average``), in buckets of at most ``bucket_mb`` MiB issued in the same order on
    every rank. Gradients that lie end to end in one buffer (as ``optdsl.flatten`` leaves
    them) are reduced where they are; others are packed into a bucket buffer and back.

    ``buckets_last_step`` counts the collectives of the last step (for tests and
    benchmarks).

    ``compression="fp16"`` or ``"bf16"`` halves (float32) or quarters (float64) the bytes
    on the wire: each float32 or float64 bucket is cast to that dtype for the collective
    and back after, so every gradient ends rounded to the wire's precision (fp16: 11
    significant bits, up to 65504; bf16: 8 bits, float32's range); float16 and bfloat16
    gradients go as they are. With ``average`` each bucket is divided by the number of
    ranks *before* the cast (as torch's ``fp16_compress_hook`` does): the sum of means
    then overflows fp16 only where a rank's own value does. ``bucket_mb`` counts the
    gradient's bytes, not the wire's. How a bucket is summed depends on what the MPI
    can add up:

    - fp16 where MPI has a float16 type that ``MPI.SUM`` takes (MPICH 5's
      ``MPIX_C_FLOAT16``, mpi4py's ``MPI.FLOAT16_T``; tried once with
      ``MPI.SUM.Reduce_local``): one ``Allreduce`` on the fp16 buffer, MPI adding in fp16;
    - otherwise (bf16 on MPICH 5, whose ``MPI.BFLOAT16_T`` is ``MPI_DATATYPE_NULL``; fp16
      on an MPI without ``MPIX_C_FLOAT16``): one ``Allgather`` of the compressed bucket as
      bytes into a scratch of size x bucket, then every rank adds the ranks' parts in rank
      order in the gradient's own dtype: portable, and the same bits on every rank. Each
      rank receives size - 1 compressed buckets where a ring all-reduce moves about 2
      uncompressed ones: fewer bytes up to 3 ranks for float32 (7 for float64).

    Without compression, a bfloat16 gradient takes the second path too (MPI cannot add
    bfloat16)."""

    def __init__(self, comm: Any, average: bool = True, bucket_mb: float = 25.0,
                 compression: str | None = None):
        for method in ("Allreduce", "Allgather", "Get_size", "Get_rank"):
            if not callable(getattr(comm, method, None)):
                raise TypeError(f"AllReduce needs an mpi4py communicator (with {method}), "
                                f"got {type(comm).__name__}")
        if not isinstance(average, (bool, np.bool_)):
            raise TypeError(f"AllReduce: average must be True or False, got {average!r}")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) \
                or not bucket_mb > 0:
            raise ValueError(f"AllReduce: bucket_mb must be a positive number of MiB, got "
                             f"{bucket_mb!r}")
        self.comm, self.average = comm, bool(average)
        self.bucket_bytes = max(1, int(bucket_mb * (1 << 20)))
        self.compression, self._wire_dtype = compression, _wire_dtype(compression)
        self.buckets_last_step = 0
        self._scratch: dict[np.dtype, Any] = {}
        self._wire_scratch: dict[str, np.ndarray] = {}  # compressed buckets, gathered parts
        self._sum_types: dict[str, Any] = {}  # a 16-bit float's MPI datatype, or None

    def __repr__(self) -> str:
        return (f"AllReduce(size={self.comm.Get_size()}, average={self.average}, "
                f"bucket_mb={self.bucket_bytes / (1 << 20):g}, "
                f"compression={self.compression!r})")

    def __call__(self, opt: Any, grads: list[list[Any]]) -> None:
        for index, group in enumerate(grads):
            for k, g in enumerate(group):
                if not isinstance(g, np.ndarray):
                    raise DistributedError(
                        f"AllReduce: param {k} of group {index} has a {type(g).__name__} "
                        "gradient; it reduces NumPy arrays (a row-sparse gradient: "
                        "densify it with .to_dense(shape) first)")
        self._check_layout(grads)
        size = self.comm.Get_size()
        self.buckets_last_step = 0
        for group in grads:
            for run in _runs(group):
                for bucket in self._buckets(run):
                    self._reduce(bucket)
        if self.average and size > 1 and self.compression is None:  # else: in _reduce
            for group in grads:
                for g in group:
                    g /= size

    # --- the layout check -----------------------------------------------------------------
    def _check_layout(self, grads: list[list[Any]]) -> None:
        """Every rank: the same groups, shapes and dtypes, or a DistributedError on all."""
        from mpi4py import MPI

        layout = [[(str(np.dtype(g.dtype)), tuple(int(d) for d in g.shape)) for g in group]
                  for group in grads]
        digest = np.frombuffer(hashlib.sha256(repr(layout).encode()).digest()[:8],
                               dtype=np.int64).copy()
        every = np.empty(self.comm.Get_size(), np.int64)
        self.comm.Allgather(digest, every)
        if (every == every[0]).all():
            return
        # Tell what differs: every rank's layout, as integers (buffer-based, no pickle).
        mine = _encode(layout)
        counts = np.empty(self.comm.Get_size(), np.int64)
        self.comm.Allgather(np.array([mine.size], np.int64), counts)
        whole = np.empty(int(counts.sum()), np.int64)
        self.comm.Allgatherv(mine, [whole, counts, MPI.INT64_T])
        layouts, start = [], 0
        for c in counts:
            layouts.append(_decode(whole[start:start + c]))
            start += c
        raise DistributedError(_difference(layouts))

    # --- buckets ---------------------------------------------------------------------------
    def _buckets(self, run: list[Any]):
        """Arrays to all-reduce in place for a run of gradients: slices of their common
        buffer when they lie end to end in one, else packed bucket buffers."""
        flat = _common_buffer(run)
        per = max(1, self.bucket_bytes // run[0].dtype.itemsize)
        if flat is not None:
            for lo in range(0, flat.size, per):
                yield flat[lo:lo + per]
            return
        bucket: list[Any] = []
        n = 0
        for g in run:
            if bucket and n + g.size > per:
                yield from self._packed(bucket, n)
                bucket, n = [], 0
            bucket.append(g)
            n += g.size
        if bucket:
            yield from self._packed(bucket, n)

    def _packed(self, grads: list[Any], n: int):
        # One cached buffer per dtype (keyed by the dtype: bfloat16's .str is '<V2').
        dtype = np.dtype(grads[0].dtype)
        buffer = self._scratch.get(dtype)
        if buffer is None or buffer.size < n:
            buffer = self._scratch[dtype] = self._empty(n, dtype)
        view, at = buffer[:n], 0
        for g in grads:
            view[at:at + g.size] = g.reshape(-1)
            at += g.size
        yield view  # reduced by the caller; then unpacked below
        at = 0
        for g in grads:
            g[...] = view[at:at + g.size].reshape(g.shape)
            at += g.size

    def _empty(self, n: int, dtype: np.dtype) -> Any:
        """A new bucket buffer, where the gradients live (NumPy here)."""
        return np.empty(n, dtype)

    def _reduce(self, buffer: np.ndarray) -> None:
        """Sum one bucket over the ranks, in place; with compression through the wire
        dtype, divided first with ``average``."""
        if not buffer.size:
            return
        size = self.comm.Get_size()
        scale = size if self.compression is not None and self.average and size > 1 else 1
        wire = buffer.dtype
        if self._wire_dtype is not None and buffer.dtype in _COMPRESSED:
            wire = self._wire_dtype
        if wire == buffer.dtype:
            if scale > 1:
                buffer /= scale
            self._sum(buffer, buffer)
        else:
            on_wire = self._spare(f"wire {wire.name}", buffer.size, wire)
            with np.errstate(over="ignore"):  # beyond fp16's 65504: inf, as torch's hook
                if scale > 1:  # before the cast, so that the sum of means cannot overflow
                    np.divide(buffer, scale, out=on_wire, casting="unsafe")
                else:
                    np.copyto(on_wire, buffer, casting="unsafe")
            self._sum(on_wire, buffer)
        self.buckets_last_step += 1

    def _sum(self, wire: np.ndarray, out: np.ndarray) -> None:
        """``out`` = the sum over the ranks of ``wire`` (``out`` may be ``wire``): one
        Allreduce where MPI adds wire's dtype, else one Allgather of its bytes, the parts
        added in rank order in out's dtype."""
        from mpi4py import MPI

        message: Any = wire  # float32, float64: mpi4py finds their MPI datatype itself
        if wire.dtype.name in _MPI_HALF_TYPES:
            if wire.dtype.name not in self._sum_types:
                self._sum_types[wire.dtype.name] = _mpi_half_type(wire.dtype)
            mpi_type = self._sum_types[wire.dtype.name]
            if mpi_type is None:
                self._gathered_sum(wire, out)
                return
            message = [wire.view(np.uint16), mpi_type]
        self.comm.Allreduce(MPI.IN_PLACE, message, op=MPI.SUM)
        if out is not wire:
            np.copyto(out, wire, casting="unsafe")

    def _gathered_sum(self, wire: np.ndarray, out: np.ndarray) -> None:
        """The sum for a dtype MPI cannot add: every rank gathers every rank's bytes and
        adds the parts in rank order, in out's dtype, so all get the same bits."""
        from mpi4py import MPI

        size = self.comm.Get_size()
        gathered = self._spare("gathered", size * wire.nbytes, np.dtype(np.uint8))
        self.comm.Allgather([wire.view(np.uint8), MPI.BYTE], [gathered, MPI.BYTE])
        parts = gathered.view(wire.dtype).reshape(size, wire.size)
        np.copyto(out, parts[0], casting="unsafe")
        for part in parts[1:]:
            np.add(out, part, out=out, casting="unsafe")

    def _spare(self, key: str, n: int, dtype: np.dtype) -> np.ndarray:
        """A cached scratch of n elements of dtype (grown, never shrunk)."""
        buffer = self._wire_scratch.get(key)
        if buffer is None or buffer.size < n or buffer.dtype != dtype:
            buffer = self._wire_scratch[key] = np.empty(n, dtype)
        return buffer[:n]


class TorchAllReduce(AllReduce):
    """:class:`AllReduce` over torch.distributed (gloo on the CPU) instead of MPI, for
    ``optdsl.torch`` optimizers: ``opt.register_grad_hook(TorchAllReduce())`` after
    ``torch.distributed.init_process_group("gloo")``. The same buckets, order, averaging
    and layout check; the collectives are ``torch.distributed``'s on tensors that share
    the NumPy buffers' memory (``torch.from_numpy``)."""

    def __init__(self, group: Any = None, average: bool = True, bucket_mb: float = 25.0,
                 compression: str | None = None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise DistributedError("TorchAllReduce needs torch.distributed initialised: "
                                   "torch.distributed.init_process_group('gloo') first")
        super().__init__(_TorchComm(group), average=average, bucket_mb=bucket_mb,
                         compression=compression)

    def __repr__(self) -> str:
        return "Torch" + super().__repr__()

    def _check_layout(self, grads: list[list[Any]]) -> None:
        import torch

        layout = [[(str(np.dtype(g.dtype)), tuple(int(d) for d in g.shape)) for g in group]
                  for group in grads]
        mine = _encode(layout)
        size = self.comm.Get_size()
        lengths = self.comm.all_gather(torch.tensor([mine.size], dtype=torch.int64))
        longest = int(max(t.item() for t in lengths))
        padded = torch.zeros(longest, dtype=torch.int64)
        padded[:mine.size] = torch.from_numpy(mine)
        every = self.comm.all_gather(padded)
        layouts = [_decode(every[r][:int(lengths[r].item())].numpy()) for r in range(size)]
        if any(other != layouts[0] for other in layouts[1:]):
            raise DistributedError(_difference(layouts).replace("AllReduce",
                                                                "TorchAllReduce", 1))

    def _sum(self, wire: np.ndarray, out: np.ndarray) -> None:
        # gloo adds float16 and bfloat16 itself: one all_reduce on every wire dtype
        self.comm.all_reduce(wire)
        if out is not wire:
            np.copyto(out, wire, casting="unsafe")


class _TorchComm:
    """What AllReduce asks of a communicator, on a torch.distributed process group."""

    def __init__(self, group: Any):
        self.group = group

    def Get_size(self) -> int:  # noqa: N802 - mpi4py's names
        import torch.distributed as dist

        return dist.get_world_size(self.group)

    def Get_rank(self) -> int:  # noqa: N802
        import torch.distributed as dist

        return dist.get_rank(self.group)

    def Allreduce(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - unused: _reduce
        raise NotImplementedError

    def Allgather(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802 - unused
        raise NotImplementedError

    def all_gather(self, tensor: Any) -> list:
        import torch
        import torch.distributed as dist

        out = [torch.empty_like(tensor) for _ in range(self.Get_size())]
        dist.all_gather(out, tensor, group=self.group)
        return out

    def all_reduce(self, buffer: np.ndarray) -> None:
        import torch
        import torch.distributed as dist

        if buffer.dtype.name == "bfloat16":  # torch.from_numpy knows no ml_dtypes
            tensor = torch.from_numpy(buffer.view(np.int16)).view(torch.bfloat16)
        else:
            tensor = torch.from_numpy(buffer)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)


_COMPRESSED = (np.dtype(np.float32), np.dtype(np.float64))  # what compression casts
# mpi4py's names for MPI's 16-bit float types: MPI_DATATYPE_NULL where the MPI has none
_MPI_HALF_TYPES = {"float16": "FLOAT16_T", "bfloat16": "BFLOAT16_T"}


def _wire_dtype(compression: Any) -> np.dtype | None:
    """The dtype that ``compression`` (None, "fp16" or "bf16") puts on the wire."""
    if compression is None:
        return None
    if compression == "fp16":
        return np.dtype(np.float16)
    if compression == "bf16":
        try:
            import ml_dtypes
        except ImportError:
            raise ImportError("AllReduce: compression='bf16' needs ml_dtypes for bfloat16 "
                              "arrays: pip install 'optdsl[bf16]'") from None
        return np.dtype(ml_dtypes.bfloat16)
    raise ValueError(f"AllReduce: compression must be None, 'fp16' or 'bf16', got "
                     f"{compression!r}")


def _mpi_half_type(dtype: np.dtype) -> Any:
    """MPI's datatype for the 16-bit float ``dtype`` if this MPI's ``MPI.SUM`` adds it
    (tried on two elements, in this process), else None."""
    from mpi4py import MPI

    mpi_type = getattr(MPI, _MPI_HALF_TYPES[dtype.name], MPI.DATATYPE_NULL)
    if mpi_type == MPI.DATATYPE_NULL:
        return None
    a, b = np.array([1.5, 0.25], dtype), np.array([0.5, 2.0], dtype)
    try:
        MPI.SUM.Reduce_local([a.view(np.uint16), mpi_type], [b.view(np.uint16), mpi_type])
    except MPI.Exception:
        return None
    return mpi_type if b.astype(np.float64).tolist() == [2.0, 2.25] else None


def _runs(group: list[Any]) -> list[list[Any]]:
    """The group's gradients split where the dtype changes (one bucket holds one dtype)."""
    runs: list[list[Any]] = []
    for g in group:
        if runs and runs[-1][0].dtype == g.dtype:
            runs[-1].append(g)
        else:
            runs.append([g])
    return runs


def _common_buffer(run: list[Any]) -> Any | None:
    """A 1-D view of ``run`` if its arrays are C-contiguous and lie end to end in one
    array (as optdsl.flatten lays them out), else None; NumPy or CuPy arrays. Each must be
    a view of the one array: arrays end to end in memory may be views of different ones
    (slices of a torch tensor, whose .numpy() has the tensor as base; two allocations from
    one chunk of CuPy's memory pool)."""
    if not all(g.flags.c_contiguous for g in run):
        return None
    for a, b in zip(run, run[1:], strict=False):
        if arrays.address(a) + a.nbytes != arrays.address(b):
            return None
    owner = _owner(run[0])
    if any(_owner(g) is not owner for g in run[1:]) or not owner.flags.c_contiguous \
            or owner.dtype != run[0].dtype:
        return None
    start = (arrays.address(run[0]) - arrays.address(owner)) // owner.itemsize
    n = sum(g.size for g in run)
    if start < 0 or start + n > owner.size:
        return None
    return owner.reshape(-1)[start:start + n]


def _owner(array: Any) -> Any:
    """The array that ``array`` is a view of (itself if it owns its memory)."""
    while arrays.is_array(array.base):
        array = array.base
    return array


def _encode(layout: list[list[tuple[str, tuple[int, ...]]]]) -> np.ndarray:
    """A layout as integers: groups, then per group its count, then per array the dtype's
    character code, its number of dimensions and its dimensions."""
    out = [len(layout)]
    for group in layout:
        out.append(len(group))
        for dtype, shape in group:
            out += [ord(np.dtype(dtype).char), len(shape), *shape]
    return np.array(out, np.int64)


def _decode(codes: np.ndarray) -> list[list[tuple[str, tuple[int, ...]]]]:
    it = iter(int(c) for c in codes)
    layout = []
    for _ in range(next(it)):
        group = []
        for _ in range(next(it)):
            dtype = _dtype_name(chr(next(it)))
            shape = tuple(next(it) for _ in range(next(it)))
            group.append((dtype, shape))
        layout.append(group)
    return layout


def _dtype_name(char: str) -> str:
    """The name of the dtype of character code ``char``: NumPy's, or ml_dtypes' bfloat16
    ('E'), whose code NumPy does not look up."""
    return "bfloat16" if char == "E" else str(np.dtype(char))


def _difference(layouts: list[list[list[tuple[str, tuple[int, ...]]]]]) -> str:
    """The first way a rank's layout differs from rank 0's, in words."""
    ref = layouts[0]
    for rank, layout in enumerate(layouts[1:], start=1):
        if len(layout) != len(ref):
            return (f"AllReduce: rank {rank} has {len(layout)} param groups, rank 0 "
                    f"{len(ref)}; every rank must build the same optimizer")
        for index, (mine, theirs) in enumerate(zip(layout, ref, strict=True)):
            if len(mine) != len(theirs):
                return (f"AllReduce: param group {index} has {len(mine)} gradients on rank "
                        f"{rank} but {len(theirs)} on rank 0")
            for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                if a != b:
                    return (f"AllReduce: param {k} of group {index} has a gradient of "
                            f"shape {a[1]} and dtype {a[0]} on rank {rank} but shape {b[1]} "
                            f"and dtype {b[0]} on rank 0; every rank must step the same "
                            "parameters")
    return "AllReduce: the ranks' gradients differ"  # pragma: no cover - digests collide


def consolidated_state_dict(path: Any) -> dict:
    """The unsharded optimizer's state_dict from a checkpoint written by
    :meth:`ShardedOptimizer.save`, sharded or consolidated, read in one process without
    MPI: ``opt.load_state_dict(consolidated_state_dict(path))`` resumes a plain optimizer
    over the same params, and ``optdsl.load(path, params=..., scheduler=...)`` the rest."""
    from ._zero_checkpoint import consolidated_state_dict as read

    return read(path)


class ShardedOptimizer:
    """ZeRO stage 1 over MPI: every rank keeps the optimizer state of one shard only.

    ``ShardedOptimizer(opt, comm)`` takes an optdsl optimizer over the full parameters
    (the same on every rank) and replaces how it steps: each param group's parameters are
    laid end to end in one buffer (their ``.data`` become views of it), padded to a
    multiple of the number of ranks, and split into equal contiguous shards. A step

    1. packs the gradients into one buffer and reduce-scatters it (``Reduce_scatter_block``,
       summed, then divided by the number of ranks with ``average``): each rank gets the
       reduced gradient of its shard;
    2. runs the rule's fused kernel on the shard only, with an optimizer of the same class
       and hypers over it (``inner``), which holds the state: 1/ranks of the unsharded
       state per rank;
    3. all-gathers the parameters (``Allgather``, in place), so every rank holds them all.

    The trajectory equals the unsharded optimizer's on the reduced gradients for
    elementwise rules, which treat every element alike wherever it lies. Rules that need
    whole tensors (per-tensor reductions, scalar, row or column states) are refused.
    Every param must have a gradient at every step. ``param_groups`` are ``inner``'s:
    change their hypers (an lr schedule) there.
    """

    def __init__(self, opt: Any, comm: Any, average: bool = True):
        for method in ("Reduce_scatter_block", "Allgather", "Get_size", "Get_rank"):
            if not callable(getattr(comm, method, None)):
                raise TypeError(f"ShardedOptimizer needs an mpi4py communicator (with "
                                f"{method}), got {type(comm).__name__}")
        spec = getattr(type(opt), "_spec", None)
        if spec is None:
            raise TypeError(f"ShardedOptimizer takes an optdsl optimizer, got "
                            f"{type(opt).__name__}")
        if spec.per_parameter:
            raise DistributedError(
                f"ShardedOptimizer: {type(opt).__name__}'s rule needs whole tensors "
                "(per-tensor reductions, scalar, row or column states); a shard of a flat "
                "buffer splits them. Use AllReduce with the unsharded optimizer instead")
        if any(opt.state.get(p) for g in opt.param_groups for p in g["params"]):
            raise DistributedError("ShardedOptimizer: wrap the optimizer before its first "
                                   "step (its state would be lost)")
        self.opt, self.comm, self.average = opt, comm, bool(average)
        self.size, self.rank = comm.Get_size(), comm.Get_rank()
        self._groups = []
        self._group_index = []  # the param group of opt each of inner's groups shards
        inner_groups = []
        for index, group in enumerate(opt.param_groups):
            params = list(group["params"])
            if not params:
                continue
            dtypes = {np.dtype(p.data.dtype) for p in params}
            if len(dtypes) != 1 or not all(isinstance(p.data, np.ndarray) for p in params):
                raise DistributedError(f"ShardedOptimizer: param group {index} must hold "
                                       "NumPy arrays of one dtype")
            dtype = dtypes.pop()
            n = sum(p.data.size for p in params)
            padded = -(-n // self.size) * self.size
            flat = np.zeros(padded, dtype)
            at = 0
            for p in params:
                view = flat[at:at + p.data.size].reshape(p.data.shape)
                view[...] = p.data
                p.data = view
                at += p.data.size
            per = padded // self.size
            shard = Param(flat[self.rank * per:(self.rank + 1) * per],
                          name=f"group {index} shard {self.rank}")
            shard.grad = np.zeros(per, dtype)
            self._groups.append((params, flat, np.zeros(padded, dtype), shard))
            self._group_index.append(index)
            hypers = {k: v for k, v in group.items() if k != "params"}
            inner_groups.append({**hypers, "params": [shard]})
        self.inner = type(opt)(inner_groups, backend=opt.backend)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (the shard's)."""
        return sum(np.asarray(v).nbytes for st in self.inner.state.values()
                   for k, v in st.items() if k != "step")

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.opt.zero_grad(set_to_none)

    # --- state and checkpoints (optdsl/_zero_checkpoint.py) -------------------------------
    def state_dict(self) -> dict:
        """The unsharded optimizer's state_dict (torch.optim's layout, over ``opt``'s
        params), gathered from every rank's shard: every rank must call it, and every rank
        gets the whole state. A plain optimizer loads it, and so does a ShardedOptimizer on
        any number of ranks."""
        from ._zero_checkpoint import consolidate

        return consolidate(self, root=None)

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of the unsharded optimizer (from :meth:`state_dict`, or from a
        plain optimizer over the same params): this rank keeps its shard of it. Every param
        of a group must have the same step count and states, or none. Validated first: on
        a StateDictError nothing changed."""
        from ._zero_checkpoint import shard_state

        name = f"ShardedOptimizer({type(self.opt).__name__}).load_state_dict"
        self.inner.load_state_dict(shard_state(self, state_dict, name))

    def save(self, path: Any, *, consolidated: bool = True, scheduler: Any = None,
             params: Any = None, scaler: Any = None, extra: Any = None) -> None:
        """Write a checkpoint (every rank must call it). ``consolidated=True``: rank 0
        gathers the state and writes one ordinary checkpoint at ``path``, which
        ``optdsl.load`` reads into the unsharded optimizer. ``consolidated=False``: every
        rank writes its shard beside ``path`` (``run.<token>.rank0-of-2.safetensors``), then
        rank 0 writes the index at ``path``. Either loads with :meth:`load` on any number
        of ranks. ``scheduler``, ``params``, ``scaler`` and ``extra`` are as for
        ``optdsl.save``, written once, by rank 0. An error on any rank raises on all."""
        from ._zero_checkpoint import save

        save(self, path, consolidated=bool(consolidated), scheduler=scheduler,
             params=params, scaler=scaler, extra=extra)

    def load(self, path: Any, *, scheduler: Any = None, params: Any = None,
             scaler: Any = None, strict: bool = True, by: str = "auto",
             allow_spec_mismatch: bool = False) -> Any:
        """Load a checkpoint written by :meth:`save` (sharded or consolidated, by any number
        of ranks) or by ``optdsl.save`` from the unsharded optimizer: every rank must call
        it, and reads only the saved shards its own shard overlaps. All or nothing, on
        every rank, as ``optdsl.load``; returns its LoadReport. A consolidated file's params
        may be remapped (``by``, ``strict``); a sharded one loads into the same params in
        the same order."""
        from ._zero_checkpoint import load

        return load(self, path, scheduler=scheduler, params=params, scaler=scaler,
                    strict=strict, by=by, allow_spec_mismatch=allow_spec_mismatch)

    def step(self) -> None:
        from mpi4py import MPI

        for index, (params, _, grads, shard) in enumerate(self._groups):
            at = 0
            for k, p in enumerate(params):
                if p.grad is None:
                    raise DistributedError(f"ShardedOptimizer: param {k} of group {index} "
                                           "has no gradient; every param must have one")
                grads[at:at + p.data.size] = np.asarray(p.grad).reshape(-1)
                at += p.data.size
            self.comm.Reduce_scatter_block(grads, shard.grad, op=MPI.SUM)
            if self.average and self.size > 1:
                shard.grad /= self.size
        self.inner.step()
        for _, flat, _, _ in self._groups:
            self.comm.Allgather(MPI.IN_PLACE, flat)


def __getattr__(name: str) -> Any:
    # NcclAllReduce subclasses AllReduce, so its module imports this one: loaded on first use
    if name == "NcclAllReduce":
        from ._nccl import NcclAllReduce

        return NcclAllReduce
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
