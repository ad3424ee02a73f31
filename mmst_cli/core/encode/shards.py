"""Sharded ``mmst encode``: one shard of the inputs per rank of a ``torchrun`` / ``accelerate launch``.

The launcher's environment (``WORLD_SIZE`` above 1, ``RANK``, ``LOCAL_RANK``) makes a run sharded
(:func:`detect_launch`). The inputs are cut into ``WORLD_SIZE`` contiguous blocks in input order
(:func:`shard_bounds`), so the output is the blocks one after another. Each rank encodes its block
on its own device and keeps its finished chunks as resumable parts (the
:class:`~mmst_cli.core.encode.parts.Parts` machinery) in a folder of its own under the output's
parts folder::

    .vectors.npy.parts/
      shards.json          # the run: world size, settings, shard map, output facts (rank 0)
      ids.json             # every row's id, for the merge (rank 0)
      rank-00000/          # rank 0's manifest.json, part-000000.npy, ... and done.json when finished
      rank-00001/

When every rank is done (a gloo barrier when the launcher lets a process group form), rank 0
writes the output from all shards (:func:`merge_shards`, also ``mmst encode --merge``) with a
manifest beside it (:func:`manifest_path`), then deletes the parts folder. A rank that died is run
again alone with the same command and ``RANK`` / ``WORLD_SIZE``: its finished chunks are reused.
A run owns its parts folder: another world size, model or setting is refused, never mixed in.

Plain Python and numpy; torch only to pick a rank's device and for the barrier.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from mmst_cli.core.encode.parts import RESUME_KEYS, Parts, parts_folder
from mmst_cli.core.encode.writers import _jsonable_ids
from mmst_cli.core.errors import MmstError
from mmst_cli.core.outputs import atomic_path

#: Bumped when the sharded layout changes, so shards of another mmst version are never misread.
SHARDS_VERSION = 1

#: The run's record and every row's id, in the parts folder.
RECORD_FILE, IDS_FILE = "shards.json", "ids.json"

#: Written into a rank's folder when every chunk of its shard is saved: the shard's dim and unit length.
DONE_FILE = "done.json"

#: Settings that must match for a rank to add to existing shards: the resume keys, plus the output
#: precision and format, which rank 0 applies to every shard at the end.
SHARD_KEYS = ("world_size", *RESUME_KEYS, "precision", "format")

#: How long the ranks that finish first wait for the last one at the barrier. Blocks are equal in
#: rows, so the wait is short unless a rank was restarted; a day covers a restart of a long shard.
BARRIER_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class MergeStep:
    """How a user writes the output of a sharded run once every rank is done: named in the notes
    of a rank run alone and in the merge's errors.

    Attributes:
        command: The command the ranks run; default ``mmst encode``.
        flag: Its flag that writes the output in one process; default ``--merge``.
        hint: The whole command line, for a rank run alone; ``None`` for ``COMMAND FLAG -o OUTPUT``.
    """

    command: str = "mmst encode"
    flag: str = "--merge"
    hint: str | None = None


@dataclass(frozen=True)
class Launch:
    """This process's place in a multi-process launch.

    Attributes:
        rank: ``RANK``: which shard this process encodes (0 writes the output).
        world_size: ``WORLD_SIZE``: how many shards (processes, over all nodes).
        local_rank: ``LOCAL_RANK``: the process's index on its node (its GPU); 0 when unset.
    """

    rank: int
    world_size: int
    local_rank: int

    def check(self, options) -> None:
        """Refuse what a sharded run cannot do: read stdin, stream to stdout, use a pool of devices per rank."""
        if options.inputs == "-":
            raise MmstError("INPUTS -: under torchrun / accelerate launch every rank reads the inputs itself; save them to a .txt file and name it")
        if options.to_stdout:
            raise MmstError("-o -: under torchrun / accelerate launch every rank writes its own shard; name an output file")
        if len(options.embedding.devices) > 1:
            raise MmstError(
                f"--device {options.embedding.device}: under torchrun / accelerate launch each rank encodes on one device "
                "(default cuda:LOCAL_RANK); start more ranks (--nproc_per_node) instead of naming several"
            )

    def device(self, devices: list[str]) -> str:
        """The device this rank encodes on: ``--device`` when it names one (``cpu``, ``cuda:1``), else
        ``cuda:LOCAL_RANK`` (also for a bare ``--device cuda``; modulo the GPUs this process sees, so
        one visible GPU per process is ``cuda:0``), else the CPU."""
        if devices and devices[0] != "cuda":
            return devices[0]
        import torch

        if torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return "cpu"

    def logger(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` with every line prefixed by this rank (every rank writes to the same terminal)."""
        return lambda line: log(f"rank {self.rank}/{self.world_size}: {line}")


def _whole_number(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise MmstError(
            f"{name}={value!r} is not a whole number; torchrun / accelerate launch set it, or set "
            "RANK and WORLD_SIZE yourself to run one rank"
        ) from None


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process is a rank of, or ``None`` for a single process (no ``WORLD_SIZE``, or 1).

    Args:
        environ: The environment to read; ``None`` (the default) for ``os.environ``.

    Raises:
        MmstError: when ``WORLD_SIZE`` or ``RANK`` is not a whole number, ``WORLD_SIZE`` is below 1,
            or ``RANK`` is out of range (a ``RANK`` without ``WORLD_SIZE`` is a rank of a 1-process run).
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ and "RANK" not in environ:
        return None
    world_size = _whole_number(environ, "WORLD_SIZE") if "WORLD_SIZE" in environ else 1
    if world_size < 1:
        raise MmstError(f"WORLD_SIZE={world_size} is not a number of processes; set it to 1 or more, or unset it")
    # A lone RANK=0 (or WORLD_SIZE=1 with it) is a single process; any other rank of one process is
    # a mistyped launch that would write the whole output from a rank that expects to share it.
    rank = _whole_number(environ, "RANK") if world_size > 1 or "RANK" in environ else 0
    if world_size == 1 and rank == 0:
        return None
    if not 0 <= rank < world_size:
        raise MmstError(f"RANK={rank} is outside WORLD_SIZE={world_size} (ranks 0 to {world_size - 1}); fix RANK")
    local_rank = _whole_number(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0
    return Launch(rank=rank, world_size=world_size, local_rank=local_rank)


def shard_bounds(count: int, world_size: int) -> list[tuple[int, int]]:
    """Each rank's rows ``[start, stop)``: contiguous blocks in input order, the first ``count %
    world_size`` one row longer, so the output is the blocks one after another."""
    size, extra = divmod(count, world_size)
    starts = [rank * size + min(rank, extra) for rank in range(world_size + 1)]
    return list(zip(starts[:-1], starts[1:]))


def chunk_bounds(start: int, stop: int, chunk_size: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` in chunks of ``chunk_size`` rows: each chunk's ``[start, stop)``."""
    return [(first, min(first + chunk_size, stop)) for first in range(start, stop, chunk_size)]


def rows_text(start: int, stop: int) -> str:
    """Rows ``[start, stop)`` as a person counts them (from 1, as error messages do): ``rows 6-9``."""
    return f"rows {start + 1}-{stop}" if stop > start else "no rows"


def rank_folder(output: Path, rank: int) -> Path:
    """Where rank ``rank`` keeps its parts: ``rank-NNNNN`` in the output's parts folder."""
    return parts_folder(output) / f"rank-{rank:05d}"


def manifest_path(output: Path) -> Path:
    """The manifest written beside a sharded run's output: ``<output name>.manifest.json``."""
    return output.with_name(f"{output.name}.manifest.json")


def _write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf8")


def _read_record(folder: Path) -> dict[str, Any] | None:
    path = folder / RECORD_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf8"))
    except (OSError, json.JSONDecodeError):
        record = {}
    if record.get("version") != SHARDS_VERSION:
        raise MmstError(f"{str(path)!r} is unreadable or from another mmst version; delete {str(folder)!r} and run again")
    return record


def refuse_unfinished_shards(output: Path) -> None:
    """Refuse a single-process run over the shards of an unfinished sharded run (it would discard them)."""
    record = _read_record(parts_folder(output))
    if record is not None:
        raise MmstError(
            f"-o {output}: {str(parts_folder(output))!r} holds the shards of an unfinished {record['settings']['world_size']}-rank run; "
            "finish it (the same command under the launcher, or RANK=r WORLD_SIZE=n for one rank), "
            "write what is done with --merge, or delete that folder"
        )


class ShardedRun:
    """One rank's side of a sharded encode: its shard of the rows, its parts, and the end of the run.

    Args:
        output: The final output file.
        launch: This process's place in the launch.
        count: Rows of the whole input.
        chunk_size: Rows per chunk (and part file).
    """

    def __init__(self, output: Path, launch: Launch, count: int, chunk_size: int) -> None:
        self.output, self.launch, self.chunk_size = output, launch, chunk_size
        self.shards = shard_bounds(count, launch.world_size)
        self.start, self.stop = self.shards[launch.rank]
        self.parts: Parts | None = None

    @property
    def bounds(self) -> list[tuple[int, int]]:
        """This rank's chunks, in rows of the whole input."""
        return chunk_bounds(self.start, self.stop, self.chunk_size)

    def open(self, parts_class: type[Parts], manifest: dict[str, Any], *, output_facts: dict[str, Any],
             ids: list[Any], log: Callable[[str], None]) -> tuple[Parts, dict[int, int]]:  # fmt: skip
        """Check the parts folder against this run, record the run (rank 0) and open this rank's parts.

        Args:
            parts_class: :class:`Parts`, or the token parts of a multi-vector model.
            manifest: The resume manifest of the whole run (inputs, model, options).
            output_facts: ``format``, ``precision``, ``multi_vector``, ``metadata`` (stored with the
                output) and ``summary`` (the parts of the command's summary that the merge repeats).
            ids: Every row's id.
            log: Where notes for the user go.

        Returns:
            This rank's parts and its finished chunks (index -> vector width), which are reused.

        Raises:
            MmstError: when the folder holds another run's parts or shards.
        """
        folder = parts_folder(self.output)
        if (folder / "manifest.json").exists():
            raise MmstError(
                f"-o {self.output}: {str(folder)!r} holds the parts of an unfinished single-process run; "
                "finish it without the launcher (--resume), or delete that folder"
            )
        settings = {**manifest, "world_size": self.launch.world_size, "precision": output_facts["precision"],
                    "format": output_facts["format"]}  # fmt: skip
        previous = _read_record(folder)
        if previous is not None:
            for key in SHARD_KEYS:
                if previous["settings"].get(key) != settings.get(key):
                    raise MmstError(
                        f"-o {self.output}: the shards in {str(folder)!r} were computed with another "
                        f"{key.replace('_', ' ')} ({previous['settings'].get(key)!r}, now {settings.get(key)!r}); "
                        "rerun with the same settings, or delete that folder to start over"
                    )
        folder_of_rank = rank_folder(self.output, self.launch.rank)
        rank_manifest = {**manifest, "rank": self.launch.rank, "world_size": self.launch.world_size,
                         "start": self.start, "stop": self.stop}  # fmt: skip
        self.parts = parts_class(self.output, rank_manifest, folder=folder_of_rank)
        chunk_rows = [stop - start for start, stop in self.bounds]
        done = self.parts.open(resume=folder_of_rank.exists(), chunk_rows=chunk_rows, log=log)
        if self.launch.rank == 0 and previous is None:
            _write_json(folder / IDS_FILE, _jsonable_ids(ids))
            # The record last: its presence means the ids are there too.
            record = {"version": SHARDS_VERSION, "settings": settings, "shards": self._shard_map(parts_class), **output_facts}
            _write_json(folder / RECORD_FILE, record)
        return self.parts, done

    def _shard_map(self, parts_class: type[Parts]) -> list[dict[str, Any]]:
        """Every rank's rows, folder and part files (relative to the parts folder)."""
        shard_map = []
        for rank, (start, stop) in enumerate(self.shards):
            folder = rank_folder(self.output, rank)
            parts = parts_class(self.output, {}, folder=folder)
            names = [f"{folder.name}/{parts.path(index).name}" for index in range(len(chunk_bounds(start, stop, self.chunk_size)))]
            shard_map.append({"rank": rank, "start": start, "stop": stop, "folder": folder.name, "parts": names})
        return shard_map

    def finish(self, *, dim: int, unit_length: bool, log: Callable[[str], None],
               step: MergeStep = MergeStep()) -> dict[str, Any] | None:  # fmt: skip
        """Mark this rank's shard done, wait for the other ranks and, on rank 0, write the output.

        Args:
            dim: The shard's vector width.
            unit_length: Whether every vector of the shard has unit length.
            log: Where notes for the user go.
            step: How the user writes the output, for a rank run alone; default ``mmst encode --merge``.

        Returns:
            The merge's summary on the rank that wrote the output; ``None`` on the others.
        """
        _write_json(self.parts.folder / DONE_FILE, {"dim": dim, "unit_length": unit_length})
        waited = wait_for_every_rank(self.launch)
        done = f"{rows_text(self.start, self.stop)} done"
        if waited and self.launch.rank != 0:
            log(f"{done}; rank 0 writes the output")
            return None
        if not waited:
            unfinished = [str(rank) for rank in range(self.launch.world_size)
                          if not (rank_folder(self.output, rank) / DONE_FILE).exists()]  # fmt: skip
            merge = step.hint or f"{step.command} {step.flag} -o {self.output}"
            if unfinished:
                log(f"{done}; rank(s) {', '.join(unfinished)} not finished yet: run them, then {merge}")
                return None
            if self.launch.rank != 0:
                log(f"{done}; every rank is done: write the output with {merge}")
                return None
        return merge_shards(str(self.output), log=log, step=step)


def launched_by_agent() -> bool:
    """Whether a torch elastic agent (``torchrun``, ``accelerate launch``) started this process, so
    that its ranks can form a process group.

    The agent's ``TORCHELASTIC_RUN_ID`` is the sign, not ``MASTER_ADDR``, which a shell or a batch
    script may still export when a rank is rerun by hand: that rank would wait for a whole launch.
    """
    return all(os.environ.get(name) for name in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT"))


@contextmanager
def rank_group(launch: Launch) -> Iterator[None]:
    """Hold a gloo process group of the launch's ranks for the block, so that several barriers
    (``mmst index``: one per corpus) share one group; nothing when the agent did not start this
    process or a group exists already."""
    import torch.distributed as dist

    if not launched_by_agent() or dist.is_initialized():
        yield
        return
    # gloo on any device: a barrier moves no tensors worth a GPU, and gloo needs none bound to the rank.
    dist.init_process_group("gloo", rank=launch.rank, world_size=launch.world_size, timeout=BARRIER_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def wait_for_every_rank(launch: Launch) -> bool:
    """Block at a gloo barrier until every rank is here; ``False`` at once for a rank that a torch
    elastic agent did not start (:func:`launched_by_agent`), such as one run alone by hand."""
    if not launched_by_agent():
        return False
    import torch.distributed as dist

    with rank_group(launch):
        dist.barrier()
    return True


def has_shards(output: Path) -> bool:
    """Whether ``output``'s parts folder holds the shards of a sharded run: rank 0's record of the
    run, or the folder of a rank run before rank 0."""
    folder = parts_folder(output)
    return (folder / RECORD_FILE).exists() or any(folder.glob("rank-*/manifest.json"))


def _finished_shard(parts: Parts, shard: dict[str, Any], bounds: list[tuple[int, int]], settings: dict[str, Any],
                    step: MergeStep) -> dict[str, Any]:  # fmt: skip
    """The ``done.json`` facts of a rank's shard, once every part is complete and made with the run's settings.

    Raises:
        MmstError: naming the rank and how to finish or redo its shard.
    """
    rank, world_size = shard["rank"], settings["world_size"]
    missing = sum(parts.finished_width(index, stop - start) is None for index, (start, stop) in enumerate(bounds))
    done = parts.folder / DONE_FILE
    if missing or not done.exists():
        raise MmstError(
            f"{step.flag}: the shard of rank {rank} ({rows_text(shard['start'], shard['stop'])} of a {world_size}-rank run) "
            f"is unfinished, {missing} of {len(bounds)} parts missing in {str(parts.folder)!r}; run that rank again "
            f"alone (RANK={rank} WORLD_SIZE={world_size} with the same {step.command} command), then {step.flag}"
        )
    made_with = json.loads((parts.folder / "manifest.json").read_text(encoding="utf8"))
    for key in ("world_size", *RESUME_KEYS):  # a rank run alone before rank 0 recorded the run
        if made_with.get(key) != settings.get(key):
            raise MmstError(
                f"{step.flag}: the shard of rank {rank} was computed with another {key.replace('_', ' ')} "
                f"({made_with.get(key)!r}, the run's is {settings.get(key)!r}); delete {str(parts.folder)!r} "
                f"and run that rank again with the run's settings, then {step.flag}"
            )
    return json.loads(done.read_text(encoding="utf8"))


def merge_shards(output: str, *, log: Callable[[str], None] | None = None, step: MergeStep = MergeStep()) -> dict[str, Any]:
    """Write ``output`` from every rank's finished shard, in input order, with its manifest beside it.

    Args:
        output: The output file of the sharded run (as given to ``-o``).
        log: Where notes for the user go; default: none.
        step: How the user writes the output, named in the errors; default ``mmst encode --merge``.

    Returns:
        The command's summary (as a single run's, plus ``world_size`` and ``manifest``).

    Raises:
        MmstError: (exit 2) when there are no shards, or naming the first unfinished shard.
    """
    import time

    from mmst_cli.core.encode.assemble import write_chunks
    from mmst_cli.core.encode.multi_vector import TokenParts

    started = time.perf_counter()
    path = Path(output).expanduser()
    folder = parts_folder(path)
    record = _read_record(folder)
    if record is None:
        ranks = sorted(folder.glob("rank-*/manifest.json"))
        if ranks:  # ranks run alone before rank 0, which records the run
            world_size = json.loads(ranks[0].read_text(encoding="utf8"))["world_size"]
            raise MmstError(
                f"{step.flag}: rank 0 of the {world_size}-rank run in {str(folder)!r} has not run yet (it records the run); "
                f"run it alone (RANK=0 WORLD_SIZE={world_size} with the same {step.command} command), then {step.flag}"
            )
        raise MmstError(f"--merge: no shards for -o {output} ({str(folder / RECORD_FILE)!r} not found); "
                        "run mmst encode under torchrun or accelerate launch with this output first")  # fmt: skip
    settings, parts_class = record["settings"], TokenParts if record["multi_vector"] else Parts
    world_size, chunks, shard_facts = settings["world_size"], [], []
    for shard in record["shards"]:
        parts = parts_class(path, {}, folder=folder / shard["folder"])
        bounds = chunk_bounds(shard["start"], shard["stop"], settings["chunk_size"])
        shard_facts.append(_finished_shard(parts, shard, bounds, settings, step))
        chunks += [(start, partial(parts.load, index)) for index, (start, _) in enumerate(bounds)]
    dims = {facts["dim"] for facts in shard_facts}
    if len(dims) != 1:
        raise MmstError(f"--merge: the shards in {str(folder)!r} disagree on the vector width ({sorted(dims)}); delete it and run again")
    dim, unit_length = dims.pop(), all(facts["unit_length"] for facts in shard_facts)
    ids = json.loads((folder / IDS_FILE).read_text(encoding="utf8"))
    metadata = {**record["metadata"], "dim": dim, "unit_length": unit_length}
    write_chunks(path, record["format"], chunks, precision=record["precision"], ids=ids, metadata=metadata,
                 multi_vector=record["multi_vector"])  # fmt: skip
    manifest = {
        "version": SHARDS_VERSION, "output": path.name, "format": record["format"], "precision": record["precision"],
        "count": len(ids), "dim": dim, "unit_length": unit_length, "model": record["metadata"]["model"],
        "world_size": world_size, "settings": settings,
        "shards": [{key: shard[key] for key in ("rank", "start", "stop", "parts")} for shard in record["shards"]],
    }  # fmt: skip
    _write_json(manifest_path(path), manifest)
    Parts(path, {}).remove()
    if log is not None:
        log(f"wrote {output} from {world_size} shards; manifest: {manifest_path(path)}")
    return {
        **record["summary"], "count": len(ids), "dim": dim, "output": output, "format": record["format"],
        "precision": record["precision"], "unit_length": unit_length, "chunks": len(chunks), "reused_chunks": 0,
        "world_size": world_size, "manifest": str(manifest_path(path)), "seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip
